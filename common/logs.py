"""Logging set-up shared by the agent and the coordinator.

Readable lines at a terminal, JSON lines when asked (``format="json"``, the default in a cluster).
Context such as the node, the build id or the rollout id travels in a :class:`contextvars.ContextVar`
and is added to every record, instead of being pasted into each message.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

# Never mutated: each change sets a new dict, so the shared default is safe.
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "stoker_log_context",
    default={},  # noqa: B039
)


@contextlib.contextmanager
def log_context(**fields: str) -> Iterator[None]:
    """Add ``fields`` (for example ``build="b-12"``) to every record logged inside the block."""
    token = _context.set({**_context.get(), **{k: str(v) for k, v in fields.items()}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: str) -> None:
    """Add ``fields`` to the context of the current task for the rest of its life."""
    _context.set({**_context.get(), **{k: str(v) for k, v in fields.items()}})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.stoker_context = _context.get()
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ctx = getattr(record, "stoker_context", {})
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in ctx.items())
        line = f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if extra:
            line += f"  [{extra}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **getattr(record, "stoker_context", {}),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", component: str = "") -> None:
    """Configure the root logger once for a process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "kubernetes", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if component:
        bind(component=component)
