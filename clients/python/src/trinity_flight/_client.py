"""The Flight client: uploads with DoPut, downloads with GetFlightInfo + parallel DoGet."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.flight as fl

from ._config import Settings
from ._convert import (
    DEFAULT_BATCH_BYTES,
    DtypeBackend,
    dataframe_to_table,
    split_batches,
    table_batches,
    table_to_dataframe,
)
from ._ticket import Ticket, selection_text
from .errors import FlightError, InvalidRequest, translate

__all__ = ["Client", "DatasetInfo", "TTL"]

log = logging.getLogger("trinity_flight")

T = TypeVar("T")

#: A TTL: text the node understands (``"30m"``, ``"6h"``, ``"7d"``), a ``timedelta``, or
#: a number of seconds.
TTL = Union[str, _dt.timedelta, int, float]
#: Who will read a version: a count, or consumer names (DNS-1123 labels).
Consumers = Union[int, Sequence[str]]

#: Location meaning "use the connection you already have" (Arrow Flight convention).
REUSE_CONNECTION = "arrow-flight-reuse-connection://?"
TTL_HEADER = b"x-flight-ttl"
CONSUMERS_HEADER = b"x-flight-consumers"
CONTRACT_HEADER = b"x-flight-contract"
#: Default CSV block size: the unit read, converted and sent at a time.
DEFAULT_CSV_BLOCK_SIZE = 4 * 1024 * 1024

PathOrFile = Union[str, "os.PathLike[str]", IO[bytes]]


@dataclass(frozen=True)
class DatasetInfo:
    """What the node reports about one version of a dataset.

    Attributes:
        ticket: the version's ticket.
        namespace, name, version: the dataset and version.
        rows: number of rows.
        nbytes: size of the Arrow data in bytes (the node's ``bytes``).
        expires_at: expiry time (ISO 8601 text from the node), or ``None``.
        schema: the Arrow schema, when known (from ``GetFlightInfo``).
    """

    ticket: Ticket
    namespace: str
    name: str
    version: int
    rows: int
    nbytes: int
    expires_at: Optional[str] = None
    schema: Optional[pa.Schema] = None
    consumers: Optional[Dict[str, Any]] = None

    @property
    def pending_consumers(self) -> Optional[List[str]]:
        """Named consumers that have not released the version (``None`` when unnamed)."""
        if not self.consumers:
            return None
        pending = self.consumers.get("pending")
        return list(pending) if pending is not None else None

    @classmethod
    def from_json(cls, raw: bytes, schema: Optional[pa.Schema] = None) -> "DatasetInfo":
        try:
            d = json.loads(raw)
            return cls(
                ticket=Ticket(d["ticket"]),
                namespace=d["namespace"],
                name=d["name"],
                version=int(d["version"]),
                rows=int(d.get("rows", 0)),
                nbytes=int(d.get("bytes", 0)),
                expires_at=d.get("expiresAt"),
                schema=schema,
                consumers=d.get("consumers"),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise FlightError(f"unexpected answer from the Flight node: {raw[:200]!r}") from e


def _consumers_text(consumers: Consumers) -> str:
    if isinstance(consumers, bool):
        raise TypeError("consumers must be a count or a list of names")
    if isinstance(consumers, int):
        return str(consumers)
    if isinstance(consumers, str):
        return consumers
    return ",".join(str(c) for c in consumers)


def _ttl_text(ttl: TTL) -> str:
    if isinstance(ttl, str):
        return ttl.strip()
    if isinstance(ttl, _dt.timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"ttl must be text like '6h', a timedelta or seconds, not {ttl!r}")
    if seconds <= 0:
        raise InvalidRequest(f"ttl must be positive, got {ttl!r}")
    return f"{max(1, int(round(seconds)))}s"


def _normalize_uri(uri: str) -> str:
    uri = uri.strip()
    if "://" not in uri:
        uri = "grpc://" + uri
    return uri


def _is_tls(uri: str) -> bool:
    return uri.startswith("grpc+tls://")


def _read_certs(certs: Union[str, bytes, "os.PathLike[str]", None]) -> Optional[bytes]:
    """PEM contents from bytes, PEM text, or a file path."""
    if certs is None:
        return None
    if isinstance(certs, bytes):
        return certs
    text = os.fspath(certs)
    if "-----BEGIN" in text:
        return text.encode("ascii")
    with open(text, "rb") as f:
        return f.read()


class Client:
    """A connection to a Flight node (or a pool behind one Service).

    Arguments left as ``None`` fall back to the environment, exactly like the module-level
    functions: ``FLIGHT_URI`` (default ``grpc://localhost:8815``), ``FLIGHT_TOKEN``,
    ``FLIGHT_NAMESPACE`` (default: the pod's namespace in Kubernetes, else ``default``),
    ``FLIGHT_TLS_ROOT_CERTS`` (a PEM file).

    Args:
        uri: ``grpc://host:port`` or ``grpc+tls://host:port`` (``host:port`` alone means
            ``grpc://``).
        token: bearer token sent as ``authorization: Bearer <token>`` on every call.
        namespace: default namespace for uploads.
        tls_root_certs: PEM bundle (bytes, PEM text or a file path) to verify the node's
            certificate; the system roots are used when omitted.
        override_hostname: host name to check the certificate against (when connecting
            by IP or through a tunnel).
        disable_server_verification: skip TLS certificate verification (insecure; for
            development only).
        timeout: per-call timeout in seconds (``None``: no timeout).
        max_workers: endpoints downloaded in parallel.
        retries: how many times a call that failed with ``UNAVAILABLE`` is retried, with
            exponential backoff starting at ``retry_backoff`` seconds.
        batch_bytes: target size of each uploaded record batch; keeps every gRPC message
            well below the node's limit (64 MiB by default).

    A ``Client`` is thread-safe and may be used as a context manager (``close()`` at exit).
    """

    def __init__(
        self,
        uri: Optional[str] = None,
        token: Optional[str] = None,
        namespace: Optional[str] = None,
        *,
        tls_root_certs: Union[str, bytes, "os.PathLike[str]", None] = None,
        override_hostname: Optional[str] = None,
        disable_server_verification: bool = False,
        timeout: Optional[float] = None,
        max_workers: int = 8,
        retries: int = 4,
        retry_backoff: float = 0.2,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
    ) -> None:
        env = Settings.from_env()
        self.uri = _normalize_uri(uri if uri is not None else env.uri)
        self.token = token if token is not None else env.token
        self.namespace = namespace if namespace is not None else env.namespace
        if tls_root_certs is None and env.tls_root_certs:
            tls_root_certs = env.tls_root_certs
        self._tls_root_certs = _read_certs(tls_root_certs)
        self._override_hostname = override_hostname
        self._disable_verification = bool(disable_server_verification)
        self.timeout = timeout
        self.max_workers = max(1, int(max_workers))
        self.retries = max(0, int(retries))
        self.retry_backoff = float(retry_backoff)
        self.batch_bytes = int(batch_bytes)
        self._lock = threading.Lock()
        self._connections: Dict[str, fl.FlightClient] = {}
        self._conn = self._connection(self.uri)

    @classmethod
    def from_env(cls, **kwargs: Any) -> "Client":
        """A client configured from the environment (see the class docstring)."""
        return cls(**kwargs)

    def __repr__(self) -> str:
        return f"Client(uri={self.uri!r}, namespace={self.namespace!r})"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes every connection this client opened."""
        with self._lock:
            conns = list(self._connections.values())
            self._connections.clear()
        for c in conns:
            try:
                c.close()
            except Exception:  # pragma: no cover - best effort
                pass

    # -- plumbing ---------------------------------------------------------------------

    def _connection(self, uri: str) -> fl.FlightClient:
        uri = _normalize_uri(uri)
        with self._lock:
            conn = self._connections.get(uri)
            if conn is None:
                kwargs: Dict[str, Any] = {}
                if _is_tls(uri):
                    if self._tls_root_certs:
                        kwargs["tls_root_certs"] = self._tls_root_certs
                    if self._override_hostname:
                        kwargs["override_hostname"] = self._override_hostname
                    if self._disable_verification:
                        kwargs["disable_server_verification"] = True
                try:
                    conn = fl.FlightClient(uri, **kwargs)
                except pa.ArrowException as e:
                    raise InvalidRequest(f"cannot connect to {uri!r}: {e}") from e
                self._connections[uri] = conn
            return conn

    def _options(self, headers: Sequence[Tuple[bytes, bytes]] = ()) -> fl.FlightCallOptions:
        h: List[Tuple[bytes, bytes]] = []
        if self.token:
            h.append((b"authorization", b"Bearer " + self.token.encode("utf-8")))
        h.extend(headers)
        return fl.FlightCallOptions(headers=h, timeout=self.timeout)

    def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Runs ``fn``, retrying UNAVAILABLE with exponential backoff and jitter."""
        attempt = 0
        while True:
            try:
                return fn()
            except (pa.ArrowException, FlightError) as e:
                err = translate(e)
                if err.code != "UNAVAILABLE" or attempt >= self.retries:
                    if err is e:
                        raise
                    raise err from e
            delay = self.retry_backoff * (2**attempt) * (0.5 + random.random())
            attempt += 1
            log.warning("%s: %s; retry %d/%d in %.2fs", what, err, attempt, self.retries, delay)
            time.sleep(delay)

    def _descriptor(self, name: str, namespace: Optional[str]) -> fl.FlightDescriptor:
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"dataset name must be non-empty text, got {name!r}")
        return fl.FlightDescriptor.for_path(namespace or self.namespace, name)

    # -- uploads ----------------------------------------------------------------------

    def _put(
        self,
        descriptor: fl.FlightDescriptor,
        schema: pa.Schema,
        batches: Iterable[pa.RecordBatch],
        ttl: Optional[TTL],
        contract: Optional[str],
        consumers: Optional[Consumers] = None,
    ) -> DatasetInfo:
        """One DoPut. Returns the node's PutResult.

        If ``batches`` raises (a local error, e.g. a CSV parse error) the stream has to be
        ended -- pyarrow cannot cancel a DoPut -- so the version the node committed is
        deleted again before the error is re-raised.
        """
        headers: List[Tuple[bytes, bytes]] = []
        if ttl is not None:
            headers.append((TTL_HEADER, _ttl_text(ttl).encode("utf-8")))
        if contract:
            headers.append((CONTRACT_HEADER, contract.encode("utf-8")))
        if consumers is not None:
            headers.append((CONSUMERS_HEADER, _consumers_text(consumers).encode("utf-8")))
        options = self._options(headers)
        writer, reader = self._conn.do_put(descriptor, schema, options=options)
        local_error: Optional[BaseException] = None
        try:
            it = iter(split_batches(batches, self.batch_bytes))
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except BaseException as e:  # noqa: BLE001 - rolled back below, re-raised
                    local_error = e
                    break
                writer.write_batch(batch)
            writer.done_writing()
            raw = reader.read()
        except pa.ArrowException as e:
            # The node usually ended the call; its status (from close) says why.
            try:
                writer.close()
            except pa.ArrowException as final:
                if local_error is not None:
                    raise local_error from final
                raise translate(final) from final
            if local_error is not None:
                raise local_error from e
            raise translate(e) from e
        try:
            writer.close()
        except pa.ArrowException as e:
            raise translate(e) from e
        if raw is None:
            raise FlightError("the Flight node ended the upload without a PutResult")
        info = DatasetInfo.from_json(raw.to_pybytes(), schema)
        if local_error is not None:
            self._rollback(info)
            raise local_error
        return info

    def _rollback(self, info: DatasetInfo) -> None:
        try:
            self.delete(info.name, version=info.version, namespace=info.namespace)
        except Exception as e:  # pragma: no cover - best effort
            log.error("failed to delete incomplete upload %s: %s", info.ticket, e)

    def upload_table(
        self,
        table: Union[pa.Table, pa.RecordBatch],
        name: str,
        *,
        namespace: Optional[str] = None,
        ttl: Optional[TTL] = None,
        contract: Optional[str] = None,
        consumers: Optional[Consumers] = None,
    ) -> Ticket:
        """Uploads an Arrow table as a new version of ``namespace/name``.

        The table is sent in record batches of about ``batch_bytes``; schema metadata
        (including pandas metadata) travels with it.

        Args:
            table: the data (a ``pyarrow.Table`` or ``RecordBatch``).
            name: dataset name (a DNS-1123 label: lower-case letters, digits, ``-``).
            namespace: defaults to the client's namespace.
            ttl: how long the version lives, e.g. ``"6h"``; default: the node's.
            contract: name of a data contract the upload must match.
            consumers: who will read the version, as names (``["scorer", "reporter"]``)
                or a count (``2``); once every consumer has called :meth:`release`, the
                version is deleted (after the node's ``--release-grace``). The TTL still
                applies to consumers that never come.

        Returns:
            The new version's :class:`Ticket`.

        Raises:
            ContractViolation, InvalidRequest, Unauthorized, LimitExceeded,
            ServerUnavailable, FlightError.
        """
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise TypeError(f"expected a pyarrow Table, got {type(table).__name__}")
        descriptor = self._descriptor(name, namespace)
        info = self._retry(
            f"upload {name}",
            lambda: self._put(
                descriptor, table.schema, table.to_batches(), ttl, contract, consumers
            ),
        )
        return info.ticket

    def upload_dataframe(
        self,
        df: pd.DataFrame,
        name: str,
        *,
        namespace: Optional[str] = None,
        ttl: Optional[TTL] = None,
        contract: Optional[str] = None,
        index: Optional[bool] = None,
        consumers: Optional[Consumers] = None,
    ) -> Ticket:
        """Uploads a DataFrame as a new version of ``namespace/name``.

        dtypes round-trip (nullable ``Int64``/``boolean``/``Float64``, ``str``,
        tz-aware timestamps, categoricals, ...). Index policy (``index``):

        * ``None`` (default): a default ``RangeIndex`` is stored as metadata only (no
          column); any other index (named, non-default, ``MultiIndex``) is stored as
          column(s) and restored by :meth:`download_dataframe`;
        * ``True``: always store the index as column(s);
        * ``False``: drop the index; downloads get a fresh ``RangeIndex``.

        Returns the new version's :class:`Ticket`. See :meth:`upload_table` for the other
        arguments and errors.
        """
        table = dataframe_to_table(df, index)
        return self.upload_table(
            table, name, namespace=namespace, ttl=ttl, contract=contract, consumers=consumers
        )

    def upload_csv(
        self,
        source: PathOrFile,
        name: str,
        *,
        namespace: Optional[str] = None,
        ttl: Optional[TTL] = None,
        contract: Optional[str] = None,
        consumers: Optional[Consumers] = None,
        block_size: int = DEFAULT_CSV_BLOCK_SIZE,
        delimiter: str = ",",
        column_types: Optional[Dict[str, pa.DataType]] = None,
        read_options: Optional[pacsv.ReadOptions] = None,
        parse_options: Optional[pacsv.ParseOptions] = None,
        convert_options: Optional[pacsv.ConvertOptions] = None,
    ) -> Ticket:
        """Streams a CSV file (with a header row) to the node as a new version.

        The file is read, converted and sent one block (``block_size`` bytes of CSV) at a
        time with ``pyarrow.csv.open_csv``, so it is never whole in memory. Compressed
        files (``.gz``, ``.bz2``, ...) are decompressed on the fly when given by path.

        Column types are inferred from the first block; if a later block does not fit
        (e.g. text in a column that looked numeric), the upload fails with
        :class:`InvalidRequest` and nothing is kept -- pass ``column_types`` (or
        ``convert_options``) to fix the types.

        Args:
            source: a path or a binary file object.
            block_size: bytes of CSV per batch.
            delimiter: field separator (ignored when ``parse_options`` is given).
            column_types: Arrow types of some columns, e.g. ``{"id": pa.int64()}``.
            read_options, parse_options, convert_options: full ``pyarrow.csv`` options.

        Returns the new version's :class:`Ticket`. Uploads from a path are retried on
        ``UNAVAILABLE``; uploads from a file object are not (it cannot be rewound).
        """
        if read_options is None:
            read_options = pacsv.ReadOptions(block_size=block_size)
        if parse_options is None:
            parse_options = pacsv.ParseOptions(delimiter=delimiter)
        if convert_options is None:
            convert_options = pacsv.ConvertOptions(column_types=column_types or {})
        descriptor = self._descriptor(name, namespace)
        is_path = isinstance(source, (str, os.PathLike))

        def attempt() -> DatasetInfo:
            try:
                reader = pacsv.open_csv(
                    source,
                    read_options=read_options,
                    parse_options=parse_options,
                    convert_options=convert_options,
                )
            except pa.ArrowInvalid as e:
                raise InvalidRequest(f"cannot read the CSV: {e}") from e
            try:
                return self._put(descriptor, reader.schema, _csv_batches(reader), ttl, contract, consumers)
            finally:
                reader.close()

        if is_path:
            info = self._retry(f"upload {name}", attempt)
        else:
            info = attempt()
        return info.ticket

    # -- downloads --------------------------------------------------------------------

    def info(self, name: str, *, namespace: Optional[str] = None) -> DatasetInfo:
        """The latest version of ``namespace/name`` (``GetFlightInfo``)."""
        fi = self._flight_info(self._descriptor(name, namespace))
        raw = getattr(fi, "app_metadata", b"") or b""
        if not raw:
            raise FlightError("the Flight node sent no version metadata in its FlightInfo")
        return DatasetInfo.from_json(raw, fi.schema)

    def latest(self, name: str, *, namespace: Optional[str] = None) -> Ticket:
        """The ticket of the latest version of ``namespace/name``."""
        return self.info(name, namespace=namespace).ticket

    def _flight_info(self, descriptor: fl.FlightDescriptor) -> fl.FlightInfo:
        return self._retry(
            "GetFlightInfo",
            lambda: self._conn.get_flight_info(descriptor, options=self._options()),
        )

    def download_table(
        self,
        ticket: Union[Ticket, str],
        *,
        columns: Optional[Sequence[str]] = None,
        limit: Optional[int] = None,
    ) -> pa.Table:
        """Downloads the version a ticket names as a ``pyarrow.Table``.

        ``columns`` reads only those columns (in that order) and ``limit`` only the first
        rows: the node sends nothing else. The node's ``GetFlightInfo`` lists one endpoint
        per part of large datasets; the parts are fetched in parallel (``max_workers``) and
        concatenated in order. Each endpoint's locations are tried in order (the owning node
        first), falling back to the connection in use; ``UNAVAILABLE`` is retried with
        backoff.

        Raises:
            DatasetNotFound: unknown dataset or version (or expired).
            InvalidRequest: malformed ticket, or a column the version does not have.
            Unauthorized, ServerUnavailable, FlightError.
        """
        endpoints, schema = self._plan(Ticket(ticket), columns, limit)
        if not endpoints:
            assert schema is not None  # pragma: no cover - only a FlightInfo has none
            return schema.empty_table()
        if len(endpoints) == 1:
            return self._fetch(endpoints[0])
        with ThreadPoolExecutor(
            max_workers=min(self.max_workers, len(endpoints)),
            thread_name_prefix="trinity-flight",
        ) as pool:
            tables = list(pool.map(self._fetch, endpoints))
        return pa.concat_tables(tables)

    def select(
        self,
        ticket: Union[Ticket, str],
        *,
        columns: Optional[Sequence[str]] = None,
        limit: Optional[int] = None,
    ) -> Ticket:
        """A ticket reading only ``columns`` and the first ``limit`` rows of the version
        ``ticket`` names, issued (and signed, where the node signs) by the node. Pass it on
        to a step that needs no more; a selection is only ever narrowed, never widened."""
        fi = self._flight_info(self._command(Ticket(ticket), columns, limit))
        return DatasetInfo.from_json(getattr(fi, "app_metadata", b"") or b"").ticket

    def _command(
        self, t: Ticket, columns: Optional[Sequence[str]], limit: Optional[int]
    ) -> fl.FlightDescriptor:
        """A command descriptor naming ``t``, narrowed by ``columns`` and ``limit``."""
        selection_text(columns, limit)  # checks them before any call
        if columns is None and limit is None:
            return fl.FlightDescriptor.for_command(t.to_bytes())
        body: Dict[str, Any] = {"ticket": str(t)}
        if columns is not None:
            body["columns"] = [str(c) for c in columns]
        if limit is not None:
            body["limit"] = int(limit)
        return fl.FlightDescriptor.for_command(json.dumps(body).encode("utf-8"))

    def _plan(
        self, t: Ticket, columns: Optional[Sequence[str]], limit: Optional[int]
    ) -> Tuple[List[fl.FlightEndpoint], Optional[pa.Schema]]:
        """The endpoints and schema of what ``t`` (narrowed by ``columns``/``limit``) reads,
        from ``GetFlightInfo`` with the ticket as a command descriptor. A server without
        ``GetFlightInfo`` gets one ``DoGet`` of the ticket."""
        descriptor = self._command(t, columns, limit)
        try:
            fi = self._flight_info(descriptor)
        except FlightError as e:
            if e.code != "UNIMPLEMENTED":
                raise
            text = str(t)
            if columns is not None or limit is not None:
                body, sep, signature = text.partition("~")
                if t.columns is not None or t.limit is not None or signature:
                    raise
                text = body + selection_text(columns, limit)
            return [fl.FlightEndpoint(text.encode("utf-8"), [])], None
        return list(fi.endpoints), fi.schema

    def _fetch(self, endpoint: fl.FlightEndpoint) -> pa.Table:
        """DoGet one endpoint, trying its locations in order, then the connection in use."""
        candidates: List[Optional[str]] = []
        for loc in endpoint.locations:
            uri = loc.uri.decode("utf-8") if isinstance(loc.uri, bytes) else str(loc.uri)
            key: Optional[str] = None
            if not uri.startswith("arrow-flight-reuse-connection:") and uri != self.uri:
                key = uri
            if key not in candidates:
                candidates.append(key)
        if None not in candidates:
            candidates.append(None)
        ticket = endpoint.ticket

        def once() -> pa.Table:
            last: Optional[BaseException] = None
            for uri in candidates:
                try:
                    conn = self._conn if uri is None else self._connection(uri)
                    return conn.do_get(ticket, options=self._options()).read_all()
                except (pa.ArrowException, FlightError) as e:
                    if uri is None:
                        raise
                    log.info("location %s failed (%s); trying the next one", uri, e)
                    last = e
            assert last is not None  # pragma: no cover - None is always a candidate
            raise last

        return self._retry("DoGet", once)

    def download_dataframe(
        self,
        ticket: Union[Ticket, str],
        *,
        columns: Optional[Sequence[str]] = None,
        limit: Optional[int] = None,
        dtype_backend: DtypeBackend = None,
        release_as: Optional[str] = None,
    ) -> pd.DataFrame:
        """Downloads the version a ticket names as a DataFrame.

        ``columns`` reads only those columns and ``limit`` only the first rows (a preview):
        the node sends nothing else (see :meth:`download_table`). The index is restored when
        its columns are among those read.

        DataFrames uploaded by this package come back with their dtypes and index (see
        :meth:`upload_dataframe`). ``dtype_backend`` (``None``, ``"numpy_nullable"`` or
        ``"pyarrow"``) chooses pandas dtypes for data from other producers, as in
        ``pandas.read_parquet``. With ``release_as``, the version is released as that
        consumer once the DataFrame is built (see :meth:`release`); use :meth:`consume` to
        release only after your own work succeeded.
        """
        table = self.download_table(ticket, columns=columns, limit=limit)
        df = table_to_dataframe(table, dtype_backend)
        if release_as is not None:
            self.release(ticket, consumer=release_as)
        return df

    def release(self, ticket: Union[Ticket, str], *, consumer: Optional[str] = None) -> DatasetInfo:
        """Tells the node that ``consumer`` is done with the version ``ticket`` names.

        Versions uploaded with ``consumers=[...]`` need the consumer's name; counted ones
        (``consumers=N``) may leave it out (a name makes a repeated release count once).
        Once every consumer has released, the version is deleted after the node's
        ``--release-grace``. Releasing twice under one name changes nothing.

        Returns the version's :class:`DatasetInfo`, whose ``pending_consumers`` lists who
        has yet to release.

        Raises:
            InvalidRequest: the name is not a declared consumer (the message lists them).
            DatasetNotFound: the version is gone (deleted or expired).
            InvalidRequest: the version declared no consumers (``code == "FAILED_PRECONDITION"``).
        """
        body: Dict[str, Any] = {"ticket": str(Ticket(ticket))}
        if consumer is not None:
            body["consumer"] = consumer
        action = fl.Action("release", json.dumps(body).encode("utf-8"))

        def call() -> bytes:
            results = [r.body.to_pybytes() for r in self._conn.do_action(action, options=self._options())]
            if not results:
                raise FlightError("the Flight node answered the release with nothing")
            return results[0]

        # A named release is idempotent, so it may be retried; an anonymous one is not.
        raw = self._retry("release", call) if consumer is not None else _translated(call)
        return DatasetInfo.from_json(raw)

    @contextlib.contextmanager
    def consume(
        self,
        ticket: Union[Ticket, str],
        *,
        as_: Optional[str] = None,
        dtype_backend: DtypeBackend = None,
    ) -> Iterator[pd.DataFrame]:
        """Downloads a version as a DataFrame for the ``with`` block, and releases it as
        consumer ``as_`` only if the block ends without an exception: a consumer that fails
        leaves the version for its retry (or the TTL)::

            with client.consume(ticket, as_="scorer") as df:
                score(df)
        """
        df = self.download_dataframe(ticket, dtype_backend=dtype_backend)
        yield df
        self.release(ticket, consumer=as_)

    # -- management ---------------------------------------------------------------------

    def _action(self, kind: str, body: Optional[Dict[str, Any]], retry: bool = True) -> List[bytes]:
        action = fl.Action(kind, json.dumps(body).encode("utf-8") if body is not None else b"")

        def call() -> List[bytes]:
            return [r.body.to_pybytes() for r in self._conn.do_action(action, options=self._options())]

        return self._retry(kind, call) if retry else _translated(call)

    def list_datasets(self, *, namespace: Optional[str] = None) -> List[DatasetInfo]:
        """The newest unexpired version of every dataset of ``namespace`` (default: the
        client's), as ``ListFlights`` reports them."""
        criteria = (namespace or self.namespace).encode("utf-8")

        def call() -> List[DatasetInfo]:
            out = []
            for fi in self._conn.list_flights(criteria, options=self._options()):
                raw = getattr(fi, "app_metadata", b"") or b""
                if raw:
                    out.append(DatasetInfo.from_json(raw, fi.schema))
            return out

        return self._retry("ListFlights", call)

    def renew(self, ticket: Union[Ticket, str], ttl: TTL) -> DatasetInfo:
        """Extends the version's lease: it now expires ``ttl`` from now."""
        raw = self._action("renew", {"ticket": str(Ticket(ticket)), "ttl": _ttl_text(ttl)})
        return DatasetInfo.from_json(raw[0])

    def stats(self) -> Dict[str, Any]:
        """The node's ``stats``: versions in memory of the token's namespaces, and to a token
        of every namespace its memory, cache and budget counters."""
        raw = self._action("stats", None)
        return json.loads(raw[0]) if raw else {}

    def delete(
        self, name: str, *, version: Optional[int] = None, namespace: Optional[str] = None
    ) -> List[int]:
        """Deletes one version (or every version) of a dataset; returns the versions deleted."""
        body: Dict[str, Any] = {"namespace": namespace or self.namespace, "name": name}
        if version is not None:
            body["version"] = int(version)
        action = fl.Action("delete", json.dumps(body).encode("utf-8"))

        def call() -> List[bytes]:
            return [r.body.to_pybytes() for r in self._conn.do_action(action, options=self._options())]

        results = self._retry("delete", call)
        deleted: List[int] = []
        for raw in results:
            try:
                deleted.extend(int(v) for v in json.loads(raw).get("deleted", []))
            except (ValueError, TypeError, AttributeError):
                pass
        return deleted


def _translated(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except pa.ArrowException as e:
        raise translate(e) from e


def _csv_batches(reader: pacsv.CSVStreamingReader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise InvalidRequest(f"cannot read the CSV: {e}") from e
        yield batch
