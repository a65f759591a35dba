"""A real HTTP receiver for webhook tests: a server on loopback that records what it gets and
answers from a script (statuses in order, then 200), optionally holding requests open."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    port: int
    requests: list[Received] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    # While clear, requests are held (after being recorded) until it is set.
    release: threading.Event = field(default_factory=threading.Event)
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, predicate: Callable[[list[Received]], bool],
                 timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while not predicate(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: condition not met in {timeout} s; got "
                                         f"{[r.headers.get('webhook-id') for r in self.requests]}")
                self.arrived.wait(left)
            return list(self.requests)


@contextmanager
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            r = state["r"]
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            with r.lock:
                status = r.script.pop(0) if r.script else 200
            with r.arrived:
                r.requests.append(Received({k.lower(): v for k, v in self.headers.items()},
                                           body, self.path))
                r.arrived.notify_all()
            r.release.wait(timeout=60)
            if r.delay:
                time.sleep(r.delay)
            try:
                payload = f"status {status}".encode()
                self.send_response(status)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the sender went away (a killed server)
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    r = Receiver(url=f"http://127.0.0.1:{port}/hook", port=port)
    r.release.set()
    state["r"] = r
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.release.set()
        server.shutdown()
        server.server_close()
