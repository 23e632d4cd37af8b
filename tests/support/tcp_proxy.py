"""A TCP proxy on a free loopback port that can lose what a client sends (acknowledgements) and cut connections.

Used to make a broker redeliver on purpose: ``hold_upstream()`` stops forwarding client -> server bytes (the
client's PUBACKs never arrive) while server -> client bytes still flow; ``cut()`` closes every connection (the
client reconnects through the proxy, and the broker sends the unacknowledged messages again with DUP=1).

    with TcpProxy("127.0.0.1", broker.port) as proxy:
        proxy.url                       # mqtt://127.0.0.1:<proxy port>
        proxy.hold_upstream(); ...; proxy.cut(); proxy.release_upstream()
"""

from __future__ import annotations

import select
import socket
import threading


class TcpProxy:
    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._hold = threading.Event()
        self._closed = threading.Event()
        self.dropped_bytes = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "TcpProxy":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def hold_upstream(self) -> None:
        """From now on, bytes from clients are read and thrown away."""
        self._hold.set()

    def release_upstream(self) -> None:
        self._hold.clear()

    def cut(self) -> None:
        """Close every open connection (both sides)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for a, b in conns:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.cut()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while True:
                ready, _, _ = select.select([client, server], [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        raise OSError("closed")
                    if s is client:
                        if self._hold.is_set():
                            self.dropped_bytes += len(data)
                        else:
                            server.sendall(data)
                    else:
                        client.sendall(data)
        except (OSError, ValueError):
            for s in (client, server):
                try:
                    s.close()
                except OSError:
                    pass
