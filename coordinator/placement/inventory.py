"""The fleet's cache inventory: which node holds which entry, built from agents' reports.

Soft state: rebuilt from the agents' snapshots after a coordinator restart. Each node's view is a
snapshot followed by deltas with consecutive generation numbers; a gap means a report was missed,
and the caller asks the node for a fresh snapshot.

Lookups the scheduler needs are indexed so a decision never scans a node's whole inventory:
``holders(key)`` is a dict lookup, ``under_prefix(prefix)`` a bisect over the sorted keys.
"""

from __future__ import annotations

import bisect
import collections
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from stoker.coordinator.placement.domain import CREATED, KEY, SKETCH, Entry


@dataclass
class _NodeView:
    generation: int = -1
    entries: dict[str, Entry] = field(default_factory=dict)


class InventoryIndex:
    def __init__(self) -> None:
        self._nodes: dict[str, _NodeView] = {}
        self._holders: dict[str, dict[str, Entry]] = {}
        # Keys in sorted order for prefix lookups, kept cheap to update: a large sorted list that may still
        # hold keys nobody reports any more (skipped when read, dropped when it is rebuilt), plus a small
        # sorted list of keys added since, merged into the large one when it grows.
        self._sorted_keys: list[str] = []
        self._fresh_keys: list[str] = []
        self._stale_keys = 0
        # The newest keys under each recently asked prefix; an entry goes when a key under it comes or goes.
        self._newest: dict[str, dict[int, list[str]]] = {}
        self._newest_lengths: collections.Counter[int] = collections.Counter()
        self._created: dict[str, float] = {}
        """key → the newest ``created`` any node reports for it."""

    # -- updates -------------------------------------------------------------------------------
    def apply_snapshot(self, node: str, generation: int, entries: Iterable[Entry]) -> None:
        self.drop_node(node)
        view = _NodeView(generation=generation)
        self._nodes[node] = view
        for entry in entries:
            self._put(node, view, entry)

    def apply_delta(
        self, node: str, generation: int, upserted: Iterable[Entry], removed: Iterable[str]
    ) -> bool:
        """Apply a delta; False (and nothing applied) when it does not follow the last generation."""
        view = self._nodes.get(node)
        if view is None or generation != view.generation + 1:
            return False
        view.generation = generation
        for key in removed:
            self._remove(node, view, key)
        for entry in upserted:
            self._put(node, view, entry)
        return True

    def drop_node(self, node: str) -> None:
        view = self._nodes.pop(node, None)
        if view is None:
            return
        for key in list(view.entries):
            self._remove(node, view, key)

    def put(self, node: str, entry: Entry) -> None:
        """Add or replace one entry of a node that has sent a snapshot, between its reports (the coordinator
        corroborated a claim the node made earlier: ``claims.ClaimChecker``); its generation stays."""
        view = self._nodes.get(node)
        if view is not None:
            self._put(node, view, entry)

    def _put(self, node: str, view: _NodeView, entry: Entry) -> None:
        key, created = entry[KEY], entry[CREATED]
        holders = self._holders.get(key)
        if holders is None:
            holders = self._holders[key] = {}
            self._key_added(key)
        elif entry[SKETCH]:
            # Replicas of an entry have the same content, so the same sketch: keep one copy of it.
            sketch = next(iter(holders.values()))[SKETCH]
            if sketch is not entry[SKETCH] and sketch == entry[SKETCH]:
                entry = entry[:SKETCH] + (sketch,)
        view.entries[key] = entry
        holders[node] = entry
        if created > self._created.get(key, float("-inf")):
            self._created[key] = created
            self._newest_saw(key)

    def _remove(self, node: str, view: _NodeView, key: str) -> None:
        if view.entries.pop(key, None) is None:
            return
        holders = self._holders.get(key)
        if holders is None:
            return
        holders.pop(node, None)
        if not holders:
            del self._holders[key]
            self._created.pop(key, None)
            self._key_removed(key)

    _FRESH_LIMIT = 4096

    def _newest_for(self, key: str) -> Iterator[tuple[str, dict[int, list[str]]]]:
        """(prefix, its remembered lists) for every remembered prefix of ``key``."""
        for length in list(self._newest_lengths):
            remembered = self._newest.get(key[:length])
            if remembered is not None:
                yield key[:length], remembered

    def _newest_saw(self, key: str) -> None:
        """A key was added or became newer: update the remembered lists in place (no rescans)."""
        if not self._newest:
            return
        created = self._created[key]
        for _, remembered in self._newest_for(key):
            for count, keys in remembered.items():
                if key in keys:
                    keys.remove(key)
                if len(keys) < count or created > self._created.get(keys[-1], float("-inf")):
                    keys.append(key)
                    keys.sort(key=self._created.__getitem__, reverse=True)
                    del keys[count:]

    def _newest_lost(self, key: str) -> None:
        """A key went away: forget what was remembered for its prefixes if it was among the newest."""
        if not self._newest:
            return
        for prefix, remembered in list(self._newest_for(key)):
            if any(key in keys for keys in remembered.values()):
                del self._newest[prefix]
                self._newest_lengths[len(prefix)] -= 1
                if self._newest_lengths[len(prefix)] <= 0:
                    del self._newest_lengths[len(prefix)]

    def _key_added(self, key: str) -> None:
        main = self._sorted_keys
        i = bisect.bisect_left(main, key)
        if i < len(main) and main[i] == key:  # still listed from before: it counts again
            self._stale_keys -= 1
            return
        bisect.insort(self._fresh_keys, key)
        if len(self._fresh_keys) > self._FRESH_LIMIT:
            self._sorted_keys = list(heapq.merge(main, self._fresh_keys))
            self._fresh_keys = []

    def _key_removed(self, key: str) -> None:
        self._newest_lost(key)
        fresh = self._fresh_keys
        i = bisect.bisect_left(fresh, key)
        if i < len(fresh) and fresh[i] == key:
            del fresh[i]
            return
        self._stale_keys += 1
        if self._stale_keys > self._FRESH_LIMIT and self._stale_keys * 2 > len(self._sorted_keys):
            self._sorted_keys = sorted(self._holders)
            self._fresh_keys = []
            self._stale_keys = 0

    # -- queries -------------------------------------------------------------------------------
    def generation(self, node: str) -> int:
        view = self._nodes.get(node)
        return -1 if view is None else view.generation

    def holders(self, key: str) -> dict[str, Entry]:
        """node → entry, for every node holding exactly ``key``."""
        return self._holders.get(key, {})

    def keys_under(self, prefix: str) -> Iterator[str]:
        """Every key held anywhere that starts with ``prefix``, in sorted order."""
        holders = self._holders
        for key in heapq.merge(_range(self._sorted_keys, prefix), _range(self._fresh_keys, prefix)):
            if key in holders:
                yield key

    def newest_under(self, prefix: str, limit: int = 4096) -> dict[str, Entry]:
        """node → its newest entry under ``prefix`` (looks at no more than ``limit`` keys)."""
        best: dict[str, Entry] = {}
        for n, key in enumerate(self.keys_under(prefix)):
            if n >= limit:
                break
            for node, entry in self._holders[key].items():
                if node not in best or entry[CREATED] > best[node][CREATED]:
                    best[node] = entry
        return best

    def newest_keys_under(self, prefix: str, count: int = 3, limit: int = 4096) -> list[str]:
        """The ``count`` most recently created keys under ``prefix`` (looks at no more than ``limit``).

        Remembered per prefix until a key under it comes or goes, so the scheduler's repeated questions
        about a busy workspace do not walk all its keys each time."""
        remembered = self._newest.get(prefix)
        if remembered is not None and count in remembered:
            return list(remembered[count])
        keys: list[str] = []
        for n, key in enumerate(self.keys_under(prefix)):
            if n >= limit:
                break
            keys.append(key)
        newest = heapq.nlargest(count, keys, key=self._created.__getitem__)
        if len(self._newest) >= 4096:
            self._newest.clear()
            self._newest_lengths.clear()
        if prefix not in self._newest:
            self._newest[prefix] = {}
            self._newest_lengths[len(prefix)] += 1
        self._newest[prefix][count] = newest
        return list(newest)

    def entries(self, node: str) -> list[Entry]:
        view = self._nodes.get(node)
        return [] if view is None else list(view.entries.values())

    def all_keys(self) -> list[str]:
        return sorted(self._holders)

    def node_names(self) -> list[str]:
        return list(self._nodes)


def _range(keys: list[str], prefix: str) -> Iterator[str]:
    i = bisect.bisect_left(keys, prefix)
    while i < len(keys) and keys[i].startswith(prefix):
        yield keys[i]
        i += 1
