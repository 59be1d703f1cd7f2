"""The one table that maps domain errors to gRPC status codes, and the wrappers that apply it."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable

import grpc

from stoker.coordinator.core import errors

log = logging.getLogger(__name__)

STATUS_FOR = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_for(err: Exception) -> grpc.StatusCode:
    for cls in type(err).__mro__:
        if cls in STATUS_FOR:
            return STATUS_FOR[cls]
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, errors.DomainError):
        code = status_for(exc)
        log.info("%s refused: %s %s", method, code.name, exc)
        await context.abort(code, str(exc))
    log.exception("%s failed", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}")


def unary(fn: Callable) -> Callable:
    """Wrap a unary handler: domain errors leave as their status, anything else as INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, fn.__name__, exc)

    return wrapper


def streaming(fn: Callable[..., AsyncIterator]) -> Callable:
    """The same for streaming handlers (server or bidirectional) written as async generators."""

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        items = fn(self, request, context)
        try:
            async for item in items:
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, fn.__name__, exc)
        finally:
            await items.aclose()  # the handler's own cleanup runs now, not when the generator is collected

    return wrapper
