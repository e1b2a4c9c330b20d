"""An atom reading a ticket into a pandas DataFrame, in its own process, driven over
stdin/stdout (like `flight_fetcher.py`, one process per contender so that one contender's
allocator and thread state cannot help or hurt another's).

    atom_reader.py trinity <uri>   trinity_flight.Client(uri).download_dataframe(ticket, ...)
    atom_reader.py pyarrow <uri>   pyarrow's FlightClient(uri).do_get(ticket).read_all()
                                   .to_pandas() -- the best a pyarrow user gets

Protocol, one line each way per request:
  harness -> reader:  JSON {"ticket": "...", "columns": [...] | null, "limit": N | null,
                            "repeat": K}       (an empty line or EOF ends the process)
  reader -> harness:  `ok <json>` with {"times": [K seconds], "rows": R, "columns": C,
                                        "fingerprint": "..."} or `error <message>`
Each time covers the call up to the DataFrame being built; the fingerprint (dtypes, shape
and a hash of some rows, computed after the clock stopped) lets the harness check that the
contenders built the same DataFrame.
"""

from __future__ import annotations

import json
import sys
import time

import pandas as pd
import pyarrow.flight as flight


def fingerprint(df: pd.DataFrame) -> str:
    n = len(df)
    rows = sorted({0, n // 3, n // 2, n - 1} - {-1}) if n else []
    sample = df.iloc[rows] if rows else df
    hashed = int(pd.util.hash_pandas_object(sample, index=False).sum()) if rows else 0
    dtypes = ",".join(f"{c}:{t}" for c, t in df.dtypes.items())
    return f"{df.shape}|{dtypes}|{hashed}"


def main() -> None:
    mode, uri = sys.argv[1], sys.argv[2]
    if mode == "trinity":
        import trinity_flight as tf

        client = tf.Client(uri)

        def read(req: dict) -> pd.DataFrame:
            return client.download_dataframe(req["ticket"], columns=req.get("columns"),
                                             limit=req.get("limit"))
    elif mode == "pyarrow":
        client = flight.FlightClient(uri)

        def read(req: dict) -> pd.DataFrame:
            if req.get("columns") is not None or req.get("limit") is not None:
                raise ValueError("pyarrow's server has no column or row selection")
            ticket = flight.Ticket(req["ticket"].encode())
            return client.do_get(ticket).read_all().to_pandas()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        try:
            req = json.loads(line)
            times = []
            df = None
            for _ in range(int(req.get("repeat", 1))):
                df = None  # the previous frame is freed before the next read
                t0 = time.perf_counter()
                df = read(req)
                times.append(time.perf_counter() - t0)
            answer = {"times": times, "rows": len(df), "columns": df.shape[1],
                      "fingerprint": fingerprint(df)}
            del df
            print("ok " + json.dumps(answer), flush=True)
        except Exception as e:  # reported to the harness, which fails the scenario
            print("error " + f"{type(e).__name__}: {e}".replace("\n", " "), flush=True)
    client.close()


if __name__ == "__main__":
    main()
