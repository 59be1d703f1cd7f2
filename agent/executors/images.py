"""The images a podman executor holds, as cache: what it reports to the coordinator and what it evicts.

Images are cache like the build cache's entries: the agent reports each one's digest, names, size and last
use in its heartbeat (the scheduler counts a missing image's pull in a node's time to ready), and keeps
their total under ``podman.image_budget_bytes`` by removing the least recently used first. An image a
build holds (from the end of its pull to the end of its run, ``acquire``/``release``) is never removed.

The last use of each image is the agent's own record (podman keeps none), in a small JSON file beside
podman's storage, so a restarted agent still evicts in the right order. An image with no recorded use
(pulled by hand, or before the agent recorded uses) counts as the oldest.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PodmanCommand = Callable[..., Awaitable[tuple[int, str, str]]]
"""Runs ``podman <args>`` with the executor's storage options: ``(*args, timeout_s=…)`` → (code, out, err)."""


@dataclass(frozen=True)
class Image:
    digest: str
    """The image's manifest digest (``sha256:…``), the same on every node; its id when podman has none."""
    id: str
    references: tuple[str, ...]
    """The names it is known by: ``repository:tag`` and ``repository@digest``."""
    bytes: int
    last_used: float
    """Wall-clock time a build last ran in it (0: none recorded)."""


class ImageStore:
    def __init__(self, podman: PodmanCommand, uses_file: Path, budget_bytes: int) -> None:
        self._podman = podman
        self._uses_file = uses_file
        self._budget = budget_bytes
        self._held_by: dict[str, str] = {}
        """build id → id of the image it runs in, from its pull to the end of its run."""
        self._uses: dict[str, float] = _read_uses(uses_file)
        """image id → wall-clock time of its last use."""
        self.held: tuple[Image, ...] = ()
        """The images as of the last ``refresh``: what the heartbeat reports."""
        self._enforcing: asyncio.Task[list[Image]] | None = None

    async def refresh(self) -> tuple[Image, ...]:
        """List the images in the executor's storage (keeps the last list when podman fails)."""
        code, out, err = await self._podman("images", "--format", "json", timeout_s=60)
        if code != 0:
            log.warning("cannot list the build images: %s", err.strip().splitlines()[-1:] or f"exit {code}")
            return self.held
        self.held = tuple(self._image(doc) for doc in json.loads(out or "[]"))
        return self.held

    def _image(self, doc: dict) -> Image:
        image_id = str(doc.get("Id", ""))
        names = [str(n) for n in doc.get("Names") or ()]
        names += [str(n) for n in doc.get("RepoDigests") or () if n not in names]
        return Image(
            digest=str(doc.get("Digest") or image_id),
            id=image_id,
            references=tuple(names),
            bytes=int(doc.get("Size") or 0),
            last_used=self._uses.get(image_id, 0.0),
        )

    async def acquire(self, build_id: str, reference: str) -> None:
        """Build ``build_id`` is about to run in ``reference`` (pulled): record the use, and keep the image
        until ``release``."""
        code, out, _ = await self._podman("image", "inspect", "--format", "{{.Id}}", reference, timeout_s=60)
        if code != 0 or not out.strip():
            return
        image_id = out.strip()
        self._held_by[build_id] = image_id
        self._uses[image_id] = time.time()
        self._write_uses()

    def release(self, build_id: str) -> None:
        self._held_by.pop(build_id, None)

    def enforce_budget_soon(self) -> None:
        """When the images last listed are over the budget, enforce it in the background (after a build: its
        result need not wait for it); an enforcement already under way covers this one. Images only come
        with pulls, and each pull lists them again, so the last list is current enough to decide."""
        if self._budget <= 0 or sum(i.bytes for i in self.held) <= self._budget:
            return
        if self._enforcing is None or self._enforcing.done():
            self._enforcing = asyncio.get_running_loop().create_task(self.enforce_budget())

    async def enforce_budget(self) -> list[Image]:
        """Remove least recently used images until their total fits the budget (0: no budget); returns
        the images removed."""
        held = await self.refresh()
        total = sum(i.bytes for i in held)
        if self._budget <= 0 or total <= self._budget:
            return []
        removed: list[Image] = []
        in_use = set(self._held_by.values())
        for image in sorted(held, key=lambda i: i.last_used):
            if total <= self._budget:
                break
            if image.id in in_use:
                continue
            code, _, err = await self._podman("rmi", image.id, timeout_s=120)
            if code != 0:  # in use by a running build's container, or gone already
                log.info("image %s stays: %s", image.id[:12], err.strip().splitlines()[-1:])
                continue
            total -= image.bytes
            removed.append(image)
            self._uses.pop(image.id, None)
            log.info(
                "evicted image %s (%s, %d bytes) over the image budget",
                image.id[:12],
                image.references,
                image.bytes,
            )
        if removed:
            self._write_uses()
            await self.refresh()
        return removed

    def _write_uses(self) -> None:
        # Uses of images no longer held are dropped, unless recent: ``held`` may predate a pull just made.
        held = {i.id for i in self.held}
        hour_ago = time.time() - 3600
        uses = {k: v for k, v in self._uses.items() if k in held or v > hour_ago}
        tmp = self._uses_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(uses))
        os.replace(tmp, self._uses_file)


def _read_uses(path: Path) -> dict[str, float]:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s (%s): image last uses start afresh", path, exc)
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): float(v) for k, v in doc.items() if isinstance(v, (int, float))}
