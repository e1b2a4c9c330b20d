"""Example consumer atom: reads a ticket, downloads exactly that version, works on it.

The ticket comes from ``--ticket`` (text), else the file named by ``TICKET_FILE`` (or
``--ticket-file``), else the ``SALES_TICKET`` environment variable.

Connection settings come from the environment: FLIGHT_URI, FLIGHT_TOKEN, FLIGHT_NAMESPACE.
"""

from __future__ import annotations

import argparse
import os
import sys

import trinity_flight as tf


def read_ticket(args: argparse.Namespace) -> tf.Ticket:
    if args.ticket:
        return tf.Ticket(args.ticket)
    if args.ticket_file:
        with open(args.ticket_file, encoding="utf-8") as f:
            return tf.Ticket(f.read())  # surrounding whitespace is ignored
    if os.environ.get("SALES_TICKET"):
        return tf.Ticket(os.environ["SALES_TICKET"])
    raise SystemExit("no ticket: pass --ticket, --ticket-file/TICKET_FILE or set SALES_TICKET")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticket")
    parser.add_argument("--ticket-file", default=os.environ.get("TICKET_FILE"))
    args = parser.parse_args()

    ticket = read_ticket(args)
    try:
        df = tf.download_dataframe(ticket)
    except tf.DatasetNotFound as e:
        print(f"dataset gone (expired or deleted?): {e}", file=sys.stderr)
        return 2
    except tf.FlightError as e:
        print(f"download failed ({e.code}): {e}", file=sys.stderr)
        return 1

    summary = df.groupby("region", observed=True)["amount"].agg(["count", "sum"]).round(2)
    print(f"{ticket.namespace}/{ticket.name} version {ticket.version}: {len(df)} rows")
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
