"""Which content the blob store holds already, and where: what a save need not upload again.

Learnt from the manifests of the node's entries and from the key's current manifest in the blob store;
content counts as known only while every pack holding it is known to exist there.
"""

from __future__ import annotations

import logging
import threading

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError
from stoker.agent.cache.blobs import BlobStore
from stoker.agent.cache.resolve import EntryResolver, KeyPointer, LocalManifests
from stoker.agent.cache.store import LocalStore

log = logging.getLogger(__name__)

KnownChunks = tuple[tuple[mf.Frame, int, int], ...]
"""Where one content lives: (frame, offset in its raw bytes, length) for each of its pieces, in order."""


class KnownContent:
    """Content digest → where the blob store holds it. Thread-safe."""

    def __init__(
        self, store: LocalStore, blobs: BlobStore, manifests: LocalManifests, resolver: EntryResolver
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._manifests = manifests
        self._resolver = resolver
        self._lock = threading.Lock()
        self._known: dict[str, KnownChunks] = {}
        self._known_from: set[str] = set()
        self._packs_present: set[str] = set()

    def chunks(self, previous: KeyPointer | None) -> dict[str, KnownChunks]:
        """Digest → where the blob store holds it, from local manifests and the key's current one
        (``previous``, its pointer)."""
        _, entries = self._store.inventory()
        for info in entries:
            record = self._store.lookup(info.key)
            # Only entries whose files this node checked against their own digests: a manifest restored
            # through its frames' digests alone could pair a popular digest with other bytes, and reusing
            # that pairing would put those bytes into another tenant's entry.
            if record is not None and record.files_checked and record.manifest not in self._known_from:
                local = self._manifests.get(record.manifest)
                if local is not None:
                    self.learn(record.manifest, local)
        if previous is not None and str(previous["manifest"]) not in self._known_from:
            try:
                resolved = self._resolver.remote(
                    str(previous.get("key", "")) or "(previous)", previous, exact=True
                )
                self.learn(resolved.manifest_name, resolved.manifest)
            except CacheError as exc:
                log.warning("ignoring the previous manifest of this key: %s", exc)
        with self._lock:
            packs = {fr.pack for chunks in self._known.values() for fr, _, _ in chunks}
            unchecked = packs - self._packs_present
        for pack in unchecked:
            if self._blobs.exists(f"packs/{pack}"):
                self.pack_present(pack)
        with self._lock:
            return {
                d: c for d, c in self._known.items() if all(fr.pack in self._packs_present for fr, _, _ in c)
            }

    def learn(self, name: str, manifest: mf.Manifest) -> None:
        """Remember where the content of manifest ``name`` lives."""
        with self._lock:
            if name in self._known_from:
                return
            self._known_from.add(name)
            for f in manifest.files:
                if f.type == mf.FILE and f.chunks and f.digest is not None and f.digest not in self._known:
                    self._known[f.digest] = tuple(
                        (manifest.frames[c.frame], c.raw_offset, c.raw_length) for c in f.chunks
                    )

    def pack_present(self, pack: str) -> None:
        """The blob store holds ``pack`` (it was just uploaded, or seen there)."""
        with self._lock:
            self._packs_present.add(pack)
