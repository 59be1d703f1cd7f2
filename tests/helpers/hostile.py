"""Helpers for the hostile-input suite: file-system snapshots, fuzz crash artifacts, manifest surgery."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import traceback
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, settings

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.blobs import encode_key

ARTIFACTS = Path(os.environ.get("STOKER_FUZZ_ARTIFACTS", Path(__file__).parent / ".fuzz-crashes"))
"""Where a fuzz target that crashes saves the input (CI uploads this directory)."""


def budget(examples: int) -> settings:
    """Hypothesis settings for one property or fuzz target: ``examples`` in CI (tuned so that the whole
    suite stays near a minute on two cores), ``STOKER_FUZZ_SCALE`` times more for a longer campaign by
    hand."""
    scale = float(os.environ.get("STOKER_FUZZ_SCALE", "1"))
    return settings(
        max_examples=max(1, int(examples * scale)),
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@dataclass(frozen=True)
class TreeState:
    """Everything under ``root`` (types, modes, sizes, mtimes, content hashes, link targets)."""

    root: Path
    entries: dict
    exclude: frozenset = frozenset()

    @classmethod
    def of(cls, root: Path, exclude: tuple[str, ...] = ()) -> TreeState:
        """``exclude``: top-level names below ``root`` left out (the cache root, the workspace)."""
        return cls(root, _scan(root, frozenset(exclude)), frozenset(exclude))

    def unchanged(self) -> bool:
        return _scan(self.root, self.exclude) == self.entries

    def diff(self) -> str:
        now = _scan(self.root, self.exclude)
        changed = sorted(k for k in set(now) | set(self.entries) if now.get(k) != self.entries.get(k))
        return ", ".join(changed[:20])


def _scan(root: Path, exclude: frozenset = frozenset()) -> dict:
    out: dict = {}
    if not os.path.lexists(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in exclude]
            filenames = [f for f in filenames if f not in exclude]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = (
                    "file",
                    st.st_mode,
                    st.st_size,
                    st.st_mtime_ns,
                    hashlib.sha256(p.read_bytes()).hexdigest(),
                )
            else:
                out[rel] = ("other", st.st_mode, st.st_mtime_ns)
    return out


def holding(secret: bytes, *roots: Path) -> list[str]:
    """The files under ``roots`` whose bytes hold ``secret``, as stored or once their zstd frames are
    decompressed (packs, fetched frames, manifests), and the manifests that name its digest."""
    digest = hashlib.sha256(secret).hexdigest().encode()
    found = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                if path.is_symlink() or not path.is_file():
                    continue
                data = path.read_bytes()
                if secret in data or digest in data or secret in _unzstd(data):
                    found.append(str(path))
                elif digest.decode() in _digests_named(data):
                    found.append(f"{path} (names its digest)")
    return found


def _unzstd(data: bytes) -> bytes:
    """Every zstd frame found from the start of ``data`` on, decompressed (what is not zstd ends it)."""
    import zstandard

    out = []
    while data:
        obj = zstandard.ZstdDecompressor().decompressobj()
        try:
            out.append(obj.decompress(data))
        except zstandard.ZstdError:
            break
        if not obj.unused_data or len(obj.unused_data) >= len(data):
            break
        data = obj.unused_data
    return b"".join(out)


def _digests_named(data: bytes) -> set[str]:
    """The file digests of ``data`` if it is a manifest, else nothing."""
    try:
        manifest = mf.parse(data, where="scan", check=False)
    except Exception:  # not a manifest: most files are not
        return set()
    return {f.digest for f in manifest.files if f.digest}


def listing(path: Path) -> set[str]:
    """Names directly under ``path`` (empty when it does not exist)."""
    return set(os.listdir(path)) if path.exists() else set()


def save_crash(target: str, data: bytes, exc: BaseException) -> Path:
    """Keep a crashing fuzz input (named by its hash) with its traceback; returns the input's path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    name = f"{target}-{hashlib.sha256(data).hexdigest()[:16]}"
    (ARTIFACTS / f"{name}.bin").write_bytes(data)
    (ARTIFACTS / f"{name}.txt").write_text("".join(traceback.format_exception(exc)))
    return ARTIFACTS / f"{name}.bin"


def pointer(blobs: Path, key: str) -> dict:
    return json.loads((blobs / "keys" / encode_key(key)).read_text())


def stored_manifest(blobs: Path, key: str) -> mf.Manifest:
    return mf.parse((blobs / "manifests" / pointer(blobs, key)["manifest"]).read_bytes(), where="test")


def publish_manifest(blobs: Path, key: str, data: bytes) -> None:
    """Point ``key`` at the (already encoded, possibly hostile) manifest bytes ``data``."""
    name = hashlib.sha256(data).hexdigest()
    (blobs / "manifests").mkdir(parents=True, exist_ok=True)
    (blobs / "manifests" / name).write_bytes(data)
    (blobs / "keys").mkdir(parents=True, exist_ok=True)
    (blobs / "keys" / encode_key(key)).write_text(json.dumps({"manifest": name, "content": "hostile"}))


def v1_json(m: mf.Manifest) -> dict:
    """The version-1 JSON document of ``m`` (editable, then re-encoded with :func:`encode_v1_doc`)."""
    import zstandard

    return json.loads(zstandard.ZstdDecompressor().decompress(mf.encode(m, version=1)))


def encode_v1_doc(doc: dict) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(json.dumps(doc).encode())
