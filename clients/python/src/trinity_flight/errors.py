"""Exceptions raised by the client.

Every error the Flight node reports becomes a :class:`FlightError` subclass that keeps the
node's own message (``str(err)`` and ``err.message``) and the gRPC status name
(``err.code``, e.g. ``"NOT_FOUND"``). The original pyarrow exception is chained as
``__cause__``.

=====================  ===========================================  =====================
exception              gRPC status                                  also a
=====================  ===========================================  =====================
``DatasetNotFound``    ``NOT_FOUND``                                ``LookupError``
``InvalidRequest``     ``INVALID_ARGUMENT`` (bad name, ticket, TTL)  ``ValueError``
``ContractViolation``  ``INVALID_ARGUMENT`` "data contract violation" ``InvalidRequest``
``Unauthorized``       ``UNAUTHENTICATED``, ``PERMISSION_DENIED``   ``PermissionError``
``LimitExceeded``      ``RESOURCE_EXHAUSTED``
``ServerUnavailable``  ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``       ``ConnectionError``
``FlightError``        anything else (``INTERNAL``, ...)
=====================  ===========================================  =====================
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = [
    "FlightError",
    "DatasetNotFound",
    "InvalidRequest",
    "ContractViolation",
    "Unauthorized",
    "LimitExceeded",
    "ServerUnavailable",
]


class FlightError(Exception):
    """Base class of every error raised by ``trinity_flight``.

    Attributes:
        message: the node's message (or the client's, for local errors).
        code: the gRPC status name, e.g. ``"NOT_FOUND"``; ``None`` for local errors.
    """

    default_code: Optional[str] = None

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code

    def __str__(self) -> str:
        return self.message


class DatasetNotFound(FlightError, LookupError):
    """The dataset or the ticket's version does not exist (or has expired)."""

    default_code = "NOT_FOUND"


class InvalidRequest(FlightError, ValueError):
    """The request was malformed: a bad name, ticket, TTL, header or data."""

    default_code = "INVALID_ARGUMENT"


class ContractViolation(InvalidRequest):
    """The upload does not match its data contract; nothing was stored."""


class Unauthorized(FlightError, PermissionError):
    """A missing or unknown token (``code == "UNAUTHENTICATED"``) or a namespace the
    token may not use (``code == "PERMISSION_DENIED"``)."""

    default_code = "UNAUTHENTICATED"


class LimitExceeded(FlightError):
    """A node limit (message size, upload size, batch count) was exceeded."""

    default_code = "RESOURCE_EXHAUSTED"


class ServerUnavailable(FlightError, ConnectionError):
    """The node could not be reached or did not answer in time (retried before raising)."""

    default_code = "UNAVAILABLE"


# pyarrow renders a Flight status as
#   "Flight returned <kind> error, with message: <msg>. gRPC client debug context: ..."
# (or "gRPC returned ..." for some codes); keep only <msg>.
_MESSAGE_RE = re.compile(
    r"^(?:Flight|gRPC) returned (?P<kind>[a-z ]+?) error, with message: (?P<msg>.*?)"
    r"(?:\. gRPC client debug context:.*|\. Client context:.*|\. Detail:.*)?$",
    re.DOTALL,
)

_KIND_TO_CODE = {
    "not found": "NOT_FOUND",
    "invalid argument": "INVALID_ARGUMENT",
    "unauthenticated": "UNAUTHENTICATED",
    "unauthorized": "PERMISSION_DENIED",
    "permission denied": "PERMISSION_DENIED",
    "resource exhausted": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
    "timeout": "DEADLINE_EXCEEDED",
    "timed out": "DEADLINE_EXCEEDED",
    "deadline exceeded": "DEADLINE_EXCEEDED",
    "internal": "INTERNAL",
    "cancelled": "CANCELLED",
    "unimplemented": "UNIMPLEMENTED",
    "aborted": "ABORTED",
    "out of range": "OUT_OF_RANGE",
    "failed precondition": "FAILED_PRECONDITION",
    "precondition failed": "FAILED_PRECONDITION",
    "already exists": "ALREADY_EXISTS",
    "data loss": "DATA_LOSS",
    "unknown": "UNKNOWN",
}

_CODE_TO_CLASS = {
    "NOT_FOUND": DatasetNotFound,
    "INVALID_ARGUMENT": InvalidRequest,
    "OUT_OF_RANGE": InvalidRequest,
    "FAILED_PRECONDITION": InvalidRequest,
    "UNAUTHENTICATED": Unauthorized,
    "PERMISSION_DENIED": Unauthorized,
    "RESOURCE_EXHAUSTED": LimitExceeded,
    "UNAVAILABLE": ServerUnavailable,
    "DEADLINE_EXCEEDED": ServerUnavailable,
}


def _code_from_exception(exc: BaseException, kind: Optional[str]) -> str:
    import pyarrow as pa
    import pyarrow.flight as fl

    # The dedicated Flight classes are unambiguous; check them before the message.
    by_class = [
        (fl.FlightUnauthenticatedError, "UNAUTHENTICATED"),
        (fl.FlightUnauthorizedError, "PERMISSION_DENIED"),
        (fl.FlightUnavailableError, "UNAVAILABLE"),
        (fl.FlightTimedOutError, "DEADLINE_EXCEEDED"),
        (fl.FlightCancelledError, "CANCELLED"),
        (fl.FlightInternalError, "INTERNAL"),
    ]
    for cls, code in by_class:
        if isinstance(exc, cls):
            return code
    if kind is not None and kind in _KIND_TO_CODE:
        return _KIND_TO_CODE[kind]
    if isinstance(exc, pa.ArrowKeyError):
        return "NOT_FOUND"
    if isinstance(exc, pa.ArrowNotImplementedError):
        return "UNIMPLEMENTED"
    if isinstance(exc, pa.ArrowInvalid):
        return "INVALID_ARGUMENT"
    return "UNKNOWN"


def translate(exc: BaseException) -> FlightError:
    """Turns a pyarrow Flight exception into the matching :class:`FlightError`."""
    if isinstance(exc, FlightError):
        return exc
    text = str(exc)
    m = _MESSAGE_RE.match(text)
    kind = m.group("kind") if m else None
    message = m.group("msg") if m else text
    code = _code_from_exception(exc, kind)
    cls = _CODE_TO_CLASS.get(code, FlightError)
    if cls is InvalidRequest and "data contract violation" in message:
        cls = ContractViolation
    return cls(message, code)
