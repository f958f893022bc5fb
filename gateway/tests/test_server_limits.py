"""The HTTP server's limits against oversized, slow and idle clients, on a real gateway."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tollgate_dev.plugins.services import Gateways
from tollgate_dev.servers.programs import GatewayProcess

MiB = 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def connect(gateway: GatewayProcess) -> socket.socket:
    sock = socket.create_connection((gateway.host, gateway.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_all(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes; and whether it closed the connection
    (False: still open when `timeout` ran out — far longer than the server's own timeouts)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        return data, False
    return data, True


def status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0


@pytest.fixture(scope="module")
def strict(gateways: Gateways) -> GatewayProcess:
    """Short timeouts, so that a test waits seconds, not the production defaults."""
    return gateways.start(
        TOLLGATE_HEADER_TIMEOUT_SECONDS="1",
        TOLLGATE_BODY_TIMEOUT_SECONDS="1",
        TOLLGATE_KEEP_ALIVE_TIMEOUT_SECONDS="1",
    )


def send_huge_header(gateway: GatewayProcess, total: int, sent: list[int]) -> None:
    sock = connect(gateway)
    chunk = b"a" * MiB
    count = 0
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: ")
        while count < total:
            sock.sendall(chunk)
            count += len(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    finally:
        sent.append(count)
        sock.close()


def test_a_100_mb_header_is_refused_early_with_bounded_memory(gateways: Gateways) -> None:
    gateway = gateways.start()
    assert gateway.proc is not None
    before = rss(gateway.proc.pid)
    peak = before
    sent: list[int] = []
    threads = [
        threading.Thread(target=send_huge_header, args=(gateway, 100 * MiB, sent)) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss(gateway.proc.pid))
        time.sleep(0.02)
    print(f"RSS {before / MiB:.0f} MiB -> peak {peak / MiB:.0f} MiB; sent {sent}")
    # Before: each unfinished 100 MB header added ~115 MB (138 -> 492 MB with three).
    assert peak - before < 30 * MiB, (before, peak)
    # refused after the 64 KiB limit: what was sent past it sat in socket buffers
    assert all(count < 20 * MiB for count in sent), sent
    gateway.stop()


def test_an_oversized_head_gets_431(gateway: GatewayProcess) -> None:
    sock = connect(gateway)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    data, _ = read_all(sock, 10)
    assert status(data) == 431, data[:200]
    assert b"request_header_too_large" in data


def test_too_many_header_fields_get_431(gateway: GatewayProcess) -> None:
    sock = connect(gateway)
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    data, _ = read_all(sock, 10)
    assert status(data) == 431, data[:200]
    assert b"too_many_headers" in data


def test_a_normal_request_is_served(strict: GatewayProcess) -> None:
    sock = connect(strict)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data, _ = read_all(sock, 10)
    assert status(data) == 200


def test_an_idle_connection_is_closed(strict: GatewayProcess) -> None:
    sock = connect(strict)
    data, closed = read_all(sock, 15)
    assert data == b""  # closed without a word: nothing was asked
    assert closed  # by the server, after its 1 s timeout


def test_a_partial_head_is_closed_with_408(strict: GatewayProcess) -> None:
    sock = connect(strict)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    data, closed = read_all(sock, 15)
    assert status(data) == 408, data
    assert closed  # by the server, after its 1 s timeout


def test_a_trickled_head_is_closed_with_408(strict: GatewayProcess) -> None:
    """Slowloris: a byte now and then never makes a head, however steady."""
    sock = connect(strict)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100  # ~37 s at this pace
    sent = 0
    try:
        for byte in head:
            sock.send(bytes([byte]))
            sent += 1
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable:  # the server answered or closed while the head was still coming
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    data, closed = read_all(sock, 5)
    assert closed
    assert sent < len(head), "the server waited for the whole trickled head"
    assert data == b"" or status(data) == 408


def test_a_stalled_body_is_closed_with_408(strict: GatewayProcess) -> None:
    sock = connect(strict)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tg-x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"model": '
    )
    data, closed = read_all(sock, 15)
    assert status(data) == 408, data
    assert closed  # by the server, after its 1 s timeout


def test_a_slow_but_steady_body_is_read(strict: GatewayProcess) -> None:
    sock = connect(strict)
    body = b'{"model": "nothing", "messages": [{"role": "user", "content": "hi"}]}'
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for i in range(0, len(body), 20):
        sock.sendall(body[i : i + 20])
        time.sleep(0.4)  # under the 1 s body timeout each time, 1.6 s in all
    data, _ = read_all(sock, 10)
    assert status(data) == 401  # read whole and answered (no key)


def test_an_idle_keep_alive_connection_is_closed(strict: GatewayProcess) -> None:
    sock = connect(strict)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    first = sock.recv(65536)
    head, _, body = first.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    while len(body) < length:  # the body may come in a segment of its own
        body += sock.recv(65536)
    assert status(first) == 200
    rest, closed = read_all(sock, 15)
    assert rest == b""
    assert closed  # by the server, after its 1 s timeout


@pytest.fixture
def capped(gateways: Gateways) -> Iterator[GatewayProcess]:
    gateway = gateways.start(TOLLGATE_MAX_CONNECTIONS="5")
    yield gateway
    gateway.stop()


def test_connections_over_the_cap_get_a_clear_503(capped: GatewayProcess) -> None:
    held = [connect(capped) for _ in range(5)]
    time.sleep(0.3)
    extra = connect(capped)
    data, _ = read_all(extra, 10)
    assert status(data) == 503, data
    assert b"retry-after: 1" in data.lower() and b"too_many_connections" in data
    for sock in held:
        sock.close()
    time.sleep(0.3)
    again = connect(capped)
    again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data, _ = read_all(again, 10)
    assert status(data) == 200
