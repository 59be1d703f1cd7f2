"""Bounded fuzzing (hypothesis) of the two decoders that read bytes from the blob store: the manifest
decoder (:func:`manifest.parse`, both versions) and the frame decoder (:func:`write_tasks.read_frame`).

The only acceptable failure is a :class:`CacheError` (a subclass for frames: :class:`CorruptEntry`). Any
other exception is a crash: the input is saved under ``tests/helpers/.fuzz-crashes/`` (or
``$STOKER_FUZZ_ARTIFACTS``) with its traceback, and the test fails naming the file. CI runs a few hundred
inputs per target (a few seconds); ``STOKER_FUZZ_SCALE=100`` runs a longer campaign by hand.
"""

from __future__ import annotations

import hashlib
import os
import resource
import struct
import tempfile
import traceback

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from stoker.agent.cache import manifest as mf
from stoker.agent.cache import write_tasks
from stoker.agent.cache.api import CacheError, CorruptEntry
from tests.helpers.hostile import budget, save_crash

pytestmark = pytest.mark.hostile


def _seed_manifest() -> mf.Manifest:
    frames = (mf.Frame("a" * 64, 0, 100, 4096), mf.Frame("b" * 64, 7, 50, 10))
    files = (
        mf.FileEntry("nm", mf.DIR, 0o755, 1),
        mf.FileEntry("nm/a.js", mf.FILE, 0o644, 2, 100, "1" * 64, None, (mf.Chunk(0, 0, 100),)),
        mf.FileEntry(
            "nm/b.js", mf.FILE, 0o755, 3, 12, "2" * 64, None, (mf.Chunk(0, 100, 2), mf.Chunk(1, 0, 10))
        ),
        mf.FileEntry("nm/e", mf.FILE, 0o644, 3, 0, hashlib.sha256(b"").hexdigest(), None, ()),
        mf.FileEntry("nm/sub", mf.DIR, 0o700, 4),
        mf.FileEntry("nm/sub/l", mf.SYMLINK, 0o777, 5, target="../a.js"),
    )
    return mf.Manifest("web/k", 1.5, frames, files, ("nm",))


SEED = _seed_manifest()
SEED_V2_RAW = zstandard.ZstdDecompressor().decompress(mf.encode(SEED))
SEED_V1_RAW = zstandard.ZstdDecompressor().decompress(mf.encode(SEED, version=1))


def _mutate(raw: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: overwrite a byte, insert one, delete one, or write a u32."""
    data = bytearray(raw)
    for kind, pos, value in edits:
        if not data:
            data.append(value & 0xFF)
            continue
        pos %= len(data)
        if kind == 0:
            data[pos] = value & 0xFF
        elif kind == 1:
            data.insert(pos, value & 0xFF)
        elif kind == 2:
            del data[pos]
        else:  # a plausible-looking count or length: small, huge, or off by one
            data[pos : pos + 4] = struct.pack("<I", value & 0xFFFFFFFF)
    return bytes(data)


EDITS = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 1 << 16),
        st.one_of(
            st.integers(0, 255),
            st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**16]),
            st.integers(0, 2**32 - 1),
        ),
    ),
    min_size=1,
    max_size=6,
)


def _check_manifest(data: bytes) -> None:
    """parse() either refuses with a CacheError, or what it returns is valid and round-trips."""
    try:
        m = mf.parse(data, where="fuzz")
    except CacheError:
        return
    # Whatever parses passes validation again, and re-encodes to something that parses to the same
    # manifest. (A version-1 digest of 64 characters that are not hex passes the checks and then cannot be
    # re-encoded: docs/findings/hostile-input.md, finding 3; such manifests are left out of the round trip
    # until it is fixed.)
    mf.validate(m, where="fuzz-again")
    if all(f.digest is None or all(c in "0123456789abcdef" for c in f.digest) for f in m.files):
        assert mf.parse(mf.encode(m), where="fuzz-again") == m


_CHILD_HEADROOM = 512 << 20


def _in_child(fn, data: bytes) -> str:
    """Run ``fn(data)`` in a forked child under a memory limit; "ok", "memory" or a crash description.

    The manifest decoder allocates from counts it reads before checking them against the input
    (docs/findings/hostile-input.md, findings 2 and 8): in this process a mutated count would take the
    machine's memory."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        out = b"ok"
        try:
            with open("/proc/self/statm") as f:
                vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            resource.setrlimit(resource.RLIMIT_AS, (vsz + _CHILD_HEADROOM, vsz + _CHILD_HEADROOM))
            fn(data)
        except MemoryError:
            out = b"memory"
        except BaseException:
            out = ("crash\n" + traceback.format_exc()).encode()
        os.write(w, out[:60000])
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0 or not text:
        return f"crash\nchild died with status {status}"
    return text


def _parse_or_crash(target: str, data: bytes) -> None:
    result = _in_child(_check_manifest, data)
    if result in ("ok", "memory"):  # "memory": findings 2 and 8, left to the fix in manifest.py
        return
    exc = AssertionError(result)
    path = save_crash(target, data, exc)
    raise AssertionError(f"manifest.parse crashed; input saved to {path}:\n{result}")


@budget(150)
@given(st.sampled_from([SEED_V2_RAW, SEED_V1_RAW]), EDITS)
def test_fuzz_manifest_decoder_on_mutated_manifests(seed, edits):
    _parse_or_crash("manifest-mutated", zstandard.ZstdCompressor(level=1).compress(_mutate(seed, edits)))


@budget(100)
@given(
    st.one_of(
        st.binary(max_size=512),
        st.binary(max_size=512).map(lambda b: b"STKM" + b),
        st.binary(max_size=64).map(lambda b: b"STKM\x02\x00" + b),
    )
)
def test_fuzz_manifest_decoder_on_arbitrary_bytes(body):
    _parse_or_crash("manifest-raw", zstandard.ZstdCompressor(level=1).compress(body))
    _parse_or_crash("manifest-uncompressed", body)


@budget(150)
@given(EDITS)
def test_fuzz_manifest_decoder_on_mutated_compressed_bytes(edits):
    _parse_or_crash("manifest-compressed", _mutate(mf.encode(SEED), edits))


PAYLOAD = os.urandom(3000) + bytes(5000) + b"stoker" * 300
FRAME = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=False).compress(PAYLOAD)
FRAME_CHECKSUM = zstandard.ZstdCompressor(level=3, write_content_size=True, write_checksum=True).compress(
    PAYLOAD
)


def _read_or_crash(blob: bytes, raw_size: int) -> None:
    with tempfile.TemporaryFile() as f:
        f.write(blob)
        f.flush()
        m = mf.Manifest("fuzz", 0.0, (mf.Frame("p" * 64, 0, max(1, len(blob)), raw_size),), ())
        try:
            raw = write_tasks.read_frame(m, 0, lambda i: (f.fileno(), 0), where="fuzz")
        except CorruptEntry:
            return
        except Exception as exc:
            path = save_crash("frame", struct.pack("<Q", raw_size) + blob, exc)
            raise AssertionError(f"read_frame crashed with {exc!r}; input saved to {path}") from exc
    assert len(raw) == raw_size, "a frame never yields more or less than the manifest declares"


@budget(400)
@given(
    st.sampled_from([FRAME, FRAME_CHECKSUM]),
    EDITS,
    st.one_of(st.just(len(PAYLOAD)), st.integers(0, mf.MAX_FRAME_RAW_SIZE)),
)
def test_fuzz_frame_decoder_on_mutated_frames(seed, edits, raw_size):
    _read_or_crash(_mutate(seed, edits), raw_size)


@budget(200)
@given(st.binary(max_size=256), st.integers(0, 1 << 20))
def test_fuzz_frame_decoder_on_arbitrary_bytes(blob, raw_size):
    _read_or_crash(b"\x28\xb5\x2f\xfd" + blob, raw_size)
    _read_or_crash(blob, raw_size)


def test_a_crash_is_saved_with_its_input(tmp_path, monkeypatch):
    """The harness itself: an unexpected exception fails the test and keeps the input."""
    from tests.helpers import hostile as hostilekit

    monkeypatch.setattr(hostilekit, "ARTIFACTS", tmp_path)
    path = hostilekit.save_crash("selftest", b"\x01\x02", ValueError("boom"))
    assert path.read_bytes() == b"\x01\x02" and "boom" in path.with_suffix(".txt").read_text()
