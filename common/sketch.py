"""Content sketches on the wire and in the coordinator's memory: packed, not lists of ints.

A sketch is the bottom-k MinHash (k = 64) of an entry's distinct content digests: up to 64 unsigned 64-bit
values, ascending (``agent.cache.manifest.content_sketch``). ``CacheEntry.sketch`` carries them as bytes,
8 little-endian bytes per value: byte for byte what the field's earlier form, ``repeated fixed64`` (packed),
put on the wire, so agents and coordinators of either form understand each other.

Why bytes: as Python ints a 64-value sketch is 64 objects of 32 bytes plus a tuple (~2.8 KB), costs ~4 µs
to read from or write to a message, and the coordinator holds one per entry (a million for 1,000 nodes x
1,000 keys). As bytes it is one 545-byte object that the garbage collector does not track, copied in and
out of messages whole, and replicas of an entry share one (``InventoryIndex``).
"""

from __future__ import annotations

import array
import sys
from collections.abc import Iterable, Sequence

MAX_VALUES = 64


def pack(values: Iterable[int]) -> bytes:
    """Sketch values as ``CacheEntry.sketch`` carries them (b"" for none)."""
    packed = array.array("Q", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def valid(packed: bytes) -> bool:
    """Whether ``packed`` is a sketch this code can read: whole 8-byte values, at most ``MAX_VALUES``."""
    return len(packed) % 8 == 0 and len(packed) <= 8 * MAX_VALUES


def unpack(packed: bytes) -> Sequence[int]:
    """The values of a packed sketch (``valid`` ones only)."""
    if sys.byteorder == "little":
        return memoryview(packed).cast("Q")
    values = array.array("Q", packed)
    values.byteswap()
    return values
