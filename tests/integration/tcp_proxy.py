"""A TCP proxy in front of a real service (PostgreSQL, the S3 server) that can turn into a black
hole, a port that accepts connections and never answers (a hung server, a broken load balancer),
or hang up on every connection (a service gone away)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading


class TcpProxy:
    """Listens on 127.0.0.1 (an ephemeral port) and forwards to ``target`` until told otherwise.

    ``black_hole()`` drops every forwarded connection (the service went away) and from then on
    accepts new connections, reads what clients send and never answers. ``hang_up()`` drops every
    forwarded connection and closes each new one at once. ``forward()`` brings the service back
    for new connections; connections accepted while it was a black hole stay unanswered, so a
    client that waits on one forever is still counted by ``stuck()``.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._mode = "forward"
        self._forwarded: set[socket.socket] = set()
        self._held: set[socket.socket] = set()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def black_hole(self) -> None:
        with self._lock:
            self._mode = "black_hole"
            forwarded, self._forwarded = self._forwarded, set()
        for sock in forwarded:
            _close(sock)

    def hang_up(self) -> None:
        with self._lock:
            self._mode = "hang_up"
            forwarded, self._forwarded = self._forwarded, set()
        for sock in forwarded:
            _close(sock)

    def forward(self) -> None:
        with self._lock:
            self._mode = "forward"

    def stuck(self) -> int:
        """Connections accepted as a black hole that their client has not given up on."""
        with self._lock:
            return len(self._held)

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        with self._lock:
            everything = self._forwarded | self._held
            self._forwarded, self._held = set(), set()
        for sock in everything:
            _close(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self._mode
                if mode == "hang_up":
                    _close(client)
                    continue
                (self._held if mode == "black_hole" else self._forwarded).add(client)
            target = self._hold if mode == "black_hole" else self._pipe
            threading.Thread(target=target, args=(client,), daemon=True).start()

    def _hold(self, client: socket.socket) -> None:
        # Read and drop whatever arrives (the kernel acknowledges it anyway), answer nothing,
        # and notice when the client hangs up.
        with contextlib.suppress(OSError):
            while client.recv(65536):
                pass
        with self._lock:
            self._held.discard(client)
        _close(client)

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        with self._lock:
            self._forwarded.add(upstream)
        peers = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 0.5)
                if client.fileno() < 0 or upstream.fileno() < 0:
                    return
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._forwarded.discard(client)
                self._forwarded.discard(upstream)
            _close(client)
            _close(upstream)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
