"""Node claims, checked: what a node reports holding counts for placement only as far as the coordinator can
corroborate it (issue 16, item 5).

A node's snapshot or delta is a *claim*. Without a check, a node that claims every key looks warm for every
build and attracts them all. The coordinator has no access to the blob store, so what corroborates a claim is
its own record of what it asked of the node and what the node did for it:

* **vouchers**: the node restored an entry in a build the coordinator assigned to it (the build's
  ``restored`` figures), or saved the build's key there (its ``finished`` figures say ``saved``). Results are
  accepted only from the node the build was assigned to (``BuildQueue.build_update``), so a node can vouch
  for at most what its own assigned builds did: one restored key and one saved key per build;
* **expectations**: the coordinator asked the node to prewarm a key, or granted it a placement lease for
  one (the caller's runner restores and saves there). A claim reported *after* the expectation, within
  ``window_s``, of the expected key (or the lease's keys in the scopes it may read) is corroborated; so is
  one key under its restore prefixes that the coordinator already knows another node holds.

Only corroborated entries enter the ``InventoryIndex`` the scheduler reads. The rest are kept per node as
*uncorroborated claims*: they make no node warm; they are counted (the inventory's ``uncorroborated_entries``
and ``stoker_coordinator_node_claims_uncorroborated``) and become corroborated when a voucher or an
expectation comes for them (a node's save reaches the coordinator as a delta *before* its build's
``finished``, so an honest node's newest entry is uncorroborated for that moment).

Sizes, file counts, creation times and content sketches come from the record, not from the node's claim:
a key's first corroborated holder sets them (its own assigned build saved or restored it; a restore's
figures give its size) and every later holder inherits them; only ``last_used`` is the node's own.

Vouchers are kept in the state store, so a restarted coordinator corroborates its fleet's snapshots at
once instead of placing every build cold until builds have run again; they go with the build history
(``builds.history_days``). Pure code: the store is a two-method port.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from stoker.coordinator.core.clock import Clock
from stoker.coordinator.placement.domain import BYTES, CREATED, FILES, KEY, LAST_USED, SKETCH, Entry
from stoker.coordinator.placement.inventory import InventoryIndex


class VoucherStore(Protocol):
    """Where vouchers outlive the coordinator (``StateStore`` implements it)."""

    def put_voucher(self, node: str, key: str, size: int, files: int, at: float) -> None: ...
    def vouchers(self, node: str) -> dict[str, tuple[int, int]]:
        """key → (bytes, files) of every voucher kept for ``node``."""
        ...


@dataclass
class Voucher:
    """The coordinator's record that a node holds an entry."""

    bytes: int = 0
    """Its size as the record says (0: not known yet; the entry's first corroborated claim sets it)."""
    files: int = 0
    at: float = 0.0
    """When it was recorded."""
    kept: bool = False
    """Whether it is in the store already."""


@dataclass
class PrefixExpectation:
    """Restore prefixes of a prewarm or a lease: one key under them that another node holds may be claimed."""

    prefixes: tuple[str, ...]
    until: float
    used: bool = False


@dataclass
class Expected:
    """What the coordinator asked a node to fetch (prewarms) or to use (placement leases), until when."""

    keys: dict[str, float] = field(default_factory=dict)
    """Key → until when a claim of it counts: the key asked for, and its twins in the scopes a lease's
    build may read."""
    prefixes: collections.deque[PrefixExpectation] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_PREFIX_EXPECTATIONS)
    )


MAX_PREFIX_EXPECTATIONS = 64
"""Per node, the newest prefix expectations kept: a claim of a key another node holds is checked against each
(a hostile node's snapshot of every known key must not cost claims × prewarms)."""
MAX_EXPECTED_KEYS = 4096
"""Per node, the most expected keys kept (the oldest go first)."""


class ClaimChecker:
    """Applies nodes' reports to the inventory, keeping out what the coordinator cannot corroborate.

    With ``enabled`` False (the coordinator's setting ``nodes.check_claims``) every report is applied as sent,
    as on a fleet whose every node is trusted."""

    def __init__(
        self,
        inventory: InventoryIndex,
        clock: Clock,
        store: VoucherStore | None = None,
        *,
        enabled: bool = True,
        window_s: float = 3600.0,
    ) -> None:
        self._inventory = inventory
        self._clock = clock
        self._store = store
        self.enabled = enabled
        self.window_s = window_s
        self._vouched: dict[str, dict[str, Voucher]] = {}
        """node → key → voucher: the node's corroborated entries, and vouchers whose claims have not come."""
        self._claims: dict[str, dict[str, Entry]] = {}
        """node → key → its uncorroborated claims."""
        self._expected: dict[str, Expected] = collections.defaultdict(Expected)
        self._loaded: set[str] = set()
        """Nodes whose stored vouchers were read (once per node, at its first report)."""

    # -- a node's reports ----------------------------------------------------------------------
    def snapshot(self, node: str, generation: int, entries: Iterable[Entry]) -> None:
        """A node's whole inventory: the corroborated part replaces what the index held of it; the rest
        replaces its uncorroborated claims."""
        if not self.enabled:
            self._inventory.apply_snapshot(node, generation, entries)
            return
        vouched = self._vouchers(node)
        accepted: list[Entry] = []
        claims: dict[str, Entry] = {}
        for entry in entries:
            voucher = vouched.get(entry[KEY]) or self._expected_voucher(node, entry[KEY])
            if voucher is None:
                claims[entry[KEY]] = entry
            else:
                accepted.append(self._recorded(node, entry, voucher))
        self._claims[node] = claims
        self._inventory.apply_snapshot(node, generation, accepted)
        # Vouchers for entries the node no longer reports go, unless they are recent enough that the claim
        # may still be on its way.
        held = {e[KEY] for e in accepted}
        stale = self._clock.now() - self.window_s
        for key in [k for k, v in vouched.items() if k not in held and v.at < stale]:
            del vouched[key]

    def delta(self, node: str, generation: int, upserted: Iterable[Entry], removed: Iterable[str]) -> bool:
        """What changed on a node; False (nothing applied) when it does not follow the last generation."""
        if not self.enabled:
            return self._inventory.apply_delta(node, generation, upserted, removed)
        if generation != self._inventory.generation(node) + 1 or node not in self._claims:
            return False
        vouched = self._vouchers(node)
        claims = self._claims[node]
        removed = list(removed)
        for key in removed:
            claims.pop(key, None)
            vouched.pop(key, None)
        accepted: list[Entry] = []
        for entry in upserted:
            voucher = vouched.get(entry[KEY]) or self._expected_voucher(node, entry[KEY])
            if voucher is None:
                claims[entry[KEY]] = entry
            else:
                claims.pop(entry[KEY], None)
                accepted.append(self._recorded(node, entry, voucher))
        return self._inventory.apply_delta(node, generation, accepted, removed)

    def generation(self, node: str) -> int:
        return self._inventory.generation(node)

    def drop_node(self, node: str) -> None:
        """The node is lost: its entries leave the index; its vouchers stay in the store for its return."""
        self._inventory.drop_node(node)
        self._claims.pop(node, None)
        self._vouched.pop(node, None)
        self._expected.pop(node, None)
        self._loaded.discard(node)

    # -- the coordinator's record --------------------------------------------------------------
    def vouch(self, node: str, key: str, size: int = 0, files: int = 0) -> None:
        """A build the coordinator assigned to ``node`` restored ``key`` there (``size``: the bytes it
        restored) or saved it there: the node holds it. A claim already reported becomes corroborated."""
        if not self.enabled or not key:
            return
        vouched = self._vouchers(node)
        voucher = vouched.get(key)
        if voucher is None:
            voucher = vouched[key] = Voucher(size, files, self._clock.now())
        elif size and not voucher.bytes:
            voucher.bytes, voucher.files = size, files
        claim = self._claims.get(node, {}).pop(key, None)
        if claim is not None:
            self._inventory.put(node, self._recorded(node, claim, voucher))

    def expect(
        self, node: str, keys: Iterable[str], prefixes: Iterable[str] = (), for_s: float = 0.0
    ) -> None:
        """The coordinator asked ``node`` to prewarm (or granted it a lease for) ``keys``: a claim of one of
        them, or of one key under ``prefixes`` that another node holds, reported within ``window_s`` (plus
        ``for_s``: a lease's length), is corroborated."""
        if not self.enabled:
            return
        now = self._clock.now()
        until = now + self.window_s + for_s
        expected = self._expected[node]
        for key in keys:
            if key:
                expected.keys.pop(key, None)  # re-inserted last: the dict stays oldest first
                expected.keys[key] = until
        while len(expected.keys) > MAX_EXPECTED_KEYS or (
            expected.keys and next(iter(expected.keys.values())) <= now
        ):
            del expected.keys[next(iter(expected.keys))]
        prefixes = tuple(p for p in prefixes if p)
        if prefixes:
            expected.prefixes.append(PrefixExpectation(prefixes, until))

    def _expected_voucher(self, node: str, key: str) -> Voucher | None:
        """A voucher for ``key`` on ``node`` when an open expectation covers it (else None)."""
        expected = self._expected.get(node)
        if expected is None:
            return None
        now = self._clock.now()
        until = expected.keys.pop(key, None)
        if until is None or until <= now:
            if not expected.prefixes or not self._held_elsewhere(node, key):
                return None
            for e in expected.prefixes:
                if not e.used and e.until > now and any(key.startswith(p) for p in e.prefixes):
                    e.used = True
                    break
            else:
                return None
        voucher = self._vouched[node][key] = Voucher(at=now)
        return voucher

    def _held_elsewhere(self, node: str, key: str) -> bool:
        return any(name != node for name in self._inventory.holders(key))

    def _recorded(self, node: str, claim: Entry, voucher: Voucher) -> Entry:
        """The entry as placement is to see it: the record's size, files, creation time and sketch (those of
        the key's corroborated holders, else the voucher's size), the node's own last use."""
        key = claim[KEY]
        holders = self._inventory.holders(key)
        record = next((held for name, held in holders.items() if name != node), holders.get(node))
        entry: Entry
        if record is not None:
            entry = (key, record[BYTES], record[FILES], record[CREATED], claim[LAST_USED], record[SKETCH])
        elif voucher.bytes:
            entry = (
                key,
                voucher.bytes,
                voucher.files or claim[FILES],
                claim[CREATED],
                claim[LAST_USED],
                claim[SKETCH],
            )
        else:  # the key's first holder, whose own assigned build saved it: its report sets the record
            entry = (key, claim[BYTES], claim[FILES], claim[CREATED], claim[LAST_USED], claim[SKETCH])
            voucher.bytes, voucher.files = claim[BYTES], claim[FILES]
        if not voucher.kept and self._store is not None:
            voucher.kept = True
            self._store.put_voucher(node, key, voucher.bytes, voucher.files, voucher.at)
        return entry

    def _vouchers(self, node: str) -> dict[str, Voucher]:
        vouched = self._vouched.get(node)
        if vouched is None:
            vouched = self._vouched[node] = {}
        if node not in self._loaded:
            self._loaded.add(node)
            if self._store is not None:
                for key, (size, files) in self._store.vouchers(node).items():
                    vouched.setdefault(key, Voucher(size, files, 0.0, kept=True))
        return vouched

    # -- what is flagged -----------------------------------------------------------------------
    def uncorroborated(self, node: str) -> list[Entry]:
        """What ``node`` claims and the coordinator could not corroborate."""
        return list(self._claims.get(node, {}).values())

    def uncorroborated_total(self) -> int:
        return sum(len(claims) for claims in list(self._claims.values()))

    def flagged_nodes(self) -> int:
        return sum(1 for claims in list(self._claims.values()) if claims)
