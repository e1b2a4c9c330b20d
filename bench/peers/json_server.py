"""Peer for the JSON scenario: the usual "REST endpoint returning records" baseline.

Loads a DataFrame once (from the Parquet file given), then answers every `GET /data` with
`df.to_json(orient="records", date_format="iso", date_unit="us")` serialized per request,
as a service holding a DataFrame would. HTTP/1.1 with keep-alive and Content-Length.
Prints its port on stdout once it listens; exits when stdin closes or on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--parquet", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    df = pd.read_parquet(args.parquet)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server naming)
            if self.path != "/data":
                self.send_error(404)
                return
            body = df.to_json(orient="records", date_format="iso", date_unit="us").encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer((args.host, 0), Handler)
    print(httpd.server_address[1], flush=True)

    def stop(*_):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=lambda: (sys.stdin.read(), stop()), daemon=True).start()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
