"""Bounded memories: maps kept in the order their entries were last touched, trimmed as they are updated, so
that a fleet whose keys never stop changing does not grow what the scheduler remembers forever."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def trim(recent: collections.OrderedDict[K, V], stale: Callable[[V], bool], cap: int) -> None:
    """Drop entries from the least recently touched end of ``recent`` while they are ``stale`` or there
    are more than ``cap`` (O(1) per dropped entry, so callers can trim on every update)."""
    while recent:
        first = next(iter(recent.values()))
        if len(recent) <= cap and not stale(first):
            return
        recent.popitem(last=False)
