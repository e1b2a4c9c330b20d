"""A pyarrow Flight client in its own process, driven over stdin/stdout.

The DoGet scenario gives every server its own warm client process, so that what one
server's stream does to a client's state (allocator heaps, thread pools, connection
windows) cannot speed up or slow down the other server's measurement. The client is
exactly what an atom runs: `FlightClient(uri).do_get(ticket).read_all()`.

Protocol, one line each way per request:
  harness -> fetcher:  `<ticket>`           (an empty line or EOF ends the process)
  fetcher -> harness:  `ok <seconds> <rows> <user_s> <sys_s> <minor_faults>`
                       or `error <message>`
The time and resource usage cover `do_get` up to `read_all` returning; the table is
released before the answer is written.
"""

from __future__ import annotations

import resource
import sys
import time

import pyarrow.flight as flight


def main() -> None:
    client = flight.FlightClient(sys.argv[1])
    print("ready", flush=True)
    for line in sys.stdin:
        ticket = line.strip()
        if not ticket:
            break
        try:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            table = client.do_get(flight.Ticket(ticket.encode())).read_all()
            elapsed = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            rows = table.num_rows
            del table
            print(f"ok {elapsed:.6f} {rows} {r1.ru_utime - r0.ru_utime:.6f} "
                  f"{r1.ru_stime - r0.ru_stime:.6f} {r1.ru_minflt - r0.ru_minflt}", flush=True)
        except Exception as e:  # reported to the harness, which fails the scenario
            print("error " + str(e).replace("\n", " "), flush=True)
    client.close()


if __name__ == "__main__":
    main()
