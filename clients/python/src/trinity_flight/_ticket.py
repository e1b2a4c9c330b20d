"""Tickets: the small strings pipeline steps pass downstream instead of data."""

from __future__ import annotations

import re
from typing import List, Optional, Sequence
from urllib.parse import quote, unquote

from .errors import InvalidRequest

__all__ = ["Ticket"]

_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
_TICKET_RE = re.compile(
    r"^ads1:(?P<namespace>" + _LABEL + r")/(?P<name>" + _LABEL + r")"
    r"@(?P<version>[0-9]{1,19})"
    r"(?:#(?P<part>[0-9]{1,10}))?"
    r"(?:\?(?P<selection>[A-Za-z0-9._%,&=-]+))?"
    r"(?:~(?P<signature>[A-Za-z0-9_-]+))?$"
)
MAX_TICKET_LEN = 8192


def _quote_column(name: str) -> str:
    # Every byte but A-Z a-z 0-9 - . _ is %XX (quote would keep "~", which ends the body).
    return quote(name, safe="").replace("~", "%7E")


def selection_text(columns: Optional[Sequence[str]], limit: Optional[int]) -> str:
    """The ``?...`` part of a ticket selecting ``columns`` and the first ``limit`` rows
    (empty when both are ``None``)."""
    parts: List[str] = []
    if columns is not None:
        if isinstance(columns, str):
            raise TypeError("columns is a list of column names, not one string")
        names = [str(c) for c in columns]
        if not names:
            raise InvalidRequest("columns must name at least one column")
        if len(set(names)) != len(names):
            raise InvalidRequest(f"a column is selected twice in {names!r}")
        parts.append("columns=" + ",".join(_quote_column(c) for c in names))
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidRequest(f"limit must be a row count (0 or more), not {limit!r}")
        parts.append(f"limit={limit}")
    return "?" + "&".join(parts) if parts else ""


def _parse_selection(text: Optional[str]) -> "tuple[Optional[List[str]], Optional[int]]":
    columns: Optional[List[str]] = None
    limit: Optional[int] = None
    if text is None:
        return columns, limit
    for pair in text.split("&"):
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidRequest(f"ticket selection {pair!r} is not key=value")
        if key == "columns" and columns is None:
            names = value.split(",")
            if any(not n for n in names):
                raise InvalidRequest("an empty column name in a ticket")
            columns = [unquote(n, errors="strict") for n in names]
        elif key == "limit" and limit is None and value.isdigit():
            limit = int(value)
        else:
            raise InvalidRequest(f"unexpected ticket selection {pair!r}")
    return columns, limit


class Ticket(str):
    """A ticket naming one immutable version of a dataset.

    A ``Ticket`` *is* a ``str`` -- the exact wire form the Flight node issued -- so it can be
    written to a file, put in JSON, a queue message, an environment variable or a CLI
    argument, and turned back into a ``Ticket`` with ``Ticket(text)``::

        ads1:<namespace>/<name>@<version>[#<part>][?<selection>][~<signature>]

    ``#<part>`` selects one Parquet part (the node issues such tickets for parallel
    download); ``?columns=a,b&limit=N`` reads only some columns and the first rows (column
    names percent-encoded); ``~<signature>`` is present when the node signs tickets, and
    covers the selection. Surrounding
    whitespace (a trailing newline from a file) is stripped. Anything else raises
    :class:`~trinity_flight.InvalidRequest`.

    Attributes:
        namespace: the dataset's namespace.
        name: the dataset's name.
        version: the pinned version (``>= 1``).
        part: the part selector, or ``None`` for the whole version.
        columns: the selected columns, or ``None`` for all of them.
        limit: the row limit, or ``None`` for every row.
        signature: the node's signature, or ``None`` for unsigned tickets.
    """

    namespace: str
    name: str
    version: int
    part: Optional[int]
    columns: Optional[List[str]]
    limit: Optional[int]
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
        try:
            self.columns, self.limit = _parse_selection(m.group("selection"))
        except UnicodeDecodeError:
            raise InvalidRequest("a ticket's column name is not UTF-8") from None
        self.signature = m.group("signature")
        return self

    @classmethod
    def build(
        cls,
        namespace: str,
        name: str,
        version: int,
        part: Optional[int] = None,
        *,
        columns: Optional[Sequence[str]] = None,
        limit: Optional[int] = None,
    ) -> "Ticket":
        """An unsigned ticket from its parts (for nodes that do not sign tickets; a node
        that signs issues selected tickets itself, see ``Client.select``)."""
        text = f"ads1:{namespace}/{name}@{int(version)}"
        if part is not None:
            text += f"#{int(part)}"
        return cls(text + selection_text(columns, limit))

    def __getnewargs__(self) -> "tuple[str]":
        return (str(self),)

    def __repr__(self) -> str:
        return f"Ticket({str.__repr__(self)})"

    def to_bytes(self) -> bytes:
        """The wire form as bytes (what ``pyarrow.flight.Ticket`` carries)."""
        return self.encode("utf-8")
