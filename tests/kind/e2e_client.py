"""Client side of the kind end-to-end test, run in the client pods (and optionally on the
host): upload a DataFrame, fetch it back by ticket, check an expired ticket is gone.

    python e2e_client.py upload NAME TTL      prints TICKET=<ticket> and ROWS=<n>
    python e2e_client.py fetch TICKET         checks the DataFrame round-trips exactly
    python e2e_client.py expect-gone TICKET   checks the ticket is NOT_FOUND

The connection comes from FLIGHT_URI and FLIGHT_NAMESPACE, as for any atom.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pandas.testing as pdt

import trinity_flight as tf
from trinity_flight.errors import DatasetNotFound

ROWS = 200_000


def frame() -> pd.DataFrame:
    """A deterministic frame with the dtypes atoms pass around."""
    rng = np.random.default_rng(20241125)
    return pd.DataFrame(
        {
            "order_id": np.arange(ROWS, dtype="int64"),
            "region": pd.Categorical(rng.choice(["emea", "amer", "apac"], ROWS)),
            "amount": rng.normal(100.0, 25.0, ROWS).round(2),
            "quantity": pd.array(rng.integers(0, 50, ROWS), dtype="Int64"),
            "ordered_at": pd.date_range("2024-01-01", periods=ROWS, freq="s", tz="UTC"),
            "note": [f"order {i}" for i in range(ROWS)],
        }
    )


def upload(name: str, ttl: str) -> int:
    ticket = tf.upload_dataframe(frame(), name, ttl=ttl)
    print(f"TICKET={ticket}", flush=True)
    print(f"ROWS={ROWS}", flush=True)
    return 0


def fetch(ticket: str) -> int:
    got = tf.download_dataframe(ticket)
    pdt.assert_frame_equal(got, frame())
    print(f"fetched {len(got)} rows by {ticket}: equal to the uploaded DataFrame", flush=True)
    return 0


def expect_gone(ticket: str) -> int:
    try:
        tf.download_dataframe(ticket)
    except DatasetNotFound as e:
        print(f"{ticket} is gone: {e}", flush=True)
        return 0
    print(f"{ticket} is still served after its TTL", file=sys.stderr, flush=True)
    return 1


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "upload":
        return upload(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "fetch":
        return fetch(argv[1])
    if len(argv) == 2 and argv[0] == "expect-gone":
        return expect_gone(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
