"""A blob store in a local directory (the embedded default; also a shared mount such as NFS).

Writes go to a temporary file in the same directory and are renamed into place, so a reader sees a whole
object or none; object names map to paths below the root (``packs/<sha256>`` → ``<root>/packs/<sha256>``).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from stoker.agent.cache.api import BlobStoreUnavailable, CacheError, NotFound
from stoker.agent.cache.blobs import BlobStats, ObjectInfo


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stats = BlobStats()
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"file://{self.root}"

    def _path(self, name: str) -> Path:
        if not name or name.startswith("/") or ".." in name.split("/") or "\0" in name:
            raise CacheError(f"invalid object name {name!r}")
        return self.root / name

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self.stats, k, getattr(self.stats, k) + v)

    def get(self, name: str) -> bytes:
        try:
            data = self._path(name).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"{self.describe()}: no object {name}") from exc
        except OSError as exc:
            raise BlobStoreUnavailable(f"{self.describe()}: cannot read {name}: {exc}") from exc
        self._count(gets=1, bytes_read=len(data))
        return data

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise NotFound(f"{self.describe()}: no object {name}") from exc
        except OSError as exc:
            raise BlobStoreUnavailable(f"{self.describe()}: cannot read {name}: {exc}") from exc
        try:
            chunks = []
            done = 0
            while done < length:
                chunk = os.pread(fd, length - done, offset + done)
                if not chunk:
                    break
                chunks.append(chunk)
                done += len(chunk)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        self._count(gets=1, bytes_read=len(data))
        return data

    def _tmp(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.parent / f".tmp-{uuid.uuid4().hex}"

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            tmp = self._tmp(path)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            raise BlobStoreUnavailable(f"{self.describe()}: cannot write {name}: {exc}") from exc
        self._count(puts=1, bytes_written=len(data))

    def put_file(self, name: str, path: Path) -> None:
        dest = self._path(name)
        try:
            tmp = self._tmp(dest)
            shutil.copyfile(path, tmp)
            os.replace(tmp, dest)
            size = dest.stat().st_size
        except OSError as exc:
            raise BlobStoreUnavailable(f"{self.describe()}: cannot write {name}: {exc}") from exc
        self._count(puts=1, bytes_written=size)

    def exists(self, name: str) -> bool:
        return self._path(name).exists()

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._count(lists=1)
        directory, _, leaf = prefix.rpartition("/")
        base = self.root / directory if directory else self.root
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            return
        for e in sorted(entries, key=lambda e: e.name):
            if e.name.startswith(".tmp-") or not e.name.startswith(leaf):
                continue
            name = f"{directory}/{e.name}" if directory else e.name
            if e.is_dir(follow_symlinks=False):
                yield from self.list(name + "/")
            else:
                st = e.stat(follow_symlinks=False)
                yield ObjectInfo(name=name, size=st.st_size, modified=st.st_mtime)

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass
