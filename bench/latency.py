"""A TCP proxy on 127.0.0.1 that delays every forwarded chunk by a fixed time, each way.

``--latency-ms`` puts one in front of each server: every byte a tool sends or
receives arrives ``delay`` seconds later, bytes unchanged and in order, with
no limit on throughput (chunks queue behind the delay instead of each waiting
for the one before). One thread per direction of each connection.
"""

from __future__ import annotations

import collections
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

CHUNK = 1 << 20


class LatencyProxy:
    """Listens on 127.0.0.1 (a free port) and forwards each connection to ``upstream`` with ``delay`` each way."""

    def __init__(self, upstream: tuple[str, int], delay: float):
        self.upstream = upstream
        self.delay = delay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name=f"latency-proxy-{self.port}").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ended = threading.Semaphore(0)  # the second direction to end closes both sockets
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._forward, args=(src, dst, ended), daemon=True).start()

    def _forward(self, src: socket.socket, dst: socket.socket, ended: threading.Semaphore) -> None:
        """Read from ``src``, write each chunk to ``dst`` once ``delay`` has passed since it was read."""
        pending: collections.deque[tuple[float, bytes]] = collections.deque()
        reading = True
        try:
            while reading or pending:
                now = time.monotonic()
                while pending and pending[0][0] <= now:
                    dst.sendall(pending.popleft()[1])
                wait = max(0.0, pending[0][0] - now) if pending else None
                if not reading:
                    time.sleep(wait or 0)
                    continue
                if select.select([src], [], [], wait)[0]:
                    data = src.recv(CHUNK)
                    if data:
                        pending.append((time.monotonic() + self.delay, data))
                    else:
                        reading = False
            dst.shutdown(socket.SHUT_WR)  # a clean end: pass it on, the other direction goes on
        except OSError:
            # Either side gone: cut both (the other direction's thread then ends on its own error).
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        finally:
            if ended.acquire(blocking=False):
                src.close()
                dst.close()
            else:
                ended.release()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


class ProxyProcess:
    """One LatencyProxy per upstream, in a process of its own.

    In the benchmark's process, its own threads (the memory sampler) would
    hold the interpreter lock now and then and delay forwarded chunks: a link
    slower than the one asked for. ``endpoints`` are where each listens, in
    the order of ``upstreams``. The process ends with ``close``, or when this
    one ends (its stdin closes).
    """

    def __init__(self, upstreams: list[tuple[str, int]], delay: float):
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.latency", str(delay), *(f"{host}:{port}" for host, port in upstreams)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
        )
        ports = self._process.stdout.readline().split()
        if len(ports) != len(upstreams):
            self.close()
            raise RuntimeError("the latency proxy process did not start")
        self.endpoints = [("127.0.0.1", int(port)) for port in ports]

    def close(self) -> None:
        self._process.stdin.close()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()


def _serve(argv: list[str]) -> None:
    """``python -m bench.latency DELAY HOST:PORT...``: print the proxies' ports on one line, forward until stdin closes."""
    delay = float(argv[0])
    proxies = [LatencyProxy((host, int(port)), delay) for host, port in (a.rsplit(":", 1) for a in argv[1:])]
    print(" ".join(str(proxy.port) for proxy in proxies), flush=True)
    sys.stdin.read()
    for proxy in proxies:
        proxy.close()


if __name__ == "__main__":
    _serve(sys.argv[1:])
