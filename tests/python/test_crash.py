"""Crash consistency: SIGKILL the node during uploads and right after acknowledgements,
restart it on the same storage, and check that every acknowledged upload reads back
identical and every visible version is exactly one of the tables that were sent."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import get_table, put_table

NS, NAME = "analytics", "crash"
ROWS = 30_000  # 480 KB of Arrow data: ~8 parts of 64 KiB


def make_table(uid: int) -> pa.Table:
    rng = np.random.default_rng(uid)
    return pa.table({
        "uid": pa.array(np.full(ROWS, uid, dtype=np.int64)),
        "v": pa.array(rng.integers(0, 2**40, size=ROWS, dtype=np.int64)),
    })


class Uploader(threading.Thread):
    """Uploads distinct tables one after another until the connection fails."""

    def __init__(self, location: str, first_uid: int, sent: dict, acked: dict):
        super().__init__(daemon=True)
        self.location = location
        self.uid = first_uid
        self.sent, self.acked = sent, acked
        self.started_upload = threading.Event()
        self.ack = threading.Event()
        self.error = None

    def run(self):
        client = flight.FlightClient(self.location)
        try:
            for _ in range(50):  # bounded
                table = make_table(self.uid)
                self.sent[self.uid] = table
                self.started_upload.set()
                opts = flight.FlightCallOptions(timeout=20)
                res = put_table(client, (NS, NAME), table, options=opts, max_chunksize=2_000)
                self.acked[self.uid] = res
                self.ack.set()
                self.uid += 1
        except Exception as e:  # the node was killed
            self.error = e
        finally:
            client.close()


def committed_upload_ids(storage):
    d = storage / NS / NAME
    return {json.loads(m.read_text())["uploadId"] for m in d.glob("v*.manifest.json")}


def wait_for_uncommitted_part(storage, timeout=10.0) -> bool:
    """True once a part file exists under an upload id no manifest references: an upload
    is in the middle of being written."""
    parts = storage / NS / NAME / "parts"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if parts.exists():
            committed = committed_upload_ids(storage)
            for d in parts.iterdir():
                if d.name not in committed and any(d.glob("*.parquet")):
                    return True
        time.sleep(0.005)
    return False


def kill_after(n, up: Uploader, moment: str, storage) -> None:
    if moment == "right-after-ack":
        assert up.ack.wait(20), "no upload was acknowledged"
        n.kill()
    elif moment == "during-upload":
        # After at least one ack, so the round also leaves committed data behind.
        assert up.ack.wait(20), "no upload was acknowledged"
        assert wait_for_uncommitted_part(storage), "never saw an upload in progress"
        n.kill()
    elif moment.startswith("after-"):
        time.sleep(float(moment.removeprefix("after-")))
        n.kill()
    else:
        raise AssertionError(moment)


MOMENTS = ["right-after-ack", "during-upload", "after-0.05", "right-after-ack",
           "during-upload", "after-0.3"]


def test_sigkill_during_and_after_uploads(node):
    n = node("--part-size", "64KiB")
    storage = n.storage_dir
    sent: dict[int, pa.Table] = {}
    acked: dict[int, dict] = {}
    uid = 0
    for moment in MOMENTS:
        up = Uploader(n.location, uid, sent, acked)
        up.start()
        assert up.started_upload.wait(10)
        kill_after(n, up, moment, storage)
        up.join(timeout=30)
        assert not up.is_alive(), "uploader did not notice the kill"
        assert up.error is not None, "uploads were expected to fail once the node died"
        uid = up.uid + 1  # the interrupted uid may or may not have been committed
        n.start()  # same storage dir, fresh process

    assert len(acked) >= 3, acked.keys()
    c = n.client()

    # 1. Every acknowledged upload reads back identical by its ticket.
    for u, res in acked.items():
        assert get_table(c, res["ticket"]).equals(sent[u]), f"acknowledged upload {u} differs"

    # 2. Every visible version is exactly one of the tables sent (no partial version).
    manifests = sorted((storage / NS / NAME).glob("v*.manifest.json"))
    versions = sorted(int(m.name[1:].split(".")[0]) for m in manifests)
    assert len(versions) >= len(acked)
    assert len(versions) == len(set(versions))
    seen_uids = []
    for v in versions:
        got = get_table(c, f"ads1:{NS}/{NAME}@{v}")
        uids = set(got.column("uid").to_pylist())
        assert len(uids) == 1, f"version {v} mixes uploads {uids}"
        u = uids.pop()
        assert u in sent, f"version {v} holds a table never sent"
        assert got.equals(sent[u]), f"version {v} is a partial or altered copy of upload {u}"
        seen_uids.append(u)
    assert len(seen_uids) == len(set(seen_uids)), "an upload was committed twice"
    # Acknowledged uploads are visible under the version their PutResult named.
    for u, res in acked.items():
        assert res["version"] in versions and seen_uids[versions.index(res["version"])] == u

    # 3. The read APIs agree with storage.
    info = c.get_flight_info(flight.FlightDescriptor.for_path(NS, NAME))
    latest = get_table(c, info.endpoints[0].ticket.ticket if len(info.endpoints) == 1
                       else f"ads1:{NS}/{NAME}@{max(versions)}")
    assert latest.equals(sent[seen_uids[-1]])
    assert info.total_records == ROWS
    listed = [i for i in c.list_flights(NS.encode())]
    assert len(listed) == 1 and listed[0].total_records == ROWS

    # 4. The node keeps accepting uploads after all that, with the next free version.
    res = put_table(c, (NS, NAME), make_table(10_000))
    assert res["version"] == max(versions) + 1
