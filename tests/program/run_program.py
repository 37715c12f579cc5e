"""Run the Pulumi program under mocks, as the language host runs it, and record the graph.

    python run_program.py PROJECT_DIR STACK OUT_JSON

Config comes from ``PULUMI_CONFIG`` / ``PULUMI_CONFIG_SECRET_KEYS`` exactly as
``pulumi-language-python-exec`` takes it; then ``pulumi.runtime.set_mocks``,
then ``run_in_stack(runpy.run_path(PROJECT_DIR))`` like the exec script. Each
run is its own process, so no runtime state leaks between stacks.

The mock monitor records every RegisterResource and ReadResource request (a
StackReference is a read): type, name, parent, provider, protect, dependencies,
aliases, deletedWith, custom timeouts, serialized inputs with their secret
markers; and every RegisterResourceOutputs. It runs the stack's transforms on
each registration's inputs first, as the engine does (MockMonitor only records them). Like the engine, it marks an output secret
when its input was secret or the resource lists it in additional_secret_outputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

import pulumi
import yaml
from google.protobuf import json_format, struct_pb2
from pulumi.runtime import MockResourceArgs, rpc, settings, stack
from pulumi.runtime.mocks import MockMonitor

SECRET = {rpc._special_sig_key: rpc._special_secret_sig}

# Minimal stand-ins for what each provider computes on create, from the name the resource's state is
# kept under (its alias's, after a rename: the engine moves the state, the provider computes nothing again).
COMPUTED = {
    "random:index/randomId:RandomId": lambda a, name: {"hex": a.inputs["prefix"] + _digest(name, 8)},
    "random:index/randomPassword:RandomPassword": lambda a, name: {
        "result": _digest(name, int(a.inputs["length"]))
    },
    "gcp:sql/databaseInstance:DatabaseInstance": lambda a, name: {
        "privateIpAddress": "10.20.0." + str(int(_digest(name, 2), 16) % 250 + 2),
        "connectionName": f"mock-project:us-central1:{a.inputs['name']}",
        "serverCaCerts": [{"cert": f"-----BEGIN CERTIFICATE-----\n{_digest(name, 64)}\n-----END CERTIFICATE-----\n"}],
    },
    "gcp:serviceaccount/account:Account": lambda a, _: {
        "email": f"{a.inputs['accountId']}@{a.inputs['project']}.iam.gserviceaccount.com",
        "name": f"projects/{a.inputs['project']}/serviceAccounts/{a.inputs['accountId']}@{a.inputs['project']}.iam.gserviceaccount.com",
    },
    "pulumi:pulumi:StackReference": lambda a, _: {
        "outputs": {"kubeconfig": f"apiVersion: v1\nkind: Config\n# cluster of {a.inputs['name']}\n"},
        "secretOutputNames": ["kubeconfig"],
    },
}


def _digest(name: str, length: int) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:length]


class ProgramMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.kept_as: dict[str, str] = {}  # resource name -> the alias name its state is kept under

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict]:
        computed = COMPUTED.get(args.typ, lambda *_: {})(args, self.kept_as.get(args.name, args.name))
        return f"{args.name}-id", {**args.inputs, **computed}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        raise AssertionError(f"the program calls {args.token}; it is expected to make no provider calls")


class RecordingMonitor(MockMonitor):
    def __init__(self) -> None:
        super().__init__(ProgramMocks())
        self.registered: list[dict[str, Any]] = []
        self.outputs: dict[str, Any] = {}

    def RegisterResource(self, request):
        self._transform(request)
        renamed = [alias.spec.name for alias in request.aliases if alias.spec.name]
        if renamed:
            self.mocks.kept_as[request.name] = renamed[0]
        response = super().RegisterResource(request)
        self._record(
            response.urn, request, request.object, request.custom, request.protect, request.retainOnDelete,
            aliases=[json_format.MessageToDict(alias) for alias in request.aliases],
            deletedWith=request.deletedWith,
            customTimeouts=json_format.MessageToDict(request.customTimeouts),
        )
        self._mark_secret_outputs(request, request.object, response.object)
        return response

    def ReadResource(self, request):
        response = super().ReadResource(request)
        self._record(response.urn, request, request.properties, True, False, False)
        self._mark_secret_outputs(request, request.properties, response.properties)
        return response

    def _transform(self, request) -> None:
        for transform in self._stack_transforms:
            props = json_format.MessageToDict(request.object)
            args = pulumi.ResourceTransformArgs(request.custom, request.type, request.name, props, pulumi.ResourceOptions())
            result = transform(args)
            if result is not None:
                request.object.CopyFrom(json_format.ParseDict(result.props, struct_pb2.Struct()))

    def _record(
        self, urn: str, request, inputs: struct_pb2.Struct, custom: bool, protect: bool, retain: bool, **extra: Any
    ) -> None:
        self.registered.append(
            {
                "urn": urn,
                "type": request.type,
                "name": request.name,
                "parent": request.parent,
                "custom": custom,
                "provider": request.provider,
                "protect": protect,
                "retainOnDelete": retain,
                "dependencies": list(request.dependencies),
                "inputs": json_format.MessageToDict(inputs),
                **extra,
            }
        )

    @staticmethod
    def _mark_secret_outputs(request, inputs: struct_pb2.Struct, outputs: struct_pb2.Struct) -> None:
        """As the engine does: secret inputs stay secret as outputs, and so do additional_secret_outputs."""
        given = json_format.MessageToDict(inputs)
        state = json_format.MessageToDict(outputs)
        secret = set(request.additionalSecretOutputs) | {
            key for key, value in given.items() if _is_secret(value)
        }
        for key in secret & state.keys():
            if not _is_secret(state[key]):
                state[key] = {**SECRET, "value": state[key]}
        outputs.CopyFrom(json_format.ParseDict(state, struct_pb2.Struct()))

    def RegisterResourceOutputs(self, request):
        self.outputs[request.urn] = json_format.MessageToDict(request.outputs)
        return super().RegisterResourceOutputs(request)


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def main(project_dir: str, stack_name: str, out: str) -> None:
    # One event loop for set_mocks and the program, as in the language host.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    project = yaml.safe_load(Path(project_dir, "Pulumi.yaml").read_text())["name"]
    pulumi.runtime.set_all_config(
        pulumi.runtime.get_config_env(), pulumi.runtime.get_config_secret_keys_env()
    )
    monitor = RecordingMonitor()
    pulumi.runtime.set_mocks(monitor.mocks, project=project, stack=stack_name, preview=False, monitor=monitor)
    # set_mocks registers a root stack of its own; the language host's
    # run_in_stack registers the one whose outputs are the stack outputs.
    settings.set_root_resource(None)  # type: ignore[arg-type]
    os.chdir(project_dir)
    error = None
    try:
        loop.run_until_complete(stack.run_in_stack(lambda: runpy.run_path(project_dir, run_name="__main__")))
    except Exception as exc:
        error = {"type": type(exc).__name__, "message": str(exc)}
    Path(out).write_text(
        json.dumps({"resources": monitor.registered, "outputs": monitor.outputs, "error": error})
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
