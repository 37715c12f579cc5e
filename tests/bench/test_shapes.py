"""The benchmark's two extra shapes end to end at tiny sizes, and the latency proxy on its own.

``--tables N`` (many small tables) and ``--latency-ms MS`` (every tool through
a delaying proxy): each runs, and each tool's copy is identical to the source.
Times are not asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.latency import LatencyProxy
from tests.support import ROOT


def _bench(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    results = tmp_path / "results.json"
    # Not under tmp_path: the servers' user must reach it, and pytest makes its own tree private.
    workdir = Path(tempfile.mkdtemp(prefix="hexa-bench-shape-"))
    try:
        run = subprocess.run(
            [sys.executable, "-m", "bench", *args, "--rounds", "1", "--workdir", str(workdir), "--json", str(results)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env=os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "120"},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run, json.loads(results.read_text(encoding="utf-8"))


def test_many_tables_shape_copies_identically(tmp_path):
    run, results = _bench(tmp_path, "--tables", "20", "--tools", "engine,pg_dump,pgcopydb,reference")

    assert results["source"]["tables"] == 20
    assert results["options"]["tables"] == 20
    tools = results["tools"]
    for name in ("engine", "pg_dump", "reference"):
        assert tools[name]["available"] and tools[name]["all_identical"], (name, tools[name]["attempts"])
    assert tools["engine"]["sequences_carried"] and tools["pg_dump"]["sequences_carried"]
    if shutil.which("pgcopydb"):
        assert tools["pgcopydb"]["all_identical"], tools["pgcopydb"]
    assert "Copy of 20 small tables" in run.stdout
    assert any(t["target"] == "engine vs pgcopydb" for t in results["targets"]) or not shutil.which("pgcopydb")


def test_latency_shape_copies_identically_through_the_proxy(tmp_path):
    run, results = _bench(tmp_path, "--tables", "6", "--latency-ms", "2", "--tools", "engine,pg_dump,pgcopydb")

    tools = results["tools"]
    # The engine is run twice: through the proxy, and straight for the ratio.
    assert set(tools) == {"engine", "engine_local", "pg_dump", "pgcopydb"}
    for name in ("engine", "engine_local", "pg_dump"):
        assert tools[name]["available"] and tools[name]["all_identical"], (name, tools[name]["attempts"])
    if shutil.which("pgcopydb"):
        assert tools["pgcopydb"]["all_identical"], tools["pgcopydb"]
    assert "through a proxy adding 2 ms each way" in run.stdout
    latency = next(t for t in results["targets"] if "latency proxy" in t["target"])
    assert latency["goal"] == "<= 1.5x" and latency["met"] is not None
    assert results["options"]["latency_ms"] == 2


def _echo_server() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_latency_proxy_delays_each_way_and_keeps_every_byte():
    server = _echo_server()
    proxy = LatencyProxy(server.getsockname()[:2], 0.05)
    try:
        with socket.create_connection((proxy.host, proxy.port)) as conn:
            started = time.monotonic()
            conn.sendall(b"ping")
            assert conn.recv(16) == b"ping"
            assert time.monotonic() - started >= 0.1  # 50 ms there, 50 ms back

            payload = os.urandom(3_000_000)
            sender = threading.Thread(target=lambda: (conn.sendall(payload), conn.shutdown(socket.SHUT_WR)))
            sender.start()
            received = bytearray()
            while data := conn.recv(1 << 16):
                received += data
            sender.join()
            assert bytes(received) == payload
    finally:
        proxy.close()
        server.close()
