"""Example producer atom: builds a DataFrame, uploads it, hands the ticket downstream.

The ticket goes to the file named by ``TICKET_FILE`` (or ``--ticket-file``) when given --
e.g. an Argo/Kubeflow output parameter path -- and is always printed on stdout, so a shell
step can capture it: ``export SALES_TICKET=$(python producer.py)``.

Connection settings come from the environment: FLIGHT_URI, FLIGHT_TOKEN, FLIGHT_NAMESPACE.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

import trinity_flight as tf


def build_frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(42)
    return pd.DataFrame(
        {
            "order_id": np.arange(rows, dtype="int64"),
            "sold_at": pd.date_range("2024-01-01", periods=rows, freq="min", tz="Europe/Berlin"),
            "region": pd.Categorical(rng.choice(["north", "south", "east", "west"], rows)),
            "amount": rng.gamma(2.0, 20.0, rows).round(2),
            "discount": pd.array([None if x < 0.8 else 5 for x in rng.random(rows)], dtype="Int64"),
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="sales", help="dataset name (default: sales)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--ttl", default="6h", help="how long the version lives (default: 6h)")
    parser.add_argument("--ticket-file", default=os.environ.get("TICKET_FILE"))
    args = parser.parse_args()

    df = build_frame(args.rows)
    try:
        ticket = tf.upload_dataframe(df, args.name, ttl=args.ttl)
    except tf.FlightError as e:
        print(f"upload failed ({e.code}): {e}", file=sys.stderr)
        return 1
    if args.ticket_file:
        with open(args.ticket_file, "w", encoding="utf-8") as f:
            f.write(ticket + "\n")
    print(ticket)
    print(f"uploaded {len(df)} rows as version {ticket.version} of "
          f"{ticket.namespace}/{ticket.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
