"""A TCP proxy between database clients and the server, with network faults on demand.

Modes, switchable while clients run (`FaultProxy.mode`):

* ``pass``: bytes flow both ways;
* ``blackhole``: connections stay open but nothing is forwarded (the proxy stops reading, so
  bytes wait in socket buffers, as a partition that later heals would leave them);
* ``strand``: the connections open now forward nothing (as ``blackhole``), new ones flow:
  a request held up on the network while its client has reconnected and moved on;
* ``reset``: every open connection is reset (RST), and new ones are reset on arrival;
* ``latency``: bytes flow after an added delay;
* ``lossy``: bytes flow, but each chunk is held back with probability ``loss`` for ``rto``
  seconds first. That is what packet loss does to a TCP stream as the application sees it: a
  lost segment arrives only when retransmitted, a retransmission timeout (at least 200 ms on
  Linux) later, and everything behind it waits. (No ``netem`` qdisc on these machines.)

It listens on 127.0.0.1 by default; *listen* places it on another address of this host (a veth
end, see tests/faults/netlab.py).
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
import time


class FaultProxy:
    """Listen on 127.0.0.1:<port>, forward to *target*; see the module docstring."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        latency: float = 0.05,
        loss: float = 0.1,
        rto: float = 0.2,
        listen: str = "127.0.0.1",
    ):
        self.target = target
        self.latency = latency
        self.loss = loss
        self.rto = rto
        self.mode = "pass"
        self.switches = 0
        self.held = 0  # chunks held back as lost (lossy mode)
        self._random = random.Random(0)
        self.host = listen
        self._listener = socket.create_server((listen, 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._stranded: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def set(self, mode: str) -> None:
        """Switch to *mode*; ``reset`` resets every open connection at once."""
        self.mode = mode
        self.switches += 1
        with self._lock:
            self._stranded = set(self._open) if mode == "strand" else set()
        if mode == "reset":
            with self._lock:
                for sock in list(self._open):
                    self._reset(sock)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for sock in list(self._open):
                self._reset(sock)

    def _reset(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self._open.discard(sock)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "reset":
                self._reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                self._reset(client)
                continue
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                if self.mode == "blackhole" or source in self._stranded:
                    time.sleep(0.02)  # leave the bytes where they are
                    continue
                ready, _, _ = select.select([source], [], [], 0.05)
                if not ready or self.mode == "blackhole" or source in self._stranded:
                    if source not in self._open:
                        return
                    continue
                data = source.recv(65536)
                if not data:
                    break
                if self.mode == "latency":
                    time.sleep(self.latency)
                elif self.mode == "lossy" and self._random.random() < self.loss:
                    self.held += 1
                    time.sleep(self.rto)
                sink.sendall(data)
        except (OSError, ValueError):  # a socket reset and closed under us
            pass
        finally:
            with self._lock:
                self._reset(source)
                self._reset(sink)
