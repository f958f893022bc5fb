"""A flood of wrong-password logins cannot starve the proxy: logins are rate limited (429 with
Retry-After), hash on a bounded executor of their own and hold no proxy database connection.

The bound asserted here is generous on purpose (a shared, busy test machine): before the fix
`/readyz` took 8-22 s and a new key's first request up to 21 s under ~19 logins/s. Speed
targets proper are measured by `make bench`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from tollgate_dev.plugins.services import Admin, Gateways
from tollgate_dev.servers.programs import GatewayProcess

NewKey = Callable[..., dict[str, Any]]
# Documented bound (README, "Logins"): proxy p99 and /readyz stay under this during a flood.
BOUND_SECONDS = 3.0
FLOOD_SECONDS = 8.0
# The flood comes from another loopback address, so the suite's own logins (127.0.0.1) are
# not limited by it afterwards.
FLOODER = "127.0.0.2"


def flood(url: str, emails: list[str], statuses: Counter[int], retry_after: list[str]) -> None:
    transport = httpx.HTTPTransport(local_address=FLOODER)
    deadline = time.monotonic() + FLOOD_SECONDS
    with httpx.Client(base_url=url, transport=transport, timeout=60) as client:
        i = 0
        while time.monotonic() < deadline:
            email = emails[i % len(emails)]
            i += 1
            response = client.post("/admin/login", json={"email": email, "password": "wrong" * 3})
            statuses[response.status_code] += 1
            if response.status_code == 429:
                retry_after.append(response.headers.get("retry-after", ""))


def measure(
    gateway: GatewayProcess, admin: Admin, new_key: NewKey, chat_model: str, emails: list[str]
) -> tuple[Counter[int], list[str], list[float], list[float]]:
    keys = [new_key()["key"] for _ in range(40)]  # never used before: each needs Postgres
    statuses: Counter[int] = Counter()
    retry_after: list[str] = []
    threads = [
        threading.Thread(target=flood, args=(gateway.url, emails, statuses, retry_after))
        for _ in range(12)
    ]
    for thread in threads:
        thread.start()
    proxy: list[float] = []
    ready: list[float] = []
    time.sleep(0.5)
    body = {"model": chat_model, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        for key in keys:
            started = time.monotonic()
            response = client.post(
                "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            proxy.append(time.monotonic() - started)
            assert response.status_code == 200, response.text
            started = time.monotonic()
            assert client.get("/readyz").status_code == 200
            ready.append(time.monotonic() - started)
            time.sleep(0.1)
    for thread in threads:
        thread.join()
    return statuses, retry_after, proxy, ready


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_login_flood_is_rate_limited_and_the_proxy_keeps_serving(
    gateways: Gateways, admin: Admin, new_key: NewKey, chat_model: str
) -> None:
    gateway = gateways.start()
    target = f"flood-{time.time_ns()}@tollgate.test"
    admin.http.post(
        "/admin/users", json={"email": target, "password": "a-good-long-password"}
    ).raise_for_status()
    statuses, retry_after, proxy, ready = measure(
        gateway, admin, new_key, chat_model, [target, *(f"nobody{i}@x.test" for i in range(50))]
    )
    print(f"flood: {dict(statuses)}; proxy p99 {p99(proxy):.3f} s, /readyz max {max(ready):.3f} s")
    assert statuses[429] > 0, statuses
    assert statuses[500] == 0, statuses
    assert all(value.isdigit() and int(value) >= 1 for value in retry_after)
    # at most the address's 30 attempts of the window were hashed
    assert statuses[401] <= 30, statuses
    assert p99(proxy) < BOUND_SECONDS, sorted(proxy)[-5:]
    assert max(ready) < BOUND_SECONDS, sorted(ready)[-5:]
    # the per-email limit: the target account is locked for the window, from any address
    locked = httpx.post(
        gateway.url + "/admin/login", json={"email": target, "password": "a-good-long-password"}
    )
    assert locked.status_code in (200, 429)  # 429 once its 10 failures are counted
    # the suite's own address is not affected by the flood from another one
    assert Admin(gateway.url).http.get("/admin/me").status_code == 200


def test_without_rate_limits_hashing_stays_bounded(
    gateways: Gateways, admin: Admin, new_key: NewKey, chat_model: str
) -> None:
    """Rate limits out of the way: the bounded executor alone keeps the proxy serving, and
    logins beyond its queue are refused at once instead of waiting (or taking connections)."""
    gateway = gateways.start(
        TOLLGATE_LOGIN_ATTEMPTS_PER_ADDRESS="100000", TOLLGATE_LOGIN_FAILURES_PER_EMAIL="100000"
    )
    statuses, _, proxy, ready = measure(
        gateway, admin, new_key, chat_model, [f"nobody{i}@x.test" for i in range(50)]
    )
    print(f"flood: {dict(statuses)}; proxy p99 {p99(proxy):.3f} s, /readyz max {max(ready):.3f} s")
    assert statuses[500] == 0, statuses
    assert statuses[401] > 0 and statuses[429] > 0, statuses
    assert p99(proxy) < BOUND_SECONDS, sorted(proxy)[-5:]
    assert max(ready) < BOUND_SECONDS, sorted(ready)[-5:]
