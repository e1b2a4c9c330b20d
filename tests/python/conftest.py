"""Fixtures for the pyarrow interop tests: a `node` factory that runs the real
`flight-node` binary, a `moto` fixture that runs an S3-compatible server process, and a
`minio` fixture: a fresh prefix on the MinIO server `make test` starts.

The binary is found through `FLIGHT_NODE_BIN` (the Makefile sets it), defaulting to
`target/debug/flight-node` under the repository root.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0


def node_binary() -> Path:
    path = Path(os.environ.get("FLIGHT_NODE_BIN", REPO_ROOT / "target" / "debug" / "flight-node"))
    if not path.is_file():
        pytest.fail(f"flight-node binary not found at {path}; run `cargo build -p flight-node`")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_request(url: str, method: str = "GET", data: bytes | None = None,
                 headers: dict | None = None, timeout: float = 10.0):
    """Returns (status, body bytes, headers) without raising on HTTP error statuses."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@dataclass
class Node:
    """A running flight-node process."""

    storage_dir: Path | None
    storage_url: str
    args: list[str]
    env: dict
    log_path: Path
    grpc_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen | None = None
    # Ports to listen on (the pool tests name them in a peers file before start).
    fixed_ports: tuple[int, int] | None = None
    _clients: list = field(default_factory=list)

    @property
    def location(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def client(self, **kwargs) -> flight.FlightClient:
        c = flight.FlightClient(self.location, **kwargs)
        self._clients.append(c)
        return c

    def start(self) -> "Node":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        # The node binds port 0 itself and reports the ports it got (no window in which
        # another process could take a port chosen here), unless the test names them.
        grpc_port, http_port = self.fixed_ports or (0, 0)
        ports_file = self.log_path.with_suffix(".ports.json")
        ports_file.unlink(missing_ok=True)
        cmd = [
            str(node_binary()),
            "--listen", f"127.0.0.1:{grpc_port}",
            "--http-listen", f"127.0.0.1:{http_port}",
            "--ports-file", str(ports_file),
            "--storage-url", self.storage_url,
            *self.args,
        ]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"flight-node exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            if not ports_file.exists():
                time.sleep(0.02)
                continue
            ports = json.loads(ports_file.read_text())
            self.grpc_port, self.http_port = ports["grpc"], ports["http"]
            try:
                status, _, _ = http_request(f"{self.http}/readyz", timeout=1.0)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"flight-node not ready within {START_TIMEOUT}s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:
                pass
        self._clients.clear()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> "Node":
        self.kill()
        return self.start()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def action(self, client: flight.FlightClient, kind: str, body=b"", options=None) -> list[bytes]:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        results = client.do_action(flight.Action(kind, body), options=options)
        return [r.body.to_pybytes() for r in results]

    def stats(self, client: flight.FlightClient) -> dict:
        return json.loads(self.action(client, "stats")[0])


@pytest.fixture
def node(tmp_path_factory, request):
    """Factory: `node(*flags, storage_url=None, env=None, storage_dir=None, ports=None)`
    starts a flight-node on a fresh `file://` directory (or the given storage URL or
    directory; `ports` = (gRPC, HTTP) to listen on) and returns a running `Node`. Every node
    is stopped at teardown."""
    started: list[Node] = []

    def make(*flags: str, storage_url: str | None = None, env: dict | None = None,
             storage_dir: Path | None = None, ports: tuple[int, int] | None = None) -> Node:
        base = tmp_path_factory.mktemp("node")
        if storage_url is None:
            storage_dir = storage_dir or (base / "data")
            storage_dir.mkdir(parents=True, exist_ok=True)
            storage_url = f"file://{storage_dir}"
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")}
        full_env.setdefault("RUST_LOG", "info")
        full_env.update(env or {})
        n = Node(storage_dir=storage_dir, storage_url=storage_url, args=list(flags),
                 env=full_env, log_path=base / "node.log", fixed_ports=ports)
        started.append(n)
        return n.start()

    yield make
    for n in started:
        n.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """A `moto_server` process on a free loopback port (one per session)."""
    exe = VENV_BIN / "moto_server"
    if not exe.exists():
        pytest.fail(f"moto_server not found next to {sys.executable}; install tests/requirements.txt")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            pytest.fail(f"moto_server exited: {log.read_text(errors='replace')}")
        try:
            http_request(f"{endpoint}/", timeout=1.0)
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto_server did not start")
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture
def moto(moto_server, request):
    """Creates a fresh bucket on the moto server; returns
    `(endpoint, bucket, boto3 client)`."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    bucket = "flight-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    s3.create_bucket(Bucket=bucket)
    return moto_server, bucket, s3


MINIO_ENV_VARS = ("MINIO_ENDPOINT", "MINIO_BUCKET", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY")
MINIO_REGION = "us-east-1"  # MinIO's default region


@dataclass
class MinioTarget:
    """A fresh prefix in the bucket of the test MinIO server."""

    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    prefix: str  # fresh per test, no leading or trailing "/"
    s3: object  # a boto3 S3 client with the server's credentials
    env: dict  # what a flight-node needs to reach it: AWS_ACCESS_KEY_ID, ...

    @property
    def storage_url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def host_port(self) -> str:
        return self.endpoint.split("://", 1)[-1].rstrip("/")

    def node_flags(self, endpoint: str | None = None) -> list[str]:
        """flight-node flags for this server (or another endpoint in front of it)."""
        return ["--storage-endpoint", endpoint or self.endpoint, "--allow-http"]

    def keys(self, under: str = "") -> list[str]:
        """Object keys under `<prefix>/<under>`, relative to the prefix, sorted."""
        base = f"{self.prefix}/"
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base + under):
            out += [o["Key"][len(base):] for o in page.get("Contents", [])]
        return sorted(out)


@pytest.fixture
def minio(request) -> MinioTarget:
    """The MinIO server `make test` starts (`tests/minio/minio up`), named by the
    environment (MINIO_ENDPOINT, MINIO_BUCKET, MINIO_ACCESS_KEY, MINIO_SECRET_KEY), with a
    prefix no other test uses. Fails with instructions when the environment is missing."""
    import uuid

    import boto3

    missing = [k for k in MINIO_ENV_VARS if not os.environ.get(k)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not set: this test needs a real MinIO server. Run it with "
            "`make test`, or start one with `tests/minio/minio up` and export its environment "
            "with `set -a; . target/minio/state/env; set +a` before running pytest")
    endpoint = os.environ["MINIO_ENDPOINT"].rstrip("/")
    access, secret = os.environ["MINIO_ACCESS_KEY"], os.environ["MINIO_SECRET_KEY"]
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=access,
                      aws_secret_access_key=secret, region_name=MINIO_REGION)
    try:
        s3.head_bucket(Bucket=os.environ["MINIO_BUCKET"])
    except Exception as e:
        pytest.fail(f"MinIO at MINIO_ENDPOINT={endpoint} does not answer for bucket "
                    f"{os.environ['MINIO_BUCKET']} ({e}); is the server from "
                    "`tests/minio/minio up` still running? (`tests/minio/minio status`)")
    name = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    return MinioTarget(
        endpoint=endpoint,
        bucket=os.environ["MINIO_BUCKET"],
        prefix=f"{name}-{uuid.uuid4().hex[:12]}",
        s3=s3,
        env={"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
             "AWS_REGION": MINIO_REGION},
    )


# ----- helpers shared by the test modules ---------------------------------------------------


def put_table(client: flight.FlightClient, path, table: pa.Table, options=None,
              max_chunksize: int | None = None) -> dict:
    """DoPut a table; returns the decoded PutResult JSON."""
    if isinstance(path, str):
        path = (path,)
    descriptor = flight.FlightDescriptor.for_path(*path)
    writer, reader = client.do_put(descriptor, table.schema, options=options)
    if max_chunksize is None:
        writer.write_table(table)
    else:
        writer.write_table(table, max_chunksize=max_chunksize)
    writer.done_writing()
    buf = reader.read()
    writer.close()
    assert buf is not None, "DoPut answered no PutResult"
    return json.loads(buf.to_pybytes())


def get_table(client: flight.FlightClient, ticket, options=None) -> pa.Table:
    if isinstance(ticket, str):
        ticket = ticket.encode()
    if isinstance(ticket, bytes):
        ticket = flight.Ticket(ticket)
    return client.do_get(ticket, options=options).read_all()


def expect_flight_error(exc_types, fn, *args, match: str | None = None, **kwargs):
    """Runs `fn`, asserting it raises one of `exc_types` whose message contains `match`
    (case-insensitive). Returns the exception."""
    with pytest.raises(exc_types) as info:
        fn(*args, **kwargs)
    if match is not None:
        assert match.lower() in str(info.value).lower(), f"{match!r} not in {info.value!r}"
    return info.value


def stored_state(storage: Path, ns: str, name: str):
    """(versions that have a manifest, files under parts/)."""
    d = storage / ns / name
    versions = sorted(int(m.name[1:].split(".")[0]) for m in d.glob("v*.manifest.json"))
    files = sorted(str(p.relative_to(d)) for p in (d / "parts").rglob("*") if p.is_file())
    return versions, files


def assert_state_returns_to(storage: Path, ns: str, name: str, want, timeout: float = 5.0):
    """A refused upload's parts are removed right after the refusal (possibly in the
    background): wait a bounded time for storage to look as it did before."""
    deadline = time.monotonic() + timeout
    while True:
        got = stored_state(storage, ns, name)
        if got == want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert got == want
    # Every part file left belongs to a committed manifest.
    d = storage / ns / name
    referenced = {p["path"].split(f"{ns}/{name}/", 1)[1]
                  for m in d.glob("v*.manifest.json") for p in json.loads(m.read_text())["parts"]}
    assert set(got[1]) == referenced
