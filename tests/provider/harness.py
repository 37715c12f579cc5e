"""Drive a Pulumi dynamic provider the way the Pulumi engine does.

:class:`DynamicProviderHost` starts the SDK's own provider host
(``python -u -m pulumi.dynamic``, as the ``pulumi-resource-pulumi-python``
plugin shim does), reads the gRPC port it prints, calls ``Configure`` and then
``Check``/``Diff``/``Create``/``Read``/``Update``/``Delete`` over gRPC with the
SDK's generated stubs.

What the engine does and this host copies:

* the provider object travels in the ``__provider`` property, serialized by
  the SDK's own ``pulumi.dynamic.dynamic.serialize_provider`` (dill, by
  value for ``__main__``, by reference for importable modules) and marked
  secret, as ``pulumi.dynamic.Resource`` does;
* properties are protobuf ``Struct`` values (so numbers come back as floats);
* the dynamic provider answers ``Configure`` with ``acceptSecrets=False``, so
  secrets are sent as plain values and the secretness of inputs is copied onto
  the outputs afterwards (the engine's ``annotateSecrets``).

Secrets are the SDK's sentinel dicts; build them with :func:`secret`. The
``__provider`` property is added to every request and removed from every
answer. A gRPC error becomes :class:`ProviderError` carrying the provider's
message; check failures become :class:`CheckFailedError`.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from pulumi.dynamic import DiffResult, ResourceProvider
from pulumi.dynamic.dynamic import PROVIDER_KEY, serialize_provider
from pulumi.runtime import rpc
from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS
from pulumi.runtime._serialization import _serialize
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

__all__ = [
    "CheckFailedError",
    "DynamicProviderHost",
    "ProviderError",
    "UNKNOWN",
    "is_secret",
    "reveal",
    "secret",
    "unwrap_secret",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
UNKNOWN = rpc.UNKNOWN
"""The engine's "value not known yet" sentinel (previews)."""


# ---------------------------------------------------------------- secrets
def secret(value: Any) -> dict[str, Any]:
    """Wrap ``value`` in the Pulumi secret sentinel dict."""
    return rpc.wrap_rpc_secret(value)


def is_secret(value: Any) -> bool:
    """Whether ``value`` is a secret sentinel dict."""
    return rpc.is_rpc_secret(value)


def unwrap_secret(value: Any) -> Any:
    """The value inside a secret sentinel (other values unchanged)."""
    return rpc.unwrap_rpc_secret(value)


def reveal(value: Any) -> Any:
    """``value`` with every secret sentinel, at any depth, replaced by its content."""
    if is_secret(value):
        return reveal(unwrap_secret(value))
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def _contains_secrets(value: Any) -> bool:
    if is_secret(value):
        return True
    if isinstance(value, dict):
        return any(_contains_secrets(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_secrets(v) for v in value)
    return False


def _annotate_secrets(outs: dict[str, Any], ins: Mapping[str, Any]) -> dict[str, Any]:
    """Copy the secretness of ``ins`` onto ``outs`` (the engine's ``annotateSecrets``)."""
    result = dict(outs)
    for key, in_value in ins.items():
        if key not in result:
            continue
        out_value = result[key]
        if _is_object(out_value) and _is_object(in_value):
            result[key] = _annotate_secrets(out_value, in_value)
        elif not is_secret(out_value) and _contains_secrets(in_value):
            result[key] = secret(out_value)
    return result


def _is_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_secret(value)


# ----------------------------------------------------------------- errors
class ProviderError(Exception):
    """A gRPC call to the provider failed; ``message`` is the provider's own message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        self.method = method
        self.code = code
        self.details = details or ""
        lines = [line for line in self.details.strip().splitlines() if line.strip()]
        self.message = lines[-1].strip() if lines else code.name
        super().__init__(f"{method} failed ({code.name}): {self.details.strip() or code.name}")


class CheckFailedError(Exception):
    """``Check`` returned failures, which the engine reports as errors."""

    def __init__(self, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"{prop}: {reason}" for prop, reason in failures))


# ------------------------------------------------------------------- host
class DynamicProviderHost:
    """The SDK's dynamic-provider host in a subprocess, driven over gRPC.

    Use as a context manager. ``pythonpath`` adds import roots for the
    subprocess; the repository root and the current ``sys.path`` entries inside
    the repository are always there, so providers defined in project or test
    modules can be imported (dill pickles their classes by reference).
    """

    def __init__(
        self,
        *,
        config: Mapping[str, str] | None = None,
        pythonpath: Sequence[Path | str] = (),
        project: str = "hexabuilders",
        stack: str = "test",
        resource_type: str = "pulumi-python:dynamic:Resource",
        resource_name: str = "test",
        timeout: float = 60.0,
    ) -> None:
        self.config = dict(config or {})
        self.pythonpath = [str(p) for p in pythonpath]
        self.project = project
        self.stack = stack
        self.resource_type = resource_type
        self.resource_name = resource_name
        self.timeout = timeout
        self.accept_secrets = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None
        self._stub: provider_pb2_grpc.ResourceProviderStub | None = None
        self._stderr: Any = None
        self._stdout: list[str] = []

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> DynamicProviderHost:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def urn(self) -> str:
        return f"urn:pulumi:{self.stack}::{self.project}::{self.resource_type}::{self.resource_name}"

    def start(self) -> None:
        """Start ``python -u -m pulumi.dynamic``, connect and call ``Configure``."""
        roots = [str(REPO_ROOT), *self.pythonpath]
        roots += [p for p in sys.path if p and _is_within(p, REPO_ROOT) and p not in roots]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(roots + [p for p in [env.get("PYTHONPATH")] if p])
        env["PULUMI_PROJECT"] = self.project
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "pulumi.dynamic"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        try:
            port = self._read_port()
            self._channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=_GRPC_CHANNEL_OPTIONS)
            grpc.channel_ready_future(self._channel).result(timeout=self.timeout)
            self._stub = provider_pb2_grpc.ResourceProviderStub(self._channel)
            response = self._call(
                "Configure",
                provider_pb2.ConfigureRequest(
                    variables=self.config,
                    args=_to_struct(self.config),
                    acceptSecrets=True,
                    acceptResources=True,
                    sends_old_inputs=True,
                    sends_old_inputs_to_delete=True,
                ),
            )
            self.accept_secrets = response.acceptSecrets
        except BaseException:
            self.stop()
            raise

    def _read_port(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], self.timeout)
        line = self._proc.stdout.readline().decode().strip() if ready else ""
        if not line.isdigit():
            self._proc.kill()
            self._proc.wait()
            raise RuntimeError(
                f"python -m pulumi.dynamic did not print its port (got {line!r}): {self.stderr_text()[-2000:]}"
            )
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        return int(line)

    def _drain_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            self._stdout.append(raw.decode(errors="replace"))

    def stderr_text(self) -> str:
        """What the provider host wrote on stderr so far."""
        if self._stderr is None or self._stderr.closed:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def stop(self) -> None:
        """Close the channel and stop the subprocess. Idempotent."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self._stub = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # --------------------------------------------------------------- calls
    def check(self, provider: ResourceProvider, news: dict[str, Any], olds: dict[str, Any] | None = None) -> dict[str, Any]:
        """``Check``: the validated inputs; failures raise :class:`CheckFailedError`."""
        news = self._with_provider(provider, news)
        olds = self._with_provider(provider, olds or {}) if olds else {}
        response = self._call(
            "Check",
            provider_pb2.CheckRequest(
                urn=self.urn,
                name=self.resource_name,
                type=self.resource_type,
                olds=self._marshal(olds),
                news=self._marshal(news),
                randomSeed=b"0" * 32,
            ),
        )
        if response.failures:
            raise CheckFailedError([(f.property, f.reason) for f in response.failures])
        return self._unmarshal(response.inputs, news)

    def diff(
        self,
        provider: ResourceProvider,
        id: str,
        olds: dict[str, Any],
        news: dict[str, Any],
        *,
        old_inputs: dict[str, Any] | None = None,
    ) -> DiffResult:
        """``Diff`` between the old outputs and the new inputs.

        ``changes`` is True/False, or None when the provider does not know.
        """
        response = self._call(
            "Diff",
            provider_pb2.DiffRequest(
                id=id,
                urn=self.urn,
                name=self.resource_name,
                type=self.resource_type,
                olds=self._marshal(self._with_provider(provider, olds)),
                news=self._marshal(self._with_provider(provider, news)),
                old_inputs=self._marshal(self._with_provider(provider, old_inputs or olds)),
            ),
        )
        changes = {
            provider_pb2.DiffResponse.DIFF_SOME: True,
            provider_pb2.DiffResponse.DIFF_NONE: False,
        }.get(response.changes)
        return DiffResult(
            changes=changes,
            replaces=list(response.replaces),
            stables=list(response.stables),
            delete_before_replace=response.deleteBeforeReplace,
        )

    def create(self, provider: ResourceProvider, props: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``Create``: the new resource's id and outputs."""
        props = self._with_provider(provider, props)
        response = self._call(
            "Create",
            provider_pb2.CreateRequest(
                urn=self.urn,
                name=self.resource_name,
                type=self.resource_type,
                properties=self._marshal(props),
                timeout=self.timeout,
            ),
        )
        return response.id, self._unmarshal(response.properties, props)

    def read(
        self, provider: ResourceProvider, id: str, props: dict[str, Any], inputs: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """``Read`` (refresh): the id and current outputs of an existing resource."""
        props = self._with_provider(provider, props)
        request = provider_pb2.ReadRequest(
            id=id, urn=self.urn, name=self.resource_name, type=self.resource_type, properties=self._marshal(props)
        )
        if inputs:
            request.inputs.CopyFrom(self._marshal(self._with_provider(provider, inputs)))
        response = self._call("Read", request)
        return response.id, self._unmarshal(response.properties, props)

    def update(
        self,
        provider: ResourceProvider,
        id: str,
        olds: dict[str, Any],
        news: dict[str, Any],
        *,
        old_inputs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``Update`` from the old outputs to the new inputs: the new outputs."""
        news = self._with_provider(provider, news)
        response = self._call(
            "Update",
            provider_pb2.UpdateRequest(
                id=id,
                urn=self.urn,
                name=self.resource_name,
                type=self.resource_type,
                olds=self._marshal(self._with_provider(provider, olds)),
                news=self._marshal(news),
                old_inputs=self._marshal(self._with_provider(provider, old_inputs or olds)),
                timeout=self.timeout,
            ),
        )
        return self._unmarshal(response.properties, news)

    def delete(
        self, provider: ResourceProvider, id: str, olds: dict[str, Any], *, old_inputs: dict[str, Any] | None = None
    ) -> None:
        """``Delete`` the resource with these outputs."""
        self._call(
            "Delete",
            provider_pb2.DeleteRequest(
                id=id,
                urn=self.urn,
                name=self.resource_name,
                type=self.resource_type,
                properties=self._marshal(self._with_provider(provider, olds)),
                old_inputs=self._marshal(self._with_provider(provider, old_inputs or olds)),
                timeout=self.timeout,
            ),
        )

    # ------------------------------------------------------------- helpers
    def _call(self, method: str, request: Any) -> Any:
        if self._stub is None:
            raise RuntimeError("DynamicProviderHost is not started")
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise ProviderError(method, exc.code(), exc.details()) from None

    @staticmethod
    def _with_provider(provider: ResourceProvider, props: Mapping[str, Any]) -> dict[str, Any]:
        """``props`` plus ``__provider`` serialized exactly as ``pulumi.dynamic.Resource`` does."""
        result = dict(props)
        if PROVIDER_KEY not in result:
            serialized, contains_secrets = _serialize(True, serialize_provider, provider)
            if getattr(provider, "serialize_as_secret_always", True) or contains_secrets:
                serialized = secret(serialized)
            result[PROVIDER_KEY] = serialized
        return result

    def _marshal(self, props: Mapping[str, Any]) -> struct_pb2.Struct:
        """Engine -> provider: secrets are sent as plain values unless the provider accepts them."""
        return _to_struct(props if self.accept_secrets else reveal(dict(props)))

    def _unmarshal(self, struct: struct_pb2.Struct, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Provider -> engine: keep secrets, copy the inputs' secretness, hide ``__provider``."""
        outs = json_format.MessageToDict(struct)
        if not self.accept_secrets:
            outs = _annotate_secrets(outs, inputs)
        outs.pop(PROVIDER_KEY, None)
        return outs


def _to_struct(props: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(props)
    return struct


def _is_within(path: str, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(root)
    except (ValueError, OSError):
        return False
    return True
