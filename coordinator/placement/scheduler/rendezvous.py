"""Each key's rendezvous (highest random weight) order over the nodes: where its builds spill over and its
replicas go, stable for a key, and moved by a node joining or leaving only for the keys whose order it enters.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping

from stoker.coordinator.placement.registry import NodeRecord

_MASK = (1 << 64) - 1


def h64(text: str) -> int:
    """A stable 64-bit hash of ``text``."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def mix(x: int) -> int:
    """Scramble a key's hash XOR a node's into the node's weight for the key."""
    x = (x * 0x9E3779B97F4A7C15) & _MASK
    return x ^ (x >> 29)


class Rendezvous:
    """The nodes' hashes (computed once per name) and, for a large fleet, their buckets."""

    def __init__(self, two_level_from: int) -> None:
        self._two_level_from = two_level_from
        self._node_hash: dict[str, int] = {}
        self._bucket_names: frozenset[str] = frozenset()
        self._bucket_source: Mapping[str, NodeRecord] | None = None
        self._bucket_map: dict[int, list[str]] = {}
        self._bucket_seed: list[int] = []
        self._bucket_seeds_for: dict[int, list[int]] = {}

    def node_h(self, name: str) -> int:
        h = self._node_hash.get(name)
        if h is None:
            h = self._node_hash[name] = h64(name)
        return h

    def weigher(self, key_hash: int) -> Callable[[str], int]:
        """A node's weight for the key whose hash is ``key_hash`` (higher first)."""
        node_hash = self._node_hash

        def weight(name: str) -> int:
            h = node_hash.get(name)
            if h is None:
                h = self.node_h(name)
            return mix(key_hash ^ h)

        return weight

    def order(self, key: str, live: Mapping[str, NodeRecord]) -> Iterator[str]:
        """The nodes of ``live`` in ``key``'s rendezvous order (lazily)."""
        key_hash = h64(key)
        return self.nodes(key_hash, lambda name: mix(key_hash ^ self.node_h(name)), live, live)

    def nodes(
        self,
        key_hash: int,
        weight: Callable[[str], int],
        live: Mapping[str, NodeRecord],
        admitted: Mapping[str, NodeRecord],
    ) -> Iterator[str]:
        """The nodes of ``admitted`` (a part of ``live``) in the key's rendezvous order, lazily.

        In a large fleet, two levels, so that finding the first few free nodes costs about √N weights
        rather than N: nodes fall into buckets by their own hash; buckets are visited in the key's rendezvous
        order over buckets, and within a bucket nodes in the key's rendezvous order over nodes.
        """
        buckets = self._buckets(live)
        seed = self._bucket_seed
        order = sorted(buckets, key=lambda b: mix(key_hash ^ seed[b]), reverse=True)
        for b in order:
            members = [n for n in buckets[b] if n in admitted]
            yield from sorted(members, key=weight, reverse=True)

    def _buckets(self, live: Mapping[str, NodeRecord]) -> dict[int, list[str]]:
        if self._bucket_source is live:
            return self._bucket_map
        self._bucket_source = live
        names = frozenset(live)
        if names != self._bucket_names:
            # One level (exact rendezvous) for small fleets; √N buckets from ``two_level_from`` nodes on.
            count = 1 if len(names) < self._two_level_from else math.isqrt(len(names))
            if count not in self._bucket_seeds_for:
                self._bucket_seeds_for[count] = [h64(f"bucket-{count}-{i}") for i in range(count)]
            self._bucket_seed = self._bucket_seeds_for[count]
            buckets: dict[int, list[str]] = collections.defaultdict(list)
            for name in names:
                buckets[self.node_h(name) % count].append(name)
            self._bucket_map, self._bucket_names = dict(buckets), names
        return self._bucket_map
