"""A TCP proxy on 127.0.0.1 that cuts or stalls connections, for the engine's fault tests.

Every connection it accepts is forwarded to ``upstream``; once ``cut_after``
bytes have passed one way on one connection (from the server: a COPY out of
the source; to the server: a COPY into the target), that connection is closed
on both sides, as a failing link or a dying server would; with ``stall``, it
stays open on both sides but nothing more is forwarded that way, as a proxy, a
VPN or a NAT that stopped forwarding would. Connections that stay under the
limit (a reconnect to lift the freeze) pass untouched.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FaultProxy:
    def __init__(
        self, upstream_port: int, cut_after: int | None = None, *, to_server: bool = False, stall: bool = False
    ) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.to_server = to_server
        self.stall = stall
        self.cuts = self.stalls = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, server]
            up, down = (self.cut_after, None) if self.to_server else (None, self.cut_after)
            for args in ((client, server, up), (server, client, down)):
                thread = threading.Thread(target=self._pump, args=(*args, client, server), daemon=True)
                self._threads.append(thread)
                thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, limit: int | None, *pair: socket.socket) -> None:
        moved = 0
        try:
            while data := src.recv(65536):
                if limit is not None and moved + len(data) > limit:
                    if self.stall:  # stop reading and forwarding; both sockets stay open
                        self.stalls += 1
                        self._stop.wait()
                    else:
                        self.cuts += 1
                    break
                dst.sendall(data)
                moved += len(data)
        except OSError:
            pass
        for sock in pair:  # either side closing, or the cut, ends the whole connection
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._threads[0].join()  # it accepts no more before its listener goes
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
        self._listener.close()


@contextmanager
def fault_proxy(
    upstream_port: int, cut_after: int | None = None, *, to_server: bool = False, stall: bool = False
) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_port, cut_after, to_server=to_server, stall=stall)
    try:
        yield proxy
    finally:
        proxy.close()
