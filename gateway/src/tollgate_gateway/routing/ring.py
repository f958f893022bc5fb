"""Consistent hashing with bounded loads (CHWBL), as KubeAI balances prompt prefixes.

A request's prefix hash picks a point on a ring of virtual nodes; the request goes to the
first replica clockwise whose load stays within ``load_factor`` x the mean after taking it.
Equal prefixes therefore land on the same replica (its prompt cache is warm) until that
replica is busier than its share, when they spill to the next one on the ring.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, names: Iterable[str], virtual_nodes: int = 100) -> None:
        points: list[tuple[int, str]] = []
        for name in set(names):
            for i in range(virtual_nodes):
                points.append((_point(f"{name}#{i}".encode()), name))
        points.sort()
        self._hashes = [p for p, _ in points]
        self._names = [n for _, n in points]
        self.size = len(set(self._names))

    def walk(self, key: int) -> Iterator[str]:
        """Every replica once, in ring order from ``key``."""
        if not self._hashes:
            return
        start = bisect.bisect_left(self._hashes, key) % len(self._hashes)
        seen: set[str] = set()
        for i in range(len(self._hashes)):
            name = self._names[(start + i) % len(self._hashes)]
            if name not in seen:
                seen.add(name)
                yield name
                if len(seen) == self.size:
                    return


@lru_cache(maxsize=256)
def ring_for(names: frozenset[str], virtual_nodes: int) -> HashRing:
    """Rings are rebuilt only when the set of replicas changes."""
    return HashRing(names, virtual_nodes)


def chwbl_pick(key: int, loads: Mapping[str, int], load_factor: float, virtual_nodes: int) -> str:
    """The replica for ``key`` among ``loads`` (name → requests in flight)."""
    if not loads:
        raise ValueError("no replicas to pick from")
    ring = ring_for(frozenset(loads), virtual_nodes)
    bound = math.ceil((sum(loads.values()) + 1) * load_factor / len(loads))
    first: str | None = None
    for name in ring.walk(key):
        if first is None:
            first = name
        if loads[name] + 1 <= bound:
            return name
    assert first is not None  # loads is non-empty, so the ring is too
    return first
