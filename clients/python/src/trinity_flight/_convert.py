"""pandas <-> Arrow conversion and batch splitting."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import pandas as pd
import pyarrow as pa

from .errors import InvalidRequest

#: Target size of one record batch on the wire. The node accepts messages up to 64 MiB by
#: default; a few MiB keeps every message far below that and streams smoothly.
DEFAULT_BATCH_BYTES = 4 * 1024 * 1024


def split_batches(
    batches: Iterable[pa.RecordBatch], max_bytes: int = DEFAULT_BATCH_BYTES
) -> Iterator[pa.RecordBatch]:
    """Re-slices batches so that each is about ``max_bytes`` of Arrow data or less.

    Slicing is zero-copy. A single row larger than ``max_bytes`` stays one batch.
    """
    for batch in batches:
        rows = batch.num_rows
        size = batch.nbytes
        if rows <= 1 or size <= max_bytes:
            yield batch
            continue
        per_row = size / rows
        step = max(1, int(max_bytes / per_row))
        for start in range(0, rows, step):
            yield batch.slice(start, step)


def table_batches(table: pa.Table, max_bytes: int = DEFAULT_BATCH_BYTES) -> Iterator[pa.RecordBatch]:
    """The table's record batches, split to at most about ``max_bytes`` each."""
    return split_batches(table.to_batches(), max_bytes)


def dataframe_to_table(df: pd.DataFrame, index: Optional[bool] = None) -> pa.Table:
    """Converts a DataFrame following the package's index policy (see the README).

    ``index=None`` (default): a default ``RangeIndex`` is kept as metadata only, any other
    index is stored as column(s); ``True``: always store the index as column(s);
    ``False``: drop the index.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    try:
        table = pa.Table.from_pandas(df, preserve_index=index)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise InvalidRequest(f"cannot convert the DataFrame to Arrow: {e}") from e
    categories = _categories_metadata(df)
    if categories is not None:
        metadata = dict(table.schema.metadata or {})
        metadata[CATEGORIES_KEY] = categories
        table = table.replace_schema_metadata(metadata)
    return table


#: Schema metadata key holding the categories of categorical columns. Arrow dictionaries
#: survive the node's memory path, but its Parquet copy keeps only the values that occur,
#: in order of appearance; this restores unused categories and their order on download.
CATEGORIES_KEY = b"trinity_flight.categories"
MAX_CATEGORIES_METADATA = 1 << 20


def _categories_metadata(df: pd.DataFrame) -> Optional[bytes]:
    if not df.columns.is_unique:
        return None
    spec = {}
    for name, col in df.items():
        if not isinstance(col.dtype, pd.CategoricalDtype):
            continue
        cats = col.cat.categories
        if cats.inferred_type not in ("string", "integer", "boolean", "floating"):
            continue
        spec[str(name)] = {"categories": cats.tolist(), "ordered": bool(col.cat.ordered)}
    if not spec:
        return None
    try:
        raw = json.dumps(spec, allow_nan=False, default=_json_scalar).encode("utf-8")
    except (TypeError, ValueError):
        return None
    return raw if len(raw) <= MAX_CATEGORIES_METADATA else None


def _json_scalar(v: Any) -> Any:
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    raise TypeError(f"not JSON: {type(v).__name__}")


def _restore_categories(table: pa.Table, df: pd.DataFrame) -> pd.DataFrame:
    raw = (table.schema.metadata or {}).get(CATEGORIES_KEY)
    if not raw:
        return df
    try:
        spec = json.loads(raw)
    except ValueError:
        return df
    by_name = {str(c): c for c in df.columns} if df.columns.is_unique else {}
    for field, want in spec.items():
        col = by_name.get(field)
        if col is None or not isinstance(df[col].dtype, pd.CategoricalDtype):
            continue
        cats = want.get("categories", [])
        if not set(df[col].cat.categories.tolist()) <= set(cats):
            continue  # not the column we described; leave it alone
        df[col] = df[col].cat.set_categories(cats, ordered=bool(want.get("ordered")))
    return df


DtypeBackend = Optional[str]


def _nullable_mapper() -> Callable[[pa.DataType], Any]:
    mapping = {
        pa.int8(): pd.Int8Dtype(),
        pa.int16(): pd.Int16Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.int64(): pd.Int64Dtype(),
        pa.uint8(): pd.UInt8Dtype(),
        pa.uint16(): pd.UInt16Dtype(),
        pa.uint32(): pd.UInt32Dtype(),
        pa.uint64(): pd.UInt64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
        pa.float32(): pd.Float32Dtype(),
        pa.float64(): pd.Float64Dtype(),
        pa.string(): pd.StringDtype(),
        pa.large_string(): pd.StringDtype(),
    }
    return mapping.get


def table_to_dataframe(table: pa.Table, dtype_backend: DtypeBackend = None) -> pd.DataFrame:
    """Converts a downloaded table back to pandas.

    ``dtype_backend=None`` restores what the uploader had (pandas metadata travels with the
    data) and uses pandas' defaults for tables from other producers;
    ``"numpy_nullable"`` maps integers, booleans, floats and strings to pandas' nullable
    dtypes (``Int64``, ``boolean``, ...); ``"pyarrow"`` gives ``pd.ArrowDtype`` columns.
    """
    df: pd.DataFrame
    if dtype_backend is None:
        df = _restore_categories(table, table.to_pandas())
    elif dtype_backend == "numpy_nullable":
        df = _restore_categories(table, table.to_pandas(types_mapper=_nullable_mapper()))
    elif dtype_backend == "pyarrow":
        df = table.to_pandas(types_mapper=pd.ArrowDtype)
    else:
        raise ValueError(
            f"dtype_backend must be None, 'numpy_nullable' or 'pyarrow', not {dtype_backend!r}"
        )
    return df


SchemaOrTable = Union[pa.Schema, pa.Table]
