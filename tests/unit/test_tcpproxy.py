"""The test proxy's latency mode (used by the slow-link benchmarks) really delays."""

from __future__ import annotations

import socket
import threading
import time

from tests.fixtures.tcpproxy import TcpProxy


def _echo_server() -> tuple[socket.socket, int]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(4)

    def serve() -> None:
        try:
            c, _ = ls.accept()
        except OSError:
            return
        with c:
            while data := c.recv(65536):
                c.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return ls, ls.getsockname()[1]


def _round_trips(port: int, n: int) -> tuple[float, bytes]:
    got = b""
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        for i in range(n):
            msg = b"%03d" % i
            c.sendall(msg)
            part = b""
            while len(part) < len(msg):
                part += c.recv(16)
            got += part
        return time.monotonic() - t0, got


def test_delay_adds_latency_both_ways_and_keeps_order() -> None:
    ls, port = _echo_server()
    with ls, TcpProxy(port, delay=0.02) as proxy:
        took, got = _round_trips(proxy.port, 5)
    assert got == b"".join(b"%03d" % i for i in range(5))
    assert took >= 5 * 2 * 0.02  # each round trip crosses the delay twice


def test_no_delay_by_default() -> None:
    ls, port = _echo_server()
    with ls, TcpProxy(port) as proxy:
        took, _ = _round_trips(proxy.port, 5)
    assert took < 5 * 2 * 0.02
