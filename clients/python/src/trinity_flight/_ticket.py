"""Tickets: the small strings pipeline steps pass downstream instead of data."""

from __future__ import annotations

import re
from typing import Optional

from .errors import InvalidRequest

__all__ = ["Ticket"]

_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_TICKET_RE = re.compile(
    r"^ads1:(?P<namespace>" + _LABEL + r")/(?P<name>" + _LABEL + r")"
    r"@(?P<version>[0-9]{1,19})"
    r"(?:#(?P<part>[0-9]{1,10}))?"
    r"(?:~(?P<signature>[A-Za-z0-9_-]+))?$"
)
MAX_TICKET_LEN = 512


class Ticket(str):
    """A ticket naming one immutable version of a dataset.

    A ``Ticket`` *is* a ``str`` -- the exact wire form the Flight node issued -- so it can be
    written to a file, put in JSON, a queue message, an environment variable or a CLI
    argument, and turned back into a ``Ticket`` with ``Ticket(text)``::

        ads1:<namespace>/<name>@<version>[#<part>][~<signature>]

    ``#<part>`` selects one Parquet part (the node issues such tickets for parallel
    download); ``~<signature>`` is present when the node signs tickets. Surrounding
    whitespace (a trailing newline from a file) is stripped. Anything else raises
    :class:`~trinity_flight.InvalidRequest`.

    Attributes:
        namespace: the dataset's namespace.
        name: the dataset's name.
        version: the pinned version (``>= 1``).
        part: the part selector, or ``None`` for the whole version.
        signature: the node's signature, or ``None`` for unsigned tickets.
    """

    namespace: str
    name: str
    version: int
    part: Optional[int]
    signature: Optional[str]

    def __new__(cls, value: "str | bytes") -> "Ticket":
        if isinstance(value, Ticket):
            return value
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidRequest("ticket is not UTF-8 text") from None
        if not isinstance(value, str):
            raise TypeError(f"a ticket is text, not {type(value).__name__}")
        text = value.strip()
        if len(text) > MAX_TICKET_LEN:
            raise InvalidRequest(
                f"ticket is {len(text)} characters; tickets are at most {MAX_TICKET_LEN}"
            )
        m = _TICKET_RE.match(text)
        version = int(m.group("version")) if m else 0
        if m is None or version < 1:
            raise InvalidRequest(
                f"malformed ticket {text[:80]!r}: expected ads1:<namespace>/<name>@<version>"
            )
        self = super().__new__(cls, text)
        self.namespace = m.group("namespace")
        self.name = m.group("name")
        self.version = version
        part = m.group("part")
        self.part = int(part) if part is not None else None
        self.signature = m.group("signature")
        return self

    @classmethod
    def build(cls, namespace: str, name: str, version: int, part: Optional[int] = None) -> "Ticket":
        """An unsigned ticket from its parts (for nodes that do not sign tickets)."""
        text = f"ads1:{namespace}/{name}@{int(version)}"
        if part is not None:
            text += f"#{int(part)}"
        return cls(text)

    def __getnewargs__(self) -> "tuple[str]":
        return (str(self),)

    def __repr__(self) -> str:
        return f"Ticket({str.__repr__(self)})"

    def to_bytes(self) -> bytes:
        """The wire form as bytes (what ``pyarrow.flight.Ticket`` carries)."""
        return self.encode("utf-8")
