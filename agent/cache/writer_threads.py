"""Running a restore's tasks on a pool of threads (the compiled writer, and the Python writer's fallback).

With the compiled writer a task's per-file work runs with the GIL released, so the threads really run on
every core; with the Python writer they serialise on the GIL between syscalls (slower, same results).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from stoker.agent.cache import manifest as mf
from stoker.agent.cache.api import CacheError
from stoker.agent.cache.safe_open import Root
from stoker.agent.cache.write_tasks import (
    FetchFn,
    FrameLocator,
    ProgressCounter,
    StopFn,
    Stopped,
    Task,
    dependencies,
    never,
    run_task,
)
from stoker.agent.cache.writers import Writer


def run_threaded(
    manifest: mf.Manifest,
    tasks: Sequence[Task],
    root: Root | None,
    locate: FrameLocator,
    where: str,
    counter: ProgressCounter,
    writer: Writer,
    workers: int,
    fetch: FetchFn | None,
    missing: set[int],
    stop: StopFn = never,
) -> None:
    """Run ``tasks`` on ``workers`` threads, each task as soon as its frames are there."""
    if workers == 1:  # no thread to start (this may run in a forked child of a threaded process)
        if fetch is not None:
            fetch(lambda i: None)
        for task in tasks:
            if stop():
                raise Stopped(f"{where}: stopped")
            counter.add(*run_task(manifest, task, root, locate, where, counter, writer))
        return
    waits, waiting = dependencies(tasks, missing)
    failed: list[BaseException] = []

    def run(task: Task) -> None:
        if failed:
            return
        if stop():
            failed.append(Stopped(f"{where}: stopped"))
            return
        try:
            counter.add(*run_task(manifest, task, root, locate, where, counter, writer))
        except BaseException as exc:
            failed.append(exc)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stoker-hydrate") as pool:
        try:
            for n, task in enumerate(tasks):
                if not waits[n]:
                    pool.submit(run, task)
            if fetch is not None:
                lock = threading.Lock()

                def on_frame(i: int) -> None:
                    with lock:
                        for n in waiting.pop(i, ()):
                            waits[n] -= 1
                            if not waits[n]:
                                pool.submit(run, tasks[n])

                fetch(on_frame)
            if waiting:
                raise CacheError(f"{where}: frames {sorted(waiting)[:5]} were never fetched")
        except BaseException as exc:
            failed.append(exc)  # the queued tasks return at once
            raise
    if failed:
        raise failed[0]
