"""Placement-only mode on the node: a runner asks its local agent to restore and save its workspace's cache.

A CI system that dispatches its jobs itself takes a placement lease (``PlaceBuild``); the coordinator sends
the placed node's agent the lease (``GrantLeaseCommand``: the spec as bound to the caller's token, with the
cache scopes the coordinator derived, and the SHA-256 of a secret only the caller got). A runner on the node
then calls the agent's ``LocalCache`` service on a unix socket (``cache.local_socket``; no network port)
with the lease's id and secret and its workspace. The agent

* serves only a lease it was granted and that has not expired or been dropped, and only to the secret:
  every refusal is the same PERMISSION_DENIED, which says nothing of other leases;
* restores into and saves from a workspace only beneath ``cache.local_workspace_root``: the directory is
  opened once, component by component following no symlink, and the restore and the save reach it only
  through that descriptor (:func:`~.cache.safe_open.pinned`), so a runner that swaps a directory of the
  path for a symlink afterwards changes nothing outside the workspace;
* restores and saves exactly as it does for a build it runs (:func:`~.runner.restore_into`,
  :func:`~.runner.save_from`): the lease's keys in its scopes, a save only ever in its own scope (an
  untrusted lease never writes the protected one), the workspace read as hostile input;
* gives what it restored to the workspace directory's owner (the runner's user), and
* reports what it did (warmth, bytes, restore and save times, the new entry) on its stream, so the
  coordinator's inventory and scheduler learn them as they learn a build's.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from stoker.agent.cache.api import BuildCache, CacheError, RestoreResult
from stoker.agent.cache.safe_open import DIR_PATH, pinned
from stoker.agent.runner import (
    AgentMetrics,
    cache_hit,
    matched_exactly,
    restore_figures,
    restore_into,
    save_from,
)
from stoker.common.serving import GRPC_SERVER_OPTIONS, ListenError, add_port
from stoker.v1 import agent_pb2, common_pb2, local_cache_pb2, local_cache_pb2_grpc

log = logging.getLogger(__name__)

REFUSED = "no such lease on this node, or a wrong secret (leases end when released or expired)"
"""The one answer to every refused lease: it does not say whether the lease exists."""


class Refused(Exception):
    """A runner's call refused: the gRPC code and one line that says why."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Lease:
    """A lease the coordinator granted on this node."""

    lease_id: str
    secret_sha256: bytes
    spec: common_pb2.BuildSpec
    principal: str
    deadline: float
    """time.monotonic() past which the lease is refused, even before the coordinator drops it."""
    restored: RestoreResult | None = None
    restored_at: float = 0.0
    """time.monotonic() when its restore ended (the runner's job starts then)."""
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    """A lease's restore and save never overlap."""
    stream: int = 0
    """The stream to the coordinator that granted it last (see :meth:`Leases.confirm_on`)."""


class Leases:
    """The leases granted on this node, as the coordinator's commands say (in memory: after a restart the
    coordinator grants them again when the node reconnects)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._stream = 0

    def grant(self, command: agent_pb2.GrantLeaseCommand) -> None:
        now = self._clock()
        for gone in [k for k, v in self._leases.items() if v.deadline <= now]:
            del self._leases[gone]
        known = self._leases.get(command.lease_id)
        if known is not None:  # granted again after a reconnect: keep what the runner did under it
            known.deadline = now + command.expires_in_s
            known.stream = self._stream
            return
        self._leases[command.lease_id] = Lease(
            lease_id=command.lease_id,
            secret_sha256=bytes(command.secret_sha256),
            spec=command.spec,
            principal=command.principal,
            deadline=now + command.expires_in_s,
            stream=self._stream,
        )
        log.info("lease %s granted for %.0f s", command.lease_id, command.expires_in_s)

    def new_stream(self) -> int:
        """A new stream to the coordinator opened: it grants again, first thing, every lease it still holds
        on this node. Returns the stream's number for :meth:`forget_unconfirmed`."""
        self._stream += 1
        return self._stream

    def forget_unconfirmed(self, stream: int) -> None:
        """Drop the leases that stream ``stream`` did not grant again: a coordinator that restarted (its
        leases are gone) or released them while the stream was down."""
        for lease_id in [k for k, v in self._leases.items() if v.stream < stream]:
            self.drop(lease_id, "not granted again by the coordinator after a reconnect")

    def drop(self, lease_id: str, reason: str = "") -> None:
        if self._leases.pop(lease_id, None) is not None:
            log.info("lease %s dropped (%s)", lease_id, reason or "no reason given")

    def check(self, lease_id: str, secret: str) -> Lease:
        """The lease, if it is held, unexpired and ``secret`` is its secret; else Refused
        (PERMISSION_DENIED, the same words whatever the reason)."""
        lease = self._leases.get(lease_id)
        digest = hashlib.sha256(secret.encode()).digest()
        if lease is None or not lease.secret_sha256 or not hmac.compare_digest(digest, lease.secret_sha256):
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"lease {lease_id!r}: {REFUSED}")
        if lease.deadline <= self._clock():
            del self._leases[lease_id]
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"lease {lease_id!r}: {REFUSED}")
        return lease

    def __len__(self) -> int:
        return len(self._leases)


def open_workspace(root: str, workspace: str) -> int:
    """A descriptor (O_PATH) of the directory ``workspace``, which must lie beneath ``root``, reached one
    component at a time following no symlink; Refused (INVALID_ARGUMENT) otherwise, saying why."""
    if not root:
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            "this agent serves no workspaces (cache.local_workspace_root)",
        )
    if not workspace or not os.path.isabs(workspace) or "\0" in workspace:
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT, f"workspace: must be an absolute path, got {workspace!r}"
        )
    root = os.path.normpath(root)
    rel = os.path.relpath(os.path.normpath(workspace), root)
    parts = rel.split("/")
    if rel == "." or parts[0] == ".." or ".." in workspace.split("/"):
        raise Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"workspace: {workspace} is not a directory beneath {root} (cache.local_workspace_root)",
        )
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                nxt = os.open(part, DIR_PATH, dir_fd=fd)
            except OSError as exc:
                where = os.path.join(root, *parts[: i + 1])
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    why = "is a symlink or not a directory (a workspace is reached through no symlink)"
                elif exc.errno == errno.ENOENT:
                    why = "does not exist"
                else:
                    why = f"cannot be opened ({exc.strerror})"
                raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"workspace: {where} {why}") from None
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def give_to_owner(ws_fd: int, paths: list[str]) -> int:
    """Give ``paths`` of the workspace open as ``ws_fd`` (and every directory on the way to them) to the
    workspace directory's owner; returns how many entries changed hands. Nothing to do when the agent's
    own user owns the workspace.

    The runner owns the workspace and may swap any directory in it for a symlink while this runs, so no
    path of more than one component is ever resolved: each directory on the way is opened from the one
    before following no symlink (a swapped one ends that path), each entry is changed by its one name
    beneath its directory's descriptor, and a tree is walked by ``os.fwalk`` from a descriptor, which
    descends only into directories it opened and checked itself."""
    st = os.fstat(ws_fd)
    if st.st_uid == os.geteuid() and st.st_gid == os.getegid():
        return 0
    uid, gid = st.st_uid, st.st_gid
    changed = 0
    for path in paths:
        parts = [p for p in path.split("/") if p]
        if not parts:
            continue
        fd = os.open(".", DIR_PATH, dir_fd=ws_fd)
        try:
            for i, name in enumerate(parts):
                top = os.stat(name, dir_fd=fd, follow_symlinks=False)
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                changed += 1
                if not stat.S_ISDIR(top.st_mode):
                    break  # a file or a symlink (the link itself changed hands): nothing beneath it
                nxt = os.open(name, DIR_PATH, dir_fd=fd)
                os.close(fd)
                fd = nxt
                if i == len(parts) - 1:
                    changed += _give_tree(fd, uid, gid)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
            log.info("not handing %s to uid %d: %s (the workspace changed under the agent)", path, uid, exc)
        finally:
            os.close(fd)
    return changed


def _give_tree(dir_fd: int, uid: int, gid: int) -> int:
    """Everything beneath the directory open as ``dir_fd`` to ``uid``:``gid``, following no symlink."""
    changed = 0
    for _dir, dirs, files, fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in (*dirs, *files):
            try:
                os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                changed += 1
            except FileNotFoundError:
                pass
    return changed


class LocalCacheServicer(local_cache_pb2_grpc.LocalCacheServicer):
    """``LocalCache`` on the agent's unix socket (see the module's docstring)."""

    def __init__(
        self,
        leases: Leases,
        cache: BuildCache,
        executor: Executor,
        workspace_root: str,
        report: Callable[[agent_pb2.LeaseReport], None],
        metrics: AgentMetrics,
    ) -> None:
        self._leases = leases
        self._cache = cache
        self._executor = executor
        self._root = workspace_root
        self._report = report
        self._metrics = metrics

    async def Restore(
        self, request: local_cache_pb2.LocalCacheRequest, context
    ) -> local_cache_pb2.LocalRestoreResponse:
        try:
            lease = self._leases.check(request.lease_id, request.lease_secret)
            cache = lease.spec.cache
            if not cache.key and not cache.restore_keys:
                raise Refused(
                    grpc.StatusCode.FAILED_PRECONDITION, "the lease has no cache key or restore key"
                )
            async with lease.busy:
                fd = await self._in_thread(open_workspace, self._root, request.workspace)
                try:
                    result, notes = await self._restore(lease, fd, request.workspace)
                finally:
                    os.close(fd)
        except Refused as exc:
            await context.abort(exc.code, str(exc))
        except (OSError, CacheError) as exc:
            log.exception("lease %s: restore failed", request.lease_id)
            await context.abort(grpc.StatusCode.INTERNAL, f"the agent failed: {exc}")
        figures = (
            restore_figures(result)
            if result is not None
            else common_pb2.CacheFigures(warmth=common_pb2.WARMTH_COLD)
        )
        seconds = result.seconds if result is not None else 0.0
        self._report(
            agent_pb2.LeaseReport(
                lease_id=lease.lease_id,
                restored=True,
                cache=figures,
                timings=common_pb2.Timings(restore_s=seconds),
            )
        )
        return local_cache_pb2.LocalRestoreResponse(
            cache=figures, seconds=seconds, cache_hit=cache_hit(cache, result), notes=notes
        )

    async def _restore(self, lease: Lease, fd: int, workspace: str) -> tuple[RestoreResult | None, list[str]]:
        """Restore the lease's entry into the workspace open as ``fd``; (result, notes). A failed restore is
        not an error for the runner, as for a build: it starts without the cache, and the notes say why."""
        cache = lease.spec.cache
        try:
            result = await self._in_thread(restore_into, self._cache, cache, pinned(fd))
        except CacheError as exc:
            log.warning("lease %s: cache restore into %s failed: %s", lease.lease_id, workspace, exc)
            notes = [f"cache entry {s.key} skipped: {s.reason}" for s in exc.skipped if s.reason != str(exc)]
            lease.restored, lease.restored_at = None, time.monotonic()
            return None, [*notes, f"cache restore failed, go on without it: {exc}"]
        try:
            await self._in_thread(give_to_owner, fd, list(cache.paths))
        except PermissionError as exc:  # an agent that is not root: the files stay its own
            log.warning(
                "lease %s: cannot give the restored files to %s's owner: %s", lease.lease_id, workspace, exc
            )
        lease.restored, lease.restored_at = result, time.monotonic()
        self._metrics.restore_seconds.labels(result.warmth).observe(result.seconds)
        self._metrics.restore_bytes.inc(result.bytes_fetched)
        log.info(
            "lease %s: restored %s into %s (%s, %.2f s)",
            lease.lease_id,
            result.restored_key or "nothing",
            workspace,
            result.warmth,
            result.seconds,
        )
        return result, [f"cache entry {s.key} skipped: {s.reason}" for s in result.skipped]

    async def Save(
        self, request: local_cache_pb2.LocalCacheRequest, context
    ) -> local_cache_pb2.LocalSaveResponse:
        try:
            lease = self._leases.check(request.lease_id, request.lease_secret)
            spec = lease.spec
            if not spec.cache.key:
                raise Refused(grpc.StatusCode.FAILED_PRECONDITION, "the lease has no cache key to save under")
            async with lease.busy:
                fd = await self._in_thread(open_workspace, self._root, request.workspace)
                try:
                    response = await self._save(lease, fd, request.workspace)
                finally:
                    os.close(fd)
        except Refused as exc:
            await context.abort(exc.code, str(exc))
        except OSError as exc:
            log.exception("lease %s: save failed", request.lease_id)
            await context.abort(grpc.StatusCode.INTERNAL, f"the agent failed: {exc}")
        return response

    async def _save(self, lease: Lease, fd: int, workspace: str) -> local_cache_pb2.LocalSaveResponse:
        spec = lease.spec
        run_s = time.monotonic() - lease.restored_at if lease.restored_at else 0.0
        report = agent_pb2.LeaseReport(
            lease_id=lease.lease_id, saved=True, timings=common_pb2.Timings(run_s=run_s)
        )
        if matched_exactly(spec.cache, lease.restored):
            assert lease.restored is not None
            self._report(report)
            return local_cache_pb2.LocalSaveResponse(
                key=lease.restored.restored_key or "", message="cache key matched exactly; not saving"
            )
        try:
            result = await self._in_thread(
                lambda: save_from(
                    self._cache, spec, pinned(fd), principal=lease.principal, build_id=lease.lease_id
                )
            )
        except CacheError as exc:
            log.warning("lease %s: cache save from %s failed: %s", lease.lease_id, workspace, exc)
            raise Refused(grpc.StatusCode.FAILED_PRECONDITION, f"cache save failed: {exc}") from None
        self._metrics.save_seconds.observe(result.seconds)
        self._metrics.uploaded_bytes.inc(result.bytes_uploaded)
        report.cache.saved = result.saved
        report.cache.bytes_uploaded = result.bytes_uploaded
        report.timings.save_s = result.seconds
        self._report(report)
        log.info(
            "lease %s: saved %s from %s (new entry: %s)", lease.lease_id, result.key, workspace, result.saved
        )
        return local_cache_pb2.LocalSaveResponse(
            key=result.key,
            saved=result.saved,
            bytes_uploaded=result.bytes_uploaded,
            seconds=result.seconds,
            message="" if result.saved else "the tree is unchanged: nothing new to save",
        )

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _served_by_someone(path: str) -> bool:
    """Whether a live process accepts connections on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def local_server(path: str, servicer: LocalCacheServicer) -> grpc.aio.Server:
    """A gRPC server of ``servicer`` on the unix socket ``path`` (made mode 0666 once started, see
    :func:`open_socket`); ListenError when another process serves it already, or it cannot be made."""
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ListenError(f"cannot serve the local cache socket at {path}: something else is there")
        if _served_by_someone(path):
            raise ListenError(
                f"cannot serve the local cache socket at {path}: another agent serves it (cache.local_socket)"
            )
        os.unlink(path)  # a socket a killed agent left
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ListenError(
            f"cannot make the directory of the local cache socket {path}: {exc.strerror}"
        ) from None
    server = grpc.aio.server(options=GRPC_SERVER_OPTIONS)
    local_cache_pb2_grpc.add_LocalCacheServicer_to_server(servicer, server)
    add_port(server, f"unix:{path}")
    return server


def open_socket(path: str) -> None:
    """Let any local user connect (mode 0666): runners of other users are authorized by the lease's secret."""
    os.chmod(path, 0o666)
