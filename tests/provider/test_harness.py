"""The provider harness drives a real ``python -m pulumi.dynamic`` host over gRPC."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)
from pulumi.runtime.rpc import wrap_rpc_secret

from tests.provider.harness import (
    CheckFailedError,
    DynamicProviderHost,
    ProviderError,
    is_secret,
    secret,
    unwrap_secret,
)


class FileProvider(ResourceProvider):
    """A file: ``path`` forces a replacement, ``content``/``token`` are updated in place."""

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [] if isinstance(news.get("content"), str) else [CheckFailure("content", "must be a string")]
        return CheckResult(news, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        replaces = ["path"] if olds.get("path") != news.get("path") else []
        changed = any(olds.get(k) != news.get(k) for k in ("path", "content", "token"))
        return DiffResult(changes=changed, replaces=replaces, delete_before_replace=bool(replaces))

    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(props["path"], self._write(props))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        return ReadResult(id_, {**props, "content": Path(id_).read_text().split("\n")[0]})

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(self._write(news))

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        Path(id_).unlink()

    @staticmethod
    def _write(props: dict[str, Any]) -> dict[str, Any]:
        text = props["content"] + (f"\n{props['token']}" if "token" in props else "")
        Path(props["path"]).write_text(text)
        outs = {k: v for k, v in props.items() if k != "__provider"}
        outs["size"] = len(text)
        outs["digest"] = wrap_rpc_secret(hashlib.sha256(text.encode()).hexdigest())
        return outs


class FailingProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        raise RuntimeError(f"quota exceeded while creating {props['name']}")


@pytest.fixture(scope="module")
def host() -> Iterator[DynamicProviderHost]:
    with DynamicProviderHost() as h:
        yield h


def test_configure_reports_no_secret_support(host: DynamicProviderHost) -> None:
    assert host.accept_secrets is False


def test_create_diff_update_read_delete_round_trip(host: DynamicProviderHost, tmp_path: Path) -> None:
    provider = FileProvider()
    path = str(tmp_path / "a.txt")

    inputs = host.check(provider, {"path": path, "content": "hello"})
    assert inputs == {"path": path, "content": "hello"}

    id_, outs = host.create(provider, inputs)
    assert id_ == path
    assert Path(path).read_text() == "hello"
    assert outs["size"] == 5 and outs["content"] == "hello"
    assert is_secret(outs["digest"])  # a secret made by the provider stays secret

    assert host.diff(provider, id_, outs, {"path": path, "content": "hello"}).changes is False
    diff = host.diff(provider, id_, outs, {"path": path, "content": "bye"})
    assert diff.changes is True and diff.replaces == [] and not diff.delete_before_replace
    diff = host.diff(provider, id_, outs, {"path": str(tmp_path / "b.txt"), "content": "hello"})
    assert diff.replaces == ["path"] and diff.delete_before_replace

    outs = host.update(provider, id_, outs, {"path": path, "content": "bye"})
    assert Path(path).read_text() == "bye" and outs["size"] == 3

    Path(path).write_text("drifted")
    assert host.read(provider, id_, outs) == (id_, {**outs, "content": "drifted"})

    host.delete(provider, id_, outs)
    assert not Path(path).exists()


def test_secret_inputs_reach_the_provider_plain_and_come_back_secret(host: DynamicProviderHost, tmp_path: Path) -> None:
    provider = FileProvider()
    path = str(tmp_path / "s.txt")
    _, outs = host.create(provider, {"path": path, "content": "x", "token": secret("s3cr3t")})
    assert Path(path).read_text() == "x\ns3cr3t"  # the provider saw the plain value
    assert is_secret(outs["token"]) and unwrap_secret(outs["token"]) == "s3cr3t"
    assert not is_secret(outs["content"])

    inputs = host.check(provider, {"path": path, "content": "y", "token": secret("t0ken")})
    assert is_secret(inputs["token"])
    outs = host.update(provider, path, outs, inputs)
    assert unwrap_secret(outs["token"]) == "t0ken" and Path(path).read_text() == "y\nt0ken"


def test_provider_exception_surfaces_with_its_message(host: DynamicProviderHost) -> None:
    with pytest.raises(ProviderError) as info:
        host.create(FailingProvider(), {"name": "partner-db"})
    assert info.value.method == "Create"
    assert info.value.message == "RuntimeError: quota exceeded while creating partner-db"
    assert "quota exceeded while creating partner-db" in str(info.value)


def test_check_failures_raise(host: DynamicProviderHost, tmp_path: Path) -> None:
    with pytest.raises(CheckFailedError, match="content: must be a string") as info:
        host.check(FileProvider(), {"path": str(tmp_path / "c.txt"), "content": 42})
    assert info.value.failures == [("content", "must be a string")]
