"""Move pandas DataFrames and Arrow tables between pipeline steps by ticket.

A producer uploads a table once and passes the returned :class:`Ticket` (a ``str``)
downstream; a consumer downloads exactly that version::

    import trinity_flight as tf

    ticket = tf.upload_dataframe(df, "sales")     # -> "ads1:analytics/sales@3"
    df = tf.download_dataframe(ticket)

A producer may name the version's consumers; the version is deleted once each has
released it (the TTL is the backstop for consumers that never come)::

    ticket = tf.upload_dataframe(df, "features", consumers=["scorer", "reporter"])
    with tf.consume(ticket, as_="scorer") as df:   # released only if the block succeeds
        score(df)

The module-level functions read their connection from the environment on each call:
``FLIGHT_URI`` (default ``grpc://localhost:8815``), ``FLIGHT_TOKEN``, ``FLIGHT_NAMESPACE``
(default: the pod's namespace in Kubernetes, else ``default``) and
``FLIGHT_TLS_ROOT_CERTS``. Use :class:`Client` for explicit settings and TLS options.
"""

from __future__ import annotations

import threading
from typing import ContextManager, Dict, Optional, Sequence, Union

import pandas as pd
import pyarrow as pa

from ._client import TTL, Client, Consumers, DatasetInfo, PathOrFile
from ._config import Settings
from ._convert import DtypeBackend
from ._memory import keep_freed_memory
from ._ticket import Ticket
from .errors import (
    ContractViolation,
    DatasetNotFound,
    FlightError,
    InvalidRequest,
    LimitExceeded,
    ServerUnavailable,
    Unauthorized,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Consumers",
    "ContractViolation",
    "DatasetInfo",
    "DatasetNotFound",
    "FlightError",
    "InvalidRequest",
    "LimitExceeded",
    "ServerUnavailable",
    "Settings",
    "Ticket",
    "Unauthorized",
    "consume",
    "default_client",
    "download_dataframe",
    "download_table",
    "keep_freed_memory",
    "release",
    "upload_csv",
    "upload_dataframe",
    "upload_table",
]

_clients: Dict[Settings, Client] = {}
_clients_lock = threading.Lock()


def default_client() -> Client:
    """The shared client for the current environment settings.

    One client (and its connections) is kept per distinct setting of the ``FLIGHT_*``
    variables, so changing the environment between calls takes effect.
    """
    settings = Settings.from_env()
    with _clients_lock:
        client = _clients.get(settings)
        if client is None:
            client = Client(
                settings.uri,
                settings.token,
                settings.namespace,
                tls_root_certs=settings.tls_root_certs,
            )
            _clients[settings] = client
        return client


def upload_dataframe(
    df: pd.DataFrame,
    name: str,
    *,
    namespace: Optional[str] = None,
    ttl: Optional[TTL] = None,
    contract: Optional[str] = None,
    index: Optional[bool] = None,
    consumers: Optional[Consumers] = None,
) -> Ticket:
    """Uploads a DataFrame as a new version of ``namespace/name``; returns its ticket.

    See :meth:`Client.upload_dataframe` (index policy, dtypes, errors) and
    :meth:`Client.upload_table` (``consumers``).
    """
    return default_client().upload_dataframe(
        df, name, namespace=namespace, ttl=ttl, contract=contract, index=index,
        consumers=consumers,
    )


def download_dataframe(
    ticket: Union[Ticket, str],
    *,
    columns: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
    dtype_backend: DtypeBackend = None,
    release_as: Optional[str] = None,
) -> pd.DataFrame:
    """Downloads the version a ticket names as a DataFrame (and releases it as consumer
    ``release_as``, when given). ``columns`` and ``limit`` read only those columns and the
    first rows.

    See :meth:`Client.download_dataframe`.
    """
    return default_client().download_dataframe(
        ticket, columns=columns, limit=limit, dtype_backend=dtype_backend, release_as=release_as
    )


def release(ticket: Union[Ticket, str], *, consumer: Optional[str] = None) -> DatasetInfo:
    """Releases a version as ``consumer``; see :meth:`Client.release`."""
    return default_client().release(ticket, consumer=consumer)


def consume(
    ticket: Union[Ticket, str], *, as_: Optional[str] = None, dtype_backend: DtypeBackend = None
) -> ContextManager[pd.DataFrame]:
    """``with consume(ticket, as_="scorer") as df:`` releases only if the block succeeds;
    see :meth:`Client.consume`."""
    return default_client().consume(ticket, as_=as_, dtype_backend=dtype_backend)


def upload_table(
    table: Union[pa.Table, pa.RecordBatch],
    name: str,
    *,
    namespace: Optional[str] = None,
    ttl: Optional[TTL] = None,
    contract: Optional[str] = None,
    consumers: Optional[Consumers] = None,
) -> Ticket:
    """Uploads an Arrow table as a new version of ``namespace/name``; returns its ticket.

    See :meth:`Client.upload_table`.
    """
    return default_client().upload_table(
        table, name, namespace=namespace, ttl=ttl, contract=contract, consumers=consumers
    )


def download_table(
    ticket: Union[Ticket, str],
    *,
    columns: Optional[Sequence[str]] = None,
    limit: Optional[int] = None,
) -> pa.Table:
    """Downloads the version a ticket names (only ``columns``, only the first ``limit``
    rows, when given) as a ``pyarrow.Table``.

    See :meth:`Client.download_table`.
    """
    return default_client().download_table(ticket, columns=columns, limit=limit)


def upload_csv(
    source: PathOrFile,
    name: str,
    *,
    namespace: Optional[str] = None,
    ttl: Optional[TTL] = None,
    contract: Optional[str] = None,
    consumers: Optional[Consumers] = None,
    **csv_options: object,
) -> Ticket:
    """Streams a CSV file (header row) to the node in chunks; returns the ticket.

    ``csv_options`` are those of :meth:`Client.upload_csv` (``block_size``,
    ``delimiter``, ``column_types``, ``read_options``, ...).
    """
    return default_client().upload_csv(
        source, name, namespace=namespace, ttl=ttl, contract=contract, consumers=consumers,
        **csv_options,  # type: ignore[arg-type]
    )
