"""Ceiling for the DoGet scenario: a raw loopback TCP sender.

Listens on a loopback port (printed on stdout). Each request on a connection is an 8-byte
big-endian length N; the sender answers with N bytes sent from one preallocated buffer with
large `sendall` calls. No framing, no serialization: the most a single TCP stream on this
machine carries from one process to another.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading

CHUNK = 16 << 20


def recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        got = conn.recv(n - len(buf))
        if not got:
            return None
        buf += got
    return bytes(buf)


def serve_conn(conn: socket.socket, payload: memoryview) -> None:
    with conn:
        while True:
            head = recv_exact(conn, 8)
            if head is None:
                return
            (remaining,) = struct.unpack(">Q", head)
            while remaining > 0:
                n = min(remaining, CHUNK)
                conn.sendall(payload[:n])
                remaining -= n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args()
    payload = memoryview(bytearray(b"\xa5" * CHUNK))
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, 0))
    srv.listen(8)
    print(srv.getsockname()[1], flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), srv.close()), daemon=True).start()
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        threading.Thread(target=serve_conn, args=(conn, payload), daemon=True).start()


if __name__ == "__main__":
    main()
