"""``trinity-flight``: the command line for people.

Puts files as datasets, gets tickets to files or prints their head, lists datasets, shows
node stats, deletes, renews and releases versions. The connection comes from ``--uri``,
``--token`` and ``--namespace`` or the ``FLIGHT_URI``, ``FLIGHT_TOKEN`` and
``FLIGHT_NAMESPACE`` variables the atoms use. ``--output json`` prints one JSON document
for scripts. Exit codes: 0 done, 1 any other error, 2 bad usage, 3 not found, 4 invalid
request (or contract violation), 5 unauthorized, 6 node unavailable, 7 a limit exceeded.

It ships with the Python package (rather than as a kubectl plugin) because the people who
run it are the ones who write the atoms: it reads and writes the same files with the same
pyarrow, works against a local node as well as a pool, and needs no cluster access.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq

from ._client import Client, DatasetInfo
from ._config import Settings
from ._ticket import Ticket
from .errors import (
    DatasetNotFound,
    FlightError,
    InvalidRequest,
    LimitExceeded,
    ServerUnavailable,
    Unauthorized,
)

EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_INVALID = 1, 2, 3, 4
EXIT_UNAUTHORIZED, EXIT_UNAVAILABLE, EXIT_LIMIT = 5, 6, 7

FORMATS = ("parquet", "csv", "arrow")


def _format_of(path: str, given: Optional[str]) -> str:
    if given:
        return given
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix in ("parquet", "pq"):
        return "parquet"
    if suffix in ("csv", "txt"):
        return "csv"
    if suffix in ("arrow", "feather", "ipc"):
        return "arrow"
    raise InvalidRequest(f"cannot tell the format of {path!r}; pass --format parquet, csv or arrow")


class Progress:
    """A one-line progress report on stderr, when it is a terminal (or forced)."""

    def __init__(self, what: str, total: Optional[int], enabled: bool) -> None:
        self.what, self.total, self.enabled = what, total, enabled
        self.done = 0
        self.started = time.monotonic()
        self.last = 0.0

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= 0.2:
            self.last = now
            self._draw(final=False)

    def finish(self) -> None:
        if self.enabled:
            self._draw(final=True)

    def _draw(self, final: bool) -> None:
        secs = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / secs / 1e6
        if self.total:
            pct = min(100.0, 100.0 * self.done / self.total)
            text = f"{self.what}: {pct:5.1f}% {self.done / 1e6:,.1f} of {self.total / 1e6:,.1f} MB, {rate:,.1f} MB/s"
        else:
            text = f"{self.what}: {self.done / 1e6:,.1f} MB, {rate:,.1f} MB/s"
        sys.stderr.write("\r" + text + ("\n" if final else ""))
        sys.stderr.flush()


def _read_batches(path: str, fmt: str, progress: Progress) -> "tuple[pa.Schema, Iterable[pa.RecordBatch]]":
    if fmt == "parquet":
        f = pq.ParquetFile(path)
        schema = f.schema_arrow

        def gen() -> Iterable[pa.RecordBatch]:
            for b in f.iter_batches(batch_size=64 * 1024):
                progress.add(b.nbytes)
                yield b

        return schema, gen()
    if fmt == "arrow":
        table = feather.read_table(path, memory_map=True)

        def gen_t() -> Iterable[pa.RecordBatch]:
            for b in table.to_batches(max_chunksize=64 * 1024):
                progress.add(b.nbytes)
                yield b

        return table.schema, gen_t()
    raise AssertionError(fmt)


def _client(args: argparse.Namespace) -> Client:
    settings = Settings.from_env()
    return Client(
        args.uri or settings.uri,
        args.token if args.token is not None else settings.token,
        args.namespace or settings.namespace,
        tls_root_certs=settings.tls_root_certs,
    )


def _info_dict(info: DatasetInfo) -> Dict[str, Any]:
    out: Dict[str, Any] = {
        "ticket": str(info.ticket),
        "namespace": info.namespace,
        "name": info.name,
        "version": info.version,
        "rows": info.rows,
        "bytes": info.nbytes,
        "expiresAt": info.expires_at,
    }
    if info.consumers is not None:
        out["consumers"] = info.consumers
    return out


def _human(n: int) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    value, unit = float(n), 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def _print_rows(headers: Sequence[str], rows: List[Sequence[Any]]) -> None:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    print("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_put(args: argparse.Namespace) -> Any:
    fmt = _format_of(args.file, args.format)
    size = os.path.getsize(args.file) if args.file != "-" else None
    progress = Progress(f"put {args.name}", size if fmt == "csv" else None, args.progress)
    consumers: Any = None
    if args.consumers:
        consumers = int(args.consumers) if args.consumers.isdigit() else args.consumers.split(",")
    with _client(args) as c:
        if fmt == "csv":
            ticket = c.upload_csv(args.file, args.name, ttl=args.ttl, contract=args.contract,
                                  consumers=consumers)
            progress.add(size or 0)
            progress.finish()
            info = c.info(args.name)
        else:
            # Streamed batch by batch, so a file larger than memory can be put.
            schema, batches = _read_batches(args.file, fmt, progress)
            info = c._put(c._descriptor(args.name, None), schema, batches, args.ttl,
                          args.contract, consumers)
            progress.finish()
            ticket = info.ticket
    if args.output == "json":
        return {**_info_dict(info), "ticket": str(ticket)}
    print(ticket)
    return None


def cmd_get(args: argparse.Namespace) -> Any:
    with _client(args) as c:
        progress = Progress(f"get {args.ticket}", None, args.progress)
        table = c.download_table(args.ticket, columns=args.columns)
        progress.add(table.nbytes)
        progress.finish()
    fmt = _format_of(args.out, args.format)
    if fmt == "parquet":
        pq.write_table(table, args.out)
    elif fmt == "csv":
        pacsv.write_csv(table, args.out)
    else:
        feather.write_feather(table, args.out, compression="uncompressed")
    result = {"ticket": args.ticket, "file": args.out, "format": fmt, "rows": table.num_rows}
    if args.output == "json":
        return result
    print(f"wrote {table.num_rows} rows to {args.out} ({fmt})")
    return None


def _column_list(text: str) -> List[str]:
    names = [c.strip() for c in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected column names separated by commas: {text!r}")
    return names


def cmd_head(args: argparse.Namespace) -> Any:
    with _client(args) as c:
        # Only those rows (and columns) leave the node.
        table = c.download_table(args.ticket, columns=args.columns, limit=max(0, args.rows))
    if args.output == "json":
        return table.to_pylist()
    rows = [[("" if v is None else v) for v in r.values()] for r in table.to_pylist()]
    _print_rows(table.column_names, rows)
    return None


def cmd_ls(args: argparse.Namespace) -> Any:
    with _client(args) as c:
        infos = sorted(c.list_datasets(namespace=args.namespace), key=lambda i: i.name)
    if args.output == "json":
        return [_info_dict(i) for i in infos]
    _print_rows(
        ["name", "version", "rows", "size", "expires", "ticket"],
        [[i.name, i.version, i.rows, _human(i.nbytes), i.expires_at or "never", i.ticket] for i in infos],
    )
    return None


def cmd_stats(args: argparse.Namespace) -> Any:
    with _client(args) as c:
        stats = c.stats()
    if args.output == "json":
        return stats
    for k, v in stats.items():
        if k != "tables":
            print(f"{k}: {v}")
    tables = stats.get("tables") or []
    if tables:
        print()
        _print_rows(["namespace", "name", "version", "size"],
                    [[t["namespace"], t["name"], t["version"], _human(t["bytes"])] for t in tables])
    return None


def cmd_delete(args: argparse.Namespace) -> Any:
    with _client(args) as c:
        deleted = c.delete(args.name, version=args.version, namespace=args.namespace)
    if args.output == "json":
        return {"deleted": deleted}
    print("deleted versions: " + ", ".join(str(v) for v in deleted))
    return None


def cmd_renew(args: argparse.Namespace) -> Any:
    with _client(args) as c:
        info = c.renew(args.ticket, args.ttl)
    if args.output == "json":
        return _info_dict(info)
    print(f"{info.ticket} expires at {info.expires_at}")
    return None


def cmd_release(args: argparse.Namespace) -> Any:
    with _client(args) as c:
        info = c.release(args.ticket, consumer=args.consumer)
    if args.output == "json":
        return _info_dict(info)
    pending = info.pending_consumers
    print(f"released {info.ticket}" + (f"; pending: {', '.join(pending)}" if pending else ""))
    return None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trinity-flight",
        description="Move tables to and from Arrow Flight nodes by ticket.",
        epilog="Connection: --uri/--token/--namespace or FLIGHT_URI, FLIGHT_TOKEN, FLIGHT_NAMESPACE.",
    )
    p.add_argument("--uri", help="node or pool URI (default: FLIGHT_URI or grpc://localhost:8815)")
    p.add_argument("--token", help="bearer token (default: FLIGHT_TOKEN)")
    p.add_argument("--namespace", "-n", help="namespace (default: FLIGHT_NAMESPACE, the pod's, or default)")
    p.add_argument("--output", "-o", choices=("text", "json"), default="text")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="show progress on stderr (default: when stderr is a terminal)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("put", help="upload a Parquet, CSV or Arrow file as a new version")
    s.add_argument("file")
    s.add_argument("name", help="dataset name (a DNS-1123 label)")
    s.add_argument("--format", choices=FORMATS, help="default: from the file's extension")
    s.add_argument("--ttl", help="e.g. 30m, 6h, 7d")
    s.add_argument("--contract", help="a data contract of the node")
    s.add_argument("--consumers", help="names (scorer,reporter) or a count (2)")
    s.set_defaults(run=cmd_put)

    s = sub.add_parser("get", help="download a ticket's version to a file")
    s.add_argument("ticket")
    s.add_argument("out", help="file to write (.parquet, .csv, .arrow)")
    s.add_argument("--format", choices=FORMATS, help="default: from the file's extension")
    s.add_argument("--columns", type=_column_list, help="only these columns: price,qty")
    s.set_defaults(run=cmd_get)

    s = sub.add_parser("head", help="print the first rows of a ticket's version")
    s.add_argument("ticket")
    s.add_argument("--rows", type=int, default=10)
    s.add_argument("--columns", type=_column_list, help="only these columns: price,qty")
    s.set_defaults(run=cmd_head)

    s = sub.add_parser("ls", help="list datasets with their newest version and expiry")
    s.set_defaults(run=cmd_ls)

    s = sub.add_parser("stats", help="the node's memory, cache and budget figures")
    s.set_defaults(run=cmd_stats)

    s = sub.add_parser("delete", help="delete a version (or every version) of a dataset")
    s.add_argument("name")
    s.add_argument("--version", type=int)
    s.set_defaults(run=cmd_delete)

    s = sub.add_parser("renew", help="extend a version's lease")
    s.add_argument("ticket")
    s.add_argument("--ttl", required=True)
    s.set_defaults(run=cmd_renew)

    s = sub.add_parser("release", help="release a version as one of its consumers")
    s.add_argument("ticket")
    s.add_argument("--as", dest="consumer", help="consumer name (for named consumers)")
    s.set_defaults(run=cmd_release)
    return p


def _exit_code(e: BaseException) -> int:
    for cls, code in (
        (DatasetNotFound, EXIT_NOT_FOUND),
        (InvalidRequest, EXIT_INVALID),
        (Unauthorized, EXIT_UNAUTHORIZED),
        (ServerUnavailable, EXIT_UNAVAILABLE),
        (LimitExceeded, EXIT_LIMIT),
    ):
        if isinstance(e, cls):
            return code
    return EXIT_ERROR


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    run: Callable[[argparse.Namespace], Any] = args.run
    try:
        result = run(args)
    except (FlightError, OSError, pa.ArrowException, ValueError) as e:
        if args.output == "json":
            print(json.dumps({"error": str(e), "code": getattr(e, "code", None)}))
        print(f"trinity-flight: {e}", file=sys.stderr)
        return _exit_code(e)
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
