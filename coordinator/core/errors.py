"""The coordinator's domain errors. The RPC layer maps each to one gRPC status (``status.py``)."""


class DomainError(Exception):
    """Base of every error the coordinator reports to a caller."""


class NotFound(DomainError):
    pass


class InvalidArgument(DomainError):
    """A request field is malformed; the message names the field."""


class AlreadyExists(DomainError):
    pass


class FailedPrecondition(DomainError):
    """The request is well formed but cannot be done in the current state."""


class Aborted(DomainError):
    """Lost a race (a stale session, a superseded attempt)."""


class ResourceExhausted(DomainError):
    pass


class Unavailable(DomainError):
    """A backend, or the fleet itself, is not there yet."""


class DeadlineExceeded(DomainError):
    """The caller took longer than the coordinator allows for a step (a stream's first message)."""


class Unauthenticated(DomainError):
    """The caller presented no credentials, or ones the coordinator does not accept."""


class PermissionDenied(DomainError):
    """The caller is known but its role may not do this."""
