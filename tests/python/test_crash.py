"""Crash consistency: SIGKILL the node during uploads and right after acknowledgements,
restart it on the same storage, and check that every acknowledged upload reads back
identical and every visible version is exactly one of the tables that were sent.

On local disk (`file://`) a few kills at chosen moments; on MinIO (`s3://`) a bounded
stress of many kills while two clients upload to one dataset at once, so versions are
allocated concurrently by create-only manifest commits."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

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


# ----- kill -9 stress against MinIO ---------------------------------------------------------

STRESS_KILLS = 40  # SIGKILLs, one per round
STRESS_UPLOADERS = 2  # clients uploading to the dataset at once in every round
STRESS_MAX_PER_UPLOADER = 12  # uploads per client and round, at most (bounds a round)
STRESS_ROWS = 8_000  # 128 KB of Arrow data: 4 parts of 32 KiB


def make_small_table(uid: int) -> pa.Table:
    rng = np.random.default_rng(uid)
    return pa.table({
        "uid": pa.array(np.full(STRESS_ROWS, uid, dtype=np.int64)),
        "v": pa.array(rng.integers(0, 2**40, size=STRESS_ROWS, dtype=np.int64)),
    })


@dataclass
class Round:
    """Shared by the uploaders of one node's life: what was sent and acknowledged."""

    sent: dict
    acked: dict
    next_uid: list  # [int], under lock
    lock: threading.Lock = field(default_factory=threading.Lock)
    acks: threading.Condition = field(default_factory=threading.Condition)
    acks_this_round: int = 0
    killed_at: float | None = None

    def take_uid(self) -> int:
        with self.lock:
            uid = self.next_uid[0]
            self.next_uid[0] += 1
            return uid

    def acked_one(self) -> None:
        with self.acks:
            self.acks_this_round += 1
            self.acks.notify_all()

    def wait_for_acks(self, n: int, timeout: float = 20.0) -> bool:
        with self.acks:
            return self.acks.wait_for(lambda: self.acks_this_round >= n, timeout=timeout)


class StressUploader(threading.Thread):
    def __init__(self, location: str, rnd: Round):
        super().__init__(daemon=True)
        self.location, self.rnd = location, rnd
        self.error = None
        self.error_at = None

    def run(self):
        client = flight.FlightClient(self.location)
        try:
            for _ in range(STRESS_MAX_PER_UPLOADER):
                uid = self.rnd.take_uid()
                table = make_small_table(uid)
                self.rnd.sent[uid] = table
                opts = flight.FlightCallOptions(timeout=20)
                res = put_table(client, (NS, NAME), table, options=opts, max_chunksize=1_000)
                self.rnd.acked[uid] = res
                self.rnd.acked_one()
        except Exception as e:  # the node was killed (checked against the kill time)
            self.error, self.error_at = e, time.monotonic()
        finally:
            client.close()


class CommittedUploads:
    """Upload ids named by committed manifests in MinIO (manifests never change: each is
    read once)."""

    def __init__(self, minio):
        self.minio = minio
        self.by_manifest: dict[str, str] = {}

    def uncommitted_part_exists(self) -> bool:
        keys = self.minio.keys(f"{NS}/{NAME}/")
        for k in keys:
            if k.endswith(".manifest.json") and k not in self.by_manifest:
                body = self.minio.s3.get_object(Bucket=self.minio.bucket,
                                                Key=f"{self.minio.prefix}/{k}")["Body"].read()
                self.by_manifest[k] = json.loads(body)["uploadId"]
        committed = set(self.by_manifest.values())
        for k in keys:
            parts = k.split("/")  # ns/name/parts/<upload id>/part-<k>.parquet
            if (len(parts) == 5 and parts[2] == "parts" and parts[4].endswith(".parquet")
                    and parts[3] not in committed):
                return True
        return False


def stress_kill(n, rnd: Round, moment: str, committed: CommittedUploads) -> None:
    kind, _, arg = moment.partition(":")
    if kind == "acks":  # right after the n-th acknowledgement of this round
        assert rnd.wait_for_acks(int(arg)), f"{moment}: too few acknowledgements"
    elif kind == "during-upload":  # after one ack, while an upload's parts are being written
        assert rnd.wait_for_acks(1), f"{moment}: no acknowledgement"
        deadline = time.monotonic() + 10
        while not committed.uncommitted_part_exists():
            assert time.monotonic() < deadline, "never saw an upload in progress"
            time.sleep(0.005)
    elif kind == "after":  # a random moment
        time.sleep(float(arg))
    else:
        raise AssertionError(moment)
    rnd.killed_at = time.monotonic()
    n.kill()


def retry_port_clash(start, attempts: int = 3):
    """Runs `start` (which starts a node) again when the node could not bind the port it was
    given: ports are chosen free, but until the node binds them, the many outgoing
    connections to MinIO draw local ports from the same range and can take one first."""
    for attempt in range(attempts):
        try:
            return start()
        except RuntimeError as e:
            if "Address already in use" not in str(e).splitlines()[-1] or attempt + 1 == attempts:
                raise


def stress_moments(rng) -> list[str]:
    out = []
    for i in range(STRESS_KILLS):
        kind = ("acks", "during-upload", "after")[i % 3]
        if kind == "acks":
            out.append(f"acks:{int(rng.integers(1, 7))}")
        elif kind == "after":
            out.append(f"after:{float(rng.uniform(0.0, 0.4)):.3f}")
        else:
            out.append(kind)
    return out


def test_sigkill_stress_on_minio(node, minio):
    """Two clients upload to one dataset while the node is killed with SIGKILL again and
    again (STRESS_KILLS rounds, each ending at an acknowledgement, mid-upload or at a random
    moment); then a fresh node reads every acknowledged upload cold and finds every visible
    version to be exactly one of the tables sent."""
    started = time.monotonic()
    rng = np.random.default_rng(20261201)
    moments = stress_moments(rng)
    flags = [*minio.node_flags(), "--part-size", "32KiB"]
    n = retry_port_clash(lambda: node(*flags, storage_url=minio.storage_url, env=minio.env))
    committed = CommittedUploads(minio)
    sent: dict[int, pa.Table] = {}
    acked: dict[int, dict] = {}
    next_uid = [0]
    for i, moment in enumerate(moments):
        if i > 0:
            retry_port_clash(n.start)  # same storage, fresh process
        rnd = Round(sent, acked, next_uid)
        ups = [StressUploader(n.location, rnd) for _ in range(STRESS_UPLOADERS)]
        for u in ups:
            u.start()
        stress_kill(n, rnd, moment, committed)
        for u in ups:
            u.join(timeout=30)
            assert not u.is_alive(), f"round {i} ({moment}): an uploader did not notice the kill"
            # A client stops only because the node died: no upload failed while it was up.
            if u.error is not None:
                assert u.error_at >= rnd.killed_at, (
                    f"round {i} ({moment}): upload failed before the kill: {u.error!r}\n"
                    f"{n.log_tail()}")
    stress_time = time.monotonic() - started
    assert len(sent) >= 100, f"only {len(sent)} uploads in {STRESS_KILLS} rounds"
    assert len(acked) >= 60, f"only {len(acked)} of {len(sent)} uploads acknowledged"

    # A fresh node (new process, nothing cached) reads every acknowledged upload.
    fresh = retry_port_clash(
        lambda: node(*flags, storage_url=minio.storage_url, env=minio.env))
    c = fresh.client()
    for u, res in acked.items():
        assert get_table(c, res["ticket"]).equals(sent[u]), f"acknowledged upload {u} differs"
    stats = fresh.stats(c)
    # Every read came from storage (one miss per part of each version, nothing hot).
    assert stats["misses"] >= len(acked) and stats["hits"] == 0, stats

    # Every visible version is exactly one of the tables sent, each upload at most once, and
    # every acknowledged upload under the version its PutResult named.
    manifests = [k for k in minio.keys(f"{NS}/{NAME}/") if k.endswith(".manifest.json")]
    versions = sorted(int(k.rsplit("/", 1)[1][1:].split(".")[0]) for k in manifests)
    assert len(versions) >= len(acked)
    uid_of_version = {}
    for v in versions:
        got = get_table(c, f"ads1:{NS}/{NAME}@{v}")
        uids = set(got.column("uid").to_pylist())
        assert len(uids) == 1, f"version {v} mixes uploads {uids}"
        u = uids.pop()
        assert u in sent, f"version {v} holds a table never sent"
        assert got.equals(sent[u]), f"version {v} is a partial or altered copy of upload {u}"
        uid_of_version[v] = u
    seen = list(uid_of_version.values())
    assert len(seen) == len(set(seen)), "an upload was committed twice"
    for u, res in acked.items():
        assert uid_of_version.get(res["version"]) == u, (
            f"acknowledged upload {u} is not version {res['version']}")

    # The fresh node keeps accepting uploads, with the next free version.
    res = put_table(c, (NS, NAME), make_small_table(1_000_000))
    assert res["version"] == max(versions) + 1
    print(f"\n{STRESS_KILLS} kills, {len(sent)} uploads, {len(acked)} acknowledged, "
          f"{len(versions)} versions; stress {stress_time:.1f}s, "
          f"total {time.monotonic() - started:.1f}s")
