"""Peer for the DoGet / DoPut / latency scenarios: pyarrow's C++ `FlightServerBase` holding
tables in memory.

DoPut reads the whole stream into a `pa.Table` and keeps it (no storage: the in-memory
upper bound a user would get from a hand-written pyarrow server), answering one PutResult
whose app_metadata is JSON `{"ticket": ...}` like flight-node. DoGet streams the stored
table with `RecordBatchStream` (zero-copy from the table's buffers). Actions: `delete`
(JSON {"namespace","name"}) drops a table, `stats` answers {"tables", "bytes"}.

Prints its port on stdout once it listens; exits when stdin closes or on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

import pyarrow as pa
import pyarrow.flight as flight


class InMemoryFlightServer(flight.FlightServerBase):
    def __init__(self, location: str):
        super().__init__(location)
        self._tables: dict[bytes, pa.Table] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(path) -> bytes:
        return b"/".join(p if isinstance(p, bytes) else p.encode() for p in path)

    def do_put(self, context, descriptor, reader, writer):
        key = self._key(descriptor.path)
        table = reader.read_all()
        with self._lock:
            self._tables[key] = table
        meta = {"ticket": key.decode(), "rows": table.num_rows, "bytes": table.nbytes}
        writer.write(pa.py_buffer(json.dumps(meta).encode()))

    def do_get(self, context, ticket):
        with self._lock:
            table = self._tables.get(ticket.ticket)
        if table is None:
            raise flight.FlightServerError(f"unknown ticket {ticket.ticket!r}")
        return flight.RecordBatchStream(table)

    def do_action(self, context, action):
        if action.type == "delete":
            body = json.loads(action.body.to_pybytes())
            key = f"{body['namespace']}/{body['name']}".encode()
            with self._lock:
                gone = self._tables.pop(key, None) is not None
            return [json.dumps({"deleted": int(gone)}).encode()]
        if action.type == "stats":
            with self._lock:
                stats = {"tables": len(self._tables),
                         "bytes": sum(t.nbytes for t in self._tables.values())}
            return [json.dumps(stats).encode()]
        raise flight.FlightServerError(f"unknown action {action.type!r}")

    def list_actions(self, context):
        return [("delete", "drop a table"), ("stats", "tables held and their bytes")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    server = InMemoryFlightServer(f"grpc://{args.host}:{args.port}")
    print(server.port, flush=True)

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    # The parent closing our stdin (or dying) also stops the server.
    threading.Thread(target=lambda: (sys.stdin.read(), stop()), daemon=True).start()
    server.serve()
    os._exit(0)


if __name__ == "__main__":
    main()
