"""Runs builds on the node: fresh workspace, cache restore, the command in its own process group,
streamed output, timeout and cancel, cache save, and one ``finished`` event at the end.

Every event goes out through ``emit(build_id, attempt, event)``; the session delivers it to the
coordinator (and keeps it while the coordinator is away).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from stoker.agent.cache.api import (
    BuildCache,
    CacheError,
    EntryWriter,
    Progress,
    ProgressFn,
    RestoreResult,
    SaveResult,
)
from stoker.agent.config import BuildSettings
from stoker.agent.executors.base import BuildExecutor, BuildJob, EndReason, Limits, Outcome
from stoker.agent.executors.factory import default_limits
from stoker.agent.executors.images import Image
from stoker.agent.executors.process import ProcessExecutor
from stoker.common import scopes
from stoker.common.logs import log_context
from stoker.v1 import agent_pb2, build_pb2, common_pb2

log = logging.getLogger(__name__)

Emit = Callable[[str, int, build_pb2.BuildEvent], None]

_WARMTH = {
    "warm": common_pb2.WARMTH_WARM,
    "partial": common_pb2.WARMTH_PARTIAL,
    "cold": common_pb2.WARMTH_COLD,
}
_PROGRESS_EVERY_S = 0.5


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.builds = Counter(
            "stoker_agent_builds_total", "Builds finished on this node.", ["state"], registry=registry
        )
        self.running = Gauge("stoker_agent_builds_running", "Builds running now.", registry=registry)
        self.restore_seconds = Histogram(
            "stoker_agent_cache_restore_seconds", "Cache restore time.", ["warmth"], registry=registry
        )
        self.restore_bytes = Counter(
            "stoker_agent_cache_fetched_bytes_total", "Bytes fetched from the blob store.", registry=registry
        )
        self.restore_progress = Gauge(
            "stoker_agent_cache_restore_progress_bytes",
            "Bytes done of the restore in progress.",
            registry=registry,
        )
        self.save_seconds = Histogram(
            "stoker_agent_cache_save_seconds", "Cache save time.", registry=registry
        )
        self.uploaded_bytes = Counter(
            "stoker_agent_cache_uploaded_bytes_total", "Bytes uploaded to the blob store.", registry=registry
        )
        self.connected = Gauge(
            "stoker_agent_connected", "1 while the coordinator stream is open.", registry=registry
        )
        self.reconnects = Counter(
            "stoker_agent_reconnects_total", "Stream (re)connection attempts.", registry=registry
        )


class CacheCollector:
    """The node's cache store and disk, read when /metrics is scraped (register it on the agent's registry).

    The disk figures are the filesystem holding the cache directory, which the build workspaces share in
    the Kubernetes deployment (one hostPath mount): what fills up when builds write more than the cache
    budget leaves room for."""

    def __init__(self, cache: BuildCache, cache_dir: str | Path, budget_bytes: int) -> None:
        self._cache = cache
        self._dir = cache_dir
        self._budget = budget_bytes

    def collect(self) -> Iterator[Metric]:
        used, _free = self._cache.disk_usage()
        yield GaugeMetricFamily("stoker_agent_cache_used_bytes", "Bytes the cache store holds.", value=used)
        yield GaugeMetricFamily(
            "stoker_agent_cache_budget_bytes", "Bytes the cache store may hold.", value=self._budget
        )
        yield CounterMetricFamily(
            "stoker_agent_cache_evicted_bytes",
            "Bytes of entries evicted from the cache store since the agent started (to make room, or "
            "superseded entries the coordinator asked to drop).",
            value=self._cache.evicted_bytes_total,
        )
        try:
            fs = os.statvfs(self._dir)
        except OSError:
            return  # not there (yet): no disk figures rather than wrong ones
        yield GaugeMetricFamily(
            "stoker_agent_disk_size_bytes",
            "Size of the filesystem holding the cache directory.",
            value=fs.f_blocks * fs.f_frsize,
        )
        yield GaugeMetricFamily(
            "stoker_agent_disk_available_bytes",
            "Bytes of that filesystem that the agent may still write.",
            value=fs.f_bavail * fs.f_frsize,
        )


@dataclass
class _Run:
    build_id: str
    attempt: int
    spec: common_pb2.BuildSpec
    principal: str = ""
    """Who submitted the build (the coordinator's word: its token's name)."""
    task: asyncio.Task | None = None
    stop_reason: str = ""
    stop_state: int = 0
    started: float = field(default_factory=time.monotonic)


class BuildRunner:
    def __init__(
        self,
        settings: BuildSettings,
        slots: int,
        cache: BuildCache,
        executor: Executor,
        emit: Emit,
        metrics: AgentMetrics,
        build_executor: BuildExecutor | None = None,
    ) -> None:
        """``build_executor`` runs each build's command (default: the process executor, unsandboxed)."""
        self._settings = settings
        self._builds = build_executor or ProcessExecutor(
            self._groups_dir(), settings.pass_env, settings.kill_grace_s
        )
        self._limits = default_limits(settings)
        self._slots = slots
        self._cache = cache
        self._executor = executor
        self._emit = emit
        self._metrics = metrics
        self._runs: dict[str, _Run] = {}
        self.draining = False
        self._on_drain: Callable[[], None] = lambda: None

    # -- commands ------------------------------------------------------------------------------
    def start(self, command: agent_pb2.RunBuildCommand) -> None:
        current = self._runs.get(command.build_id)
        if current is not None:
            if current.attempt == command.attempt:
                return  # a repeated command (after a reconnect): already running
            self.cancel(command.build_id, current.attempt, "superseded by a newer attempt")
        run = _Run(command.build_id, command.attempt, command.spec, command.principal)
        self._runs[command.build_id] = run
        run.task = asyncio.create_task(self._run(run), name=f"build-{command.build_id}")
        self._metrics.running.set(len(self._runs))

    def cancel(self, build_id: str, attempt: int, reason: str) -> None:
        run = self._runs.get(build_id)
        if run is None or (attempt and run.attempt != attempt):
            return
        log.info("cancelling build %s attempt %d: %s", build_id, run.attempt, reason)
        self._stop(run, build_pb2.BUILD_STATE_CANCELLED, reason or "cancelled")

    def _groups_dir(self) -> Path:
        return Path(self._settings.work_dir) / _GROUPS

    def remove_leftover_workspaces(self) -> int:
        """At start, before taking builds: remove the workspaces a crashed agent left (the executor has
        already stopped what its builds left running). Returns how many were removed."""
        work = Path(self._settings.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        removed = 0
        if not self._settings.keep_workspaces:
            for entry in work.iterdir():
                if entry.name != _GROUPS:
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
        return removed

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when draining starts (the session tells the coordinator at once)."""
        self._on_drain = callback

    def running(self) -> list[tuple[str, int]]:
        return [(r.build_id, r.attempt) for r in self._runs.values()]

    def free_slots(self) -> int:
        return 0 if self.draining else max(0, self._slots - len(self._runs))

    def images(self) -> tuple[Image, ...]:
        """The images the build executor holds (for the heartbeat)."""
        return self._builds.images()

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking builds and wait for running ones; False if some were still running at the end."""
        self.draining = True
        self._on_drain()
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        if not tasks:
            return True
        log.info("draining: waiting up to %.0f s for %d running build(s)", timeout_s, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    async def kill_all(self) -> None:
        for run in list(self._runs.values()):
            self._stop(run, build_pb2.BUILD_STATE_CANCELLED, "agent shutting down")
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self._settings.kill_grace_s + 2)

    # -- one build -----------------------------------------------------------------------------
    async def _run(self, run: _Run) -> None:
        with log_context(build=run.build_id, attempt=str(run.attempt)):
            try:
                await self._run_inner(run)
            except Exception as exc:  # the build must always end with a finished event
                log.exception("build failed inside the agent")
                self._finish(
                    run,
                    build_pb2.BUILD_STATE_ERROR,
                    -1,
                    f"agent error: {exc}",
                    common_pb2.Timings(),
                    common_pb2.CacheFigures(),
                )
            finally:
                self._runs.pop(run.build_id, None)
                self._metrics.running.set(len(self._runs))

    async def _run_inner(self, run: _Run) -> None:
        spec = run.spec
        timings = common_pb2.Timings()
        figures = common_pb2.CacheFigures(warmth=common_pb2.WARMTH_COLD)
        workspace = Path(self._settings.work_dir) / f"{run.build_id}-{run.attempt}"
        await self._in_thread(_fresh_workspace, workspace, dict(spec.files))
        try:
            # Refused limits fail the build before any work; then the image is pulled while the cache is
            # restored (the two wait on different things: the time to ready is the longer, not the sum).
            limits, problem = limits_for(spec.limits, self._limits)
            if problem:
                self._note(run, f"stoker: {problem}")
                self._finish(run, build_pb2.BUILD_STATE_FAILED, -1, problem, timings, figures)
                return
            job = self._job(run, workspace, limits)
            pulling = asyncio.create_task(self._prepare(run, job, timings))
            restored = None
            try:
                if spec.cache.key or spec.cache.restore_keys:
                    t0 = time.monotonic()
                    restored = await self._restore(run, workspace, figures)
                    timings.restore_s = time.monotonic() - t0
            finally:
                not_ready = await pulling
            if run.stop_state:
                if not_ready is None:
                    self._builds.release(job.build_id)  # the image it held for a run that will not come
                self._finish(run, run.stop_state, -1, run.stop_reason, timings, figures)
                return
            t0 = time.monotonic()
            if not_ready is not None:
                state, exit_code, message = self._not_ready(run, not_ready)
            else:
                state, exit_code, message = await self._execute(run, job, restored)
            timings.run_s = time.monotonic() - t0
            if state == build_pb2.BUILD_STATE_SUCCEEDED and spec.cache.key:
                if matched_exactly(spec.cache, restored):
                    self._note(run, "stoker: cache key matched exactly; not saving")
                else:
                    t0 = time.monotonic()
                    message = await self._save(run, workspace, figures) or message
                    timings.save_s = time.monotonic() - t0
            timings.total_s = time.monotonic() - run.started
            self._finish(run, state, exit_code, message, timings, figures)
        finally:
            if not self._settings.keep_workspaces:
                await self._in_thread(shutil.rmtree, workspace, True)

    async def _restore(
        self, run: _Run, workspace: Path, figures: common_pb2.CacheFigures
    ) -> RestoreResult | None:
        cache = run.spec.cache
        keys = _keys(cache)
        self._send(run, build_pb2.BuildEvent(restoring=build_pb2.Restoring(key=keys.key)))
        progress = self._progress_reporter(run, "restoring", keys.key)
        try:
            result = await self._in_thread(restore_into, self._cache, cache, workspace, progress)
        except CacheError as exc:
            log.warning("cache restore failed: %s", exc)
            for bad in (s for s in exc.skipped if s.reason != str(exc)):
                self._note(run, f"stoker: cache entry {bad.key} skipped: {bad.reason}")
            self._note(run, f"stoker: cache restore failed, building without it: {exc}")
            self._send(run, build_pb2.BuildEvent(restored=build_pb2.Restored(cache=figures)))
            return None
        for bad in result.skipped:
            self._note(run, f"stoker: cache entry {bad.key} skipped: {bad.reason}")
        figures.MergeFrom(restore_figures(result))
        self._metrics.restore_seconds.labels(result.warmth).observe(result.seconds)
        self._metrics.restore_bytes.inc(result.bytes_fetched)
        self._send(
            run, build_pb2.BuildEvent(restored=build_pb2.Restored(cache=figures, seconds=result.seconds))
        )
        return result

    async def _save(self, run: _Run, workspace: Path, figures: common_pb2.CacheFigures) -> str:
        key = _keys(run.spec.cache).key  # only ever into the build's own scope
        self._send(run, build_pb2.BuildEvent(saving=build_pb2.Saving(key=key)))
        progress = self._progress_reporter(run, "saving", key)
        try:
            result: SaveResult = await self._in_thread(
                functools.partial(
                    save_from,
                    self._cache,
                    run.spec,
                    workspace,
                    progress,
                    principal=run.principal,
                    build_id=run.build_id,
                )
            )
        except CacheError as exc:
            log.warning("cache save failed: %s", exc)
            self._note(run, f"stoker: cache save failed: {exc}")
            return f"succeeded; cache save failed: {exc}"
        figures.saved = result.saved
        figures.bytes_uploaded = result.bytes_uploaded
        self._metrics.save_seconds.observe(result.seconds)
        self._metrics.uploaded_bytes.inc(result.bytes_uploaded)
        return ""

    def _job(self, run: _Run, workspace: Path, limits: Limits) -> BuildJob:
        spec = run.spec
        env = dict(spec.env)
        env["STOKER_BUILD_ID"] = run.build_id
        return BuildJob(
            build_id=f"{run.build_id}-{run.attempt}",
            argv=tuple(spec.command),
            workspace=workspace,
            env=env,
            image=spec.image or self._settings.default_image,
            limits=limits,
            timeout_s=spec.timeout_s or self._settings.default_timeout_s,
        )

    async def _prepare(self, run: _Run, job: BuildJob, timings: common_pb2.Timings) -> Outcome | None:
        """Get the build's image (its own phase: ``timings.pull_s``); the outcome that ends the build when
        it cannot be had, else None."""
        t0 = time.monotonic()
        try:
            return await self._builds.prepare(job, lambda text, _stderr: self._note(run, text))
        finally:
            timings.pull_s = time.monotonic() - t0 if self._builds.name == "podman" else 0.0

    def _not_ready(self, run: _Run, outcome: Outcome) -> tuple[int, int, str]:
        self._note(run, f"stoker: {outcome.message}")
        return _state_of(outcome, run), outcome.exit_code, outcome.message

    async def _execute(
        self, run: _Run, job: BuildJob, restored: RestoreResult | None
    ) -> tuple[int, int, str]:
        """Run the build's command (its image is ready)."""
        env = dict(job.env)
        env.update(
            cache_hit_env(_keys(run.spec.cache).exact, restored)
        )  # after the spec's: a build cannot claim a hit
        job = replace(job, env=env)

        def output(text: str, stderr: bool) -> None:
            self._log(run, text, stderr=stderr)

        def started(pid: int) -> None:
            self._send(run, build_pb2.BuildEvent(started=build_pb2.Started(pid=pid)))

        outcome = await self._builds.run(job, output, started)
        if outcome.reason is EndReason.NOT_STARTED:
            self._note(run, f"stoker: {outcome.message}")
        return _state_of(outcome, run), outcome.exit_code, outcome.message

    def _stop(self, run: _Run, state: int, reason: str) -> None:
        """Ask the executor to stop the build (grace period, then kill)."""
        if not run.stop_state:
            run.stop_state, run.stop_reason = state, reason
        self._builds.cancel(f"{run.build_id}-{run.attempt}", reason)

    # -- events --------------------------------------------------------------------------------
    def _finish(
        self,
        run: _Run,
        state: int,
        exit_code: int,
        message: str,
        timings: common_pb2.Timings,
        figures: common_pb2.CacheFigures,
    ) -> None:
        if not timings.total_s:
            timings.total_s = time.monotonic() - run.started
        self._metrics.builds.labels(
            build_pb2.BuildState.Name(state).removeprefix("BUILD_STATE_").lower()
        ).inc()
        log.info("build finished: %s, exit %d (%s)", build_pb2.BuildState.Name(state), exit_code, message)
        self._send(
            run,
            build_pb2.BuildEvent(
                finished=build_pb2.Finished(
                    state=build_pb2.BuildState.Name(state),
                    exit_code=exit_code,
                    message=message,
                    timings=timings,
                    cache=figures,
                )
            ),
        )

    def _log(self, run: _Run, text: str, stderr: bool = False) -> None:
        """A line of the build's own output."""
        stream = build_pb2.LogLine.STREAM_STDERR if stderr else build_pb2.LogLine.STREAM_STDOUT
        self._send(run, build_pb2.BuildEvent(log=build_pb2.LogLine(stream=stream, text=text)))

    def _note(self, run: _Run, text: str) -> None:
        """A line of the agent's own, on its own stream (never mixed into the build's output)."""
        text = text if text.startswith("stoker: ") else f"stoker: {text}"
        self._send(
            run,
            build_pb2.BuildEvent(log=build_pb2.LogLine(stream=build_pb2.LogLine.STREAM_STOKER, text=text)),
        )

    def _send(self, run: _Run, event: build_pb2.BuildEvent) -> None:
        self._emit(run.build_id, run.attempt, event)

    def _progress_reporter(self, run: _Run, phase: str, key: str):
        """A thread-safe progress callback that sends at most one event per interval."""
        loop = asyncio.get_running_loop()
        last = [0.0]

        def report(p: Progress) -> None:
            now = time.monotonic()
            if now - last[0] < _PROGRESS_EVERY_S and p.bytes_done < p.bytes_total:
                return
            last[0] = now
            pb = build_pb2.CacheProgress(
                bytes_done=p.bytes_done,
                bytes_total=p.bytes_total,
                files_done=p.files_done,
                files_total=p.files_total,
                bytes_per_s=p.bytes_per_s,
            )
            event = (
                build_pb2.BuildEvent(restoring=build_pb2.Restoring(key=key, progress=pb))
                if phase == "restoring"
                else build_pb2.BuildEvent(saving=build_pb2.Saving(key=key, progress=pb))
            )
            loop.call_soon_threadsafe(self._send, run, event)
            if phase == "restoring":
                self._metrics.restore_progress.set(p.bytes_done)

        return report

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


def _keys(cache: common_pb2.CacheSpec) -> scopes.PhysicalKeys:
    """The build's cache keys as stored: in the scope the coordinator gave it (common/scopes.py)."""
    shared = [(s.scope, s.prefix) for s in cache.shared]
    return scopes.physical(cache.key, cache.restore_keys, cache.scope, cache.read_scopes, shared)


# The restore and save of a build's cache, shared by the builds the agent runs and by the runners that ask
# it under a placement lease (agent/local_cache.py): the same keys in the same scopes, the same writer.
def restore_into(
    cache: BuildCache, spec: common_pb2.CacheSpec, workspace: Path, progress: ProgressFn | None = None
) -> RestoreResult:
    """Restore ``spec``'s entry into ``workspace``: its key, else its key in each scope it may read, else the
    newest entry under its restore keys (in those scopes). Blocks."""
    keys = _keys(spec)
    return cache.restore(
        keys.key, list(keys.prefixes), workspace, list(spec.paths), progress, also_exact=keys.exact[1:]
    )


def save_from(
    cache: BuildCache,
    spec: common_pb2.BuildSpec,
    workspace: Path,
    progress: ProgressFn | None = None,
    *,
    principal: str,
    build_id: str,
) -> SaveResult:
    """Save ``spec``'s cache paths of ``workspace`` under its key, only ever in its own scope, recording who
    wrote it as the coordinator said (the node is the cache's own to add). Blocks."""
    key = _keys(spec.cache).key
    writer = EntryWriter(principal=principal, tenant=spec.tenant, trust=spec.trust, build_id=build_id)
    return cache.save(key, workspace, list(spec.cache.paths), progress, writer=writer)


def cache_hit(spec: common_pb2.CacheSpec, restored: RestoreResult | None) -> str:
    """``STOKER_CACHE_HIT`` for a restore of ``spec`` (see :func:`cache_hit_env`)."""
    return cache_hit_env(_keys(spec).exact, restored)["STOKER_CACHE_HIT"]


def matched_exactly(spec: common_pb2.CacheSpec, restored: RestoreResult | None) -> bool:
    """Whether the restore brought the build's own key (in its own scope): a save would change nothing."""
    return restored is not None and restored.restored_key == _keys(spec).key


def restore_figures(result: RestoreResult) -> common_pb2.CacheFigures:
    """A restore's figures as the wire reports them."""
    return common_pb2.CacheFigures(
        warmth=_WARMTH[result.warmth],
        restored_key=result.restored_key or "",
        bytes_fetched=result.bytes_fetched,
        bytes_restored=result.bytes_restored,
        files_restored=result.files_restored,
    )


def cache_hit_env(exact: Sequence[str], restored: RestoreResult | None) -> dict[str, str]:
    """What the restore found, for the build to act on (as actions/cache's ``cache-hit`` and
    ``cache-matched-key`` outputs): ``STOKER_CACHE_HIT`` is ``exact`` when the entry restored is the build's
    own key (in its scope, or in a scope it reads: ``exact``), ``partial`` when it came from a restore-key
    prefix, ``none`` when nothing was restored (no
    cache asked for, no entry matched, or the restore failed); ``STOKER_CACHE_RESTORED_KEY`` names the entry
    (empty for ``none``). Whether the node held it (warm) or fetched it (cold) does not change the answer:
    the files in the workspace are the same. Set after the spec's own env, so a build cannot claim a hit."""
    restored_key = restored.restored_key if restored is not None else None
    if not restored_key:
        hit = "none"
    elif restored_key in exact:
        hit = "exact"
    else:
        hit = "partial"
    return {"STOKER_CACHE_HIT": hit, "STOKER_CACHE_RESTORED_KEY": restored_key or ""}


def _fresh_workspace(workspace: Path, files: dict[str, bytes]) -> None:
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True)
    root = os.path.realpath(workspace)
    for name, data in files.items():
        target = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) != root:
            raise ValueError(f"input file {name!r} escapes the workspace")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(data)


_GROUPS = ".process-groups"


def _state_of(outcome: Outcome, run: _Run) -> int:
    if run.stop_state and outcome.reason is EndReason.CANCELLED:
        return run.stop_state
    if outcome.succeeded:
        return build_pb2.BUILD_STATE_SUCCEEDED
    if outcome.reason is EndReason.TIMEOUT:
        return build_pb2.BUILD_STATE_TIMED_OUT
    if outcome.reason in (EndReason.NOT_STARTED, EndReason.IMAGE, EndReason.LOST):
        return build_pb2.BUILD_STATE_ERROR
    return build_pb2.BUILD_STATE_FAILED


def limits_for(asked: common_pb2.BuildLimits, node: Limits) -> tuple[Limits, str]:
    """The limits a build runs with: what its spec asks for, each unset one the node's own; and what is wrong
    ('' when nothing) when it asks for more than the node allows (the node's limits are its maxima too)."""
    chosen = {}
    for name in ("cpus", "memory_bytes", "pids", "output_bytes", "disk_bytes"):
        value, most = getattr(asked, name), getattr(node, name)
        if most and value > most:
            return node, f"spec.limits.{name}: {value:g} exceeds this node's maximum of {most:g}"
        chosen[name] = value or most
    network = asked.network or node.network
    return Limits(network=network, **chosen), ""
