"""The program reads its configuration through the SDK's public surface only
(pulumi.Config's typed getters, get_config_env for the key names,
is_config_secret): run under mocks with the engine's PULUMI_CONFIG, a key set
with --secret stays secret, and every refusal is one line per problem."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pulumi

from tests.program.harness import K8S_PROVIDER, PROJECT, PROJECT_ROOT, clear_strings, is_secret, run_program, stack_file

KUBECONFIG = "apiVersion: v1\nkind: Config\nusers:\n- name: dev\n  user:\n    token: kube-token-do-not-print\n"


SDK_ROOTS = {"pulumi", "pulumi_gcp", "gcp", "kubernetes", "random"}


def _sdk_names(tree: ast.AST) -> list[str]:
    """Every name the code reaches in the SDKs: attribute chains from their modules, and what it imports from them."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in SDK_ROOTS:
            names += [node.module or "", *(alias.name for alias in node.names)]
        elif isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in SDK_ROOTS:
                names += chain
    return names


def test_the_program_names_nothing_private_of_the_sdk() -> None:
    """Nothing of the SDKs below a leading underscore, nor runtime.config's CONFIG."""
    for path in [*(PROJECT_ROOT / "components").glob("*.py"), PROJECT_ROOT / "__main__.py"]:
        names = _sdk_names(ast.parse(path.read_text()))
        assert "CONFIG" not in names and "config.CONFIG" not in names, path
        assert not [n for n in names if any(part.startswith("_") for part in n.split("."))], path
    # The checker sees what it looks for.
    assert "CONFIG" in _sdk_names(ast.parse("pulumi.runtime.config.CONFIG.get()"))
    assert "_SECRET_KEYS" in _sdk_names(ast.parse("from pulumi.runtime.config import _SECRET_KEYS"))
    assert pulumi.runtime.get_config_env and pulumi.runtime.is_config_secret  # the public names used


def test_a_secret_kubernetes_key_stays_secret_in_the_provider(tmp_path: Path) -> None:
    values = stack_file("dev")
    values[f"{PROJECT}:kubernetes"] = {"context": "dev", "kubeconfig": KUBECONFIG}
    graph = run_program("dev", values, tmp_path / "graph.json", secret=[f"{PROJECT}:kubernetes"])
    assert graph.error is None, graph.error
    (provider,) = graph.of_type(K8S_PROVIDER)
    assert is_secret(provider.inputs["kubeconfig"]) and provider.plain["kubeconfig"] == KUBECONFIG
    recorded = (tmp_path / "graph.json").read_text()
    assert not [text for r in json.loads(recorded)["resources"] for text in clear_strings(r["inputs"]) if "kube-token" in text]


def test_the_same_kubernetes_key_in_plain_text_is_plain(tmp_path: Path) -> None:
    """The control: what makes it secret above is is_config_secret, not the value."""
    values = stack_file("dev")
    values[f"{PROJECT}:kubernetes"] = {"context": "dev", "kubeconfig": KUBECONFIG}
    graph = run_program("dev", values, tmp_path / "graph.json")
    (provider,) = graph.of_type(K8S_PROVIDER)
    assert provider.inputs["kubeconfig"] == KUBECONFIG


def test_a_bad_value_in_a_secret_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    values = stack_file("dev")
    values[f"{PROJECT}:kubernetes"] = {"context": "", "kubeconfig": ["kube-token-do-not-print"]}
    graph = run_program("dev", values, tmp_path / "graph.json", secret=[f"{PROJECT}:kubernetes"])
    assert graph.error is not None and graph.error["type"] == "ConfigError"
    assert graph.error["message"].splitlines()[1:] == [
        "  kubernetes.context: (a secret value, not shown) is not allowed; allowed: a kubeconfig context name",
        "  kubernetes.kubeconfig: (a secret value, not shown) is not valid; allowed: a string",
    ]
    assert graph.resources == []


def test_a_key_that_cannot_stay_secret_is_refused(tmp_path: Path) -> None:
    graph = run_program("prod", stack_file("prod"), tmp_path / "graph.json", secret=[f"{PROJECT}:services"])
    assert graph.error is not None and graph.error["message"].splitlines()[1:] == [
        f"  {PROJECT}:services: set with --secret; allowed: a plain value (its values name resources and show in"
        " every plan, so it cannot stay secret; only sourceDatabaseUrl and kubernetes may be secret)"
    ]
    assert graph.resources == []


def test_typed_getters_refusals_come_back_as_one_line_each(tmp_path: Path) -> None:
    """pulumi.Config.get_int / get_bool / get_object refuse these; the program says so in its own words."""
    values = stack_file("prod")
    values[f"{PROJECT}:migrationJobs"] = "many"
    values[f"{PROJECT}:publicIp"] = "yes"
    values[f"{PROJECT}:services"] = "[not json"
    graph = run_program("prod", values, tmp_path / "graph.json")
    assert graph.error is not None and graph.error["message"].splitlines()[1:] == [
        "  publicIp: 'yes' is not valid; allowed: true or false",
        "  migrationJobs: 'many' is not valid; allowed: an integer",
        "  services: '[not json' is not valid; allowed: a list",
    ]
