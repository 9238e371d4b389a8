"""Load-balancing policies over one pool of endpoints (pure).

A pool is a tuple of (index, weight): indexes into the cluster's endpoint list.
Each policy precomputes what it can when the pool is built, so a pick is a few
list operations. `pick` takes `usable(index)`, which says whether an endpoint may
be used for this connection (not ejected, not already tried): an unusable
endpoint is skipped in the policy's own order, so ring hash moves to the next
endpoint on the ring and round robin to the next in turn. Randomness comes from
the `random.Random` passed in, so tests can seed it.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence

from meshlet.model import LbPolicy

Pool = tuple[tuple[int, int], ...]
Usable = Callable[[int], bool]
# Open connections of an endpoint, by index (least request compares them).
Load = Callable[[int], int]

# Ring hash: points per unit of weight (as ketama), and a cap on the ring's size.
RING_POINTS = 160
MAX_RING = 65536
# Maglev table sizes (primes). Envoy's default is the large one, whose table takes
# ~50 ms of Python to fill; the small one (the Maglev paper's example size) serves
# up to 50 endpoints with 100 slots each, the ratio the paper recommends. The size
# must not follow the endpoint count more closely than that: a new size remaps
# nearly every key.
MAGLEV_SMALL, MAGLEV_LARGE = 5003, 65537
# A round-robin schedule longer than this is scaled down (weights keep their ratio).
_MAX_SCHEDULE = 4096
_SMOOTH_MAX = 64


def stable_hash(text: str) -> int:
    """64 bits that do not change between processes (unlike hash()), for hashing policies."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


class Policy:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def pick(self, usable: Usable, key: int, active: Load, rng: random.Random) -> int | None:
        raise NotImplementedError

    def _scan(self, usable: Usable, start: int) -> int | None:
        """The first usable endpoint of the pool from `start` on, wrapping around."""
        n = len(self.pool)
        for k in range(n):
            index = self.pool[(start + k) % n][0]
            if usable(index):
                return index
        return None


def _schedule(pool: Pool) -> list[int]:
    """The order round robin goes in: the pool itself when weights are equal; else smooth
    weighted round robin (as nginx), so weights 5,1,1 give a a b a c a a, not a a a a a b c.
    That costs O(n) per turn; past _SMOOTH_MAX endpoints, earliest deadline first (as
    Envoy) gives the same shares in O(log n) per turn. Turns are capped at _MAX_SCHEDULE."""
    weights = [w for _, w in pool]
    if len(set(weights)) <= 1:
        return [index for index, _ in pool]
    divisor = math.gcd(*weights)
    weights = [w // divisor for w in weights]
    total = sum(weights)
    if total > _MAX_SCHEDULE:
        weights = [max(1, w * _MAX_SCHEDULE // total) for w in weights]
        total = sum(weights)
    turns = _smooth(weights, total) if len(pool) <= _SMOOTH_MAX else _deadlines(weights, total)
    return [pool[k][0] for k in turns]


def _smooth(weights: list[int], total: int) -> list[int]:
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        for k, w in enumerate(weights):
            current[k] += w
        best = max(range(len(weights)), key=current.__getitem__)
        current[best] -= total
        out.append(best)
    return out


def _deadlines(weights: list[int], total: int) -> list[int]:
    heap = [(1.0 / w, k) for k, w in enumerate(weights)]
    heapq.heapify(heap)
    out = []
    for _ in range(total):
        due, k = heapq.heappop(heap)
        out.append(k)
        heapq.heappush(heap, (due + 1.0 / weights[k], k))
    return out


class RoundRobin(Policy):
    def __init__(self, pool: Pool, start: int = 0) -> None:
        super().__init__(pool)
        self._order = _schedule(pool)
        self._next = start % len(self._order)

    def pick(self, usable: Usable, key: int, active: Load, rng: random.Random) -> int | None:
        order = self._order
        n = len(order)
        for k in range(n):
            index = order[(self._next + k) % n]
            if usable(index):
                self._next = (self._next + k + 1) % n
                return index
        return None


class LeastRequest(Policy):
    """Power of two choices (Envoy's default choice_count 2): the one with less load
    (open connections, or for HTTP open requests) per unit of weight."""

    def pick(self, usable: Usable, key: int, active: Load, rng: random.Random) -> int | None:
        candidates = [(i, w) for i, w in self.pool if usable(i)]
        if len(candidates) <= 1:
            return candidates[0][0] if candidates else None
        a, b = rng.sample(candidates, 2)
        # Compare active/weight without division: a.active * b.weight vs b.active * a.weight.
        return a[0] if active(a[0]) * b[1] <= active(b[0]) * a[1] else b[0]


class Random(Policy):
    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self._cumulative = list(itertools.accumulate(w for _, w in pool))

    def pick(self, usable: Usable, key: int, active: Load, rng: random.Random) -> int | None:
        total = self._cumulative[-1]
        for _ in range(3):
            k = bisect.bisect_right(self._cumulative, rng.randrange(total))
            if usable(self.pool[k][0]):
                return self.pool[k][0]
        return self._scan(usable, rng.randrange(len(self.pool)))


class RingHash(Policy):
    """Consistent hashing: each endpoint owns points on a ring in proportion to its weight;
    a key goes to the owner of the first point at or after its hash."""

    def __init__(self, pool: Pool, endpoint_names: Sequence[str]) -> None:
        super().__init__(pool)
        # A fixed number of points per unit of weight (not a share of a fixed-size
        # ring, as Envoy's minimum_ring_size does): when an endpoint comes or goes,
        # the others keep their points, so only its own keys move.
        unit = math.gcd(*(w for _, w in pool))
        units = sum(w // unit for _, w in pool)
        points: list[tuple[int, int]] = []
        for index, weight in pool:
            if units * RING_POINTS <= MAX_RING:
                count = RING_POINTS * weight // unit
            else:  # a ring that big: each endpoint's share of MAX_RING points instead
                count = max(1, MAX_RING * (weight // unit) // units)
            name = endpoint_names[index]
            points.extend((stable_hash(f"{name}_{r}"), index) for r in range(count))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]

    def pick(self, usable: Usable, key: int, active: Load, rng: random.Random) -> int | None:
        n = len(self._hashes)
        start = bisect.bisect_left(self._hashes, key)
        seen: set[int] = set()
        for k in range(n):
            index = self._owners[(start + k) % n]
            if index in seen:
                continue
            if usable(index):
                return index
            seen.add(index)
            if len(seen) == len(self.pool):
                break
        return None


class Maglev(Policy):
    """Maglev hashing (Eisenbud et al., 2016): a lookup table filled from each endpoint's
    permutation, so keys spread evenly and move little when endpoints change."""

    def __init__(self, pool: Pool, endpoint_names: Sequence[str]) -> None:
        super().__init__(pool)
        size = MAGLEV_SMALL if len(pool) <= MAGLEV_SMALL // 100 else MAGLEV_LARGE
        self._table = _maglev_table(pool, endpoint_names, size)

    def pick(self, usable: Usable, key: int, active: Load, rng: random.Random) -> int | None:
        size = len(self._table)
        index = self._table[key % size]
        if usable(index):
            return index
        # Unusable: look again with the key rehashed, as a retry in Envoy's maglev does.
        for attempt in range(1, 4):
            index = self._table[stable_hash(f"{key}/{attempt}") % size]
            if usable(index):
                return index
        return self._scan(usable, key % len(self.pool))


def _maglev_table(pool: Pool, names: Sequence[str], size: int) -> list[int]:
    offsets, skips = [], []
    for index, _ in pool:
        h = stable_hash(names[index])
        offsets.append((h >> 32) % size)
        skips.append((h & 0xFFFFFFFF) % (size - 1) + 1)
    weights = [w for _, w in pool]
    top = max(weights)
    table = [-1] * size
    nexts = [0] * len(pool)
    credit = [0.0] * len(pool)
    filled = 0
    # Weighted: an endpoint takes a slot each round only once its credit reaches the top weight.
    while True:
        for k, (index, weight) in enumerate(pool):
            credit[k] += weight
            if credit[k] < top:
                continue
            credit[k] -= top
            offset, skip = offsets[k], skips[k]
            c = (offset + nexts[k] * skip) % size
            while table[c] >= 0:
                nexts[k] += 1
                c = (offset + nexts[k] * skip) % size
            table[c] = index
            nexts[k] += 1
            filled += 1
            if filled == size:
                return table


def build_policy(
    policy: LbPolicy, pool: Pool, endpoint_names: Sequence[str], rng: random.Random
) -> Policy:
    if policy is LbPolicy.LEAST_REQUEST:
        return LeastRequest(pool)
    if policy is LbPolicy.RANDOM:
        return Random(pool)
    if policy is LbPolicy.RING_HASH:
        return RingHash(pool, endpoint_names)
    if policy is LbPolicy.MAGLEV:
        return Maglev(pool, endpoint_names)
    return RoundRobin(pool, start=rng.randrange(len(pool)))
