"""A loopback TCP proxy in front of a test's redis-server that can lose Redis's answers.

Imported by the integration tests as ``from reply_dropper import ReplyDropper`` (this directory is
on sys.path). While ``drops_left`` is above zero, a connection that sends a command containing
``marker`` is closed as soon as Redis has answered it, before the answer is passed on: the
command ran, and the client never hears whether it did."""

from __future__ import annotations

import selectors
import socket
import threading
from types import TracebackType


class ReplyDropper:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``upstream_port``, one thread for all sockets."""

    def __init__(self, upstream_port: int, marker: bytes = b"EVALSHA") -> None:
        self.upstream_port = upstream_port
        self.marker = marker.lower()
        self.drops_left = 0
        """How many more answers to lose (set it from the test)."""
        self.dropped = 0
        """Answers lost so far."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._peer: dict[socket.socket, socket.socket] = {}
        self._armed: set[socket.socket] = set()  # upstream sockets whose next answer is lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reply-dropper", daemon=True)

    def __enter__(self) -> ReplyDropper:
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop: close the listener (new connections are refused) and every open connection."""
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peer:
                        self._forward(sock, upstream=key.data == "upstream")
        finally:
            for sock in list(self._peer):
                self._drop(sock)
            self._selector.close()
            self._listener.close()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._peer[client], self._peer[upstream] = upstream, client
        self._selector.register(client, selectors.EVENT_READ, "client")
        self._selector.register(upstream, selectors.EVENT_READ, "upstream")

    def _forward(self, sock: socket.socket, upstream: bool) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        other = self._peer[sock]
        if upstream and sock in self._armed:
            self.dropped += 1
            self.drops_left -= 1
            self._drop(sock)  # the answer is lost with the connection
            return
        if not upstream and self.drops_left > 0 and self.marker in data.lower():
            self._armed.add(other)
        other.setblocking(True)
        other.sendall(data)

    def _drop(self, sock: socket.socket) -> None:
        for s in (sock, self._peer.get(sock)):
            if s is not None and s in self._peer:
                del self._peer[s]
                self._armed.discard(s)
                self._selector.unregister(s)
                s.close()
