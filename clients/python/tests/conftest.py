"""Fixtures: real `flight-node` processes on free loopback ports with file:// storage.

The binary is taken from ``FLIGHT_NODE_BIN`` (default: ``<repo>/target/debug/flight-node``;
build it with ``cargo build -p flight-node``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

import trinity_flight as tf

REPO = Path(__file__).resolve().parents[3]
TOKENS_YAML = """\
tokens:
  - token: admin-token
    namespaces: ["*"]
  - token: analytics-token
    namespaces: ["analytics"]
"""
CONTRACTS_YAML = """\
contracts:
  sales-v1:
    fields:
      - { name: id, type: int64, nullable: false }
      - { name: amount, type: float64 }
"""


def node_binary() -> Path:
    path = Path(os.environ.get("FLIGHT_NODE_BIN") or REPO / "target" / "debug" / "flight-node")
    if not path.is_file():
        pytest.fail(
            f"flight-node binary not found at {path}; run `cargo build -p flight-node` "
            "or set FLIGHT_NODE_BIN",
            pytrace=False,
        )
    return path


class FlightNode:
    """One flight-node process. The first ``start()`` lets the node bind free ports and
    report them; ``stop()``/``start()`` keep the ports and the storage."""

    def __init__(self, workdir: Path, extra_args: Optional[List[str]] = None) -> None:
        self.workdir = workdir
        self.storage = workdir / "data"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.http_port = 0
        self.extra_args = list(extra_args or [])
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = workdir / "node.log"

    @property
    def uri(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "FlightNode":
        ports_file = self.workdir / "ports.json"
        ports_file.unlink(missing_ok=True)
        args = [
            str(node_binary()),
            "--listen", f"127.0.0.1:{self.port}",
            "--http-listen", f"127.0.0.1:{self.http_port}",
            "--ports-file", str(ports_file),
            "--storage-url", self.storage.as_uri(),
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")}
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flight-node exited early:\n{self.log_path.read_text()[-4000:]}")
            if not ports_file.exists():
                time.sleep(0.02)
                continue
            ports = json.loads(ports_file.read_text())
            self.port, self.http_port = ports["grpc"], ports["http"]
            url = f"http://127.0.0.1:{self.http_port}/readyz"
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"flight-node not ready after {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlightNode]:
    """A node without auth; 1 MiB parts so ~10 MB frames span several endpoints."""
    tmp = tmp_path_factory.mktemp("node")
    contracts = tmp / "contracts.yaml"
    contracts.write_text(CONTRACTS_YAML)
    n = FlightNode(tmp, ["--part-size", "1MiB", "--contracts-file", str(contracts)]).start()
    yield n
    n.stop()


@pytest.fixture(scope="session")
def auth_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlightNode]:
    """A node that requires bearer tokens (see TOKENS_YAML)."""
    tmp = tmp_path_factory.mktemp("auth-node")
    tokens = tmp / "tokens.yaml"
    tokens.write_text(TOKENS_YAML)
    n = FlightNode(tmp, ["--token-file", str(tokens)]).start()
    yield n
    n.stop()


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., FlightNode]]:
    """Starts extra nodes for one test (``start_node("--flag", "value", ...)``); all are
    stopped afterwards. Storage lives in the test's ``tmp_path``."""
    nodes: List[FlightNode] = []

    def start(*args: str) -> FlightNode:
        workdir = tmp_path / f"node-{len(nodes)}"
        workdir.mkdir()
        n = FlightNode(workdir, list(args))
        nodes.append(n)
        return n.start()

    yield start
    for n in nodes:
        n.stop()


@pytest.fixture
def node_class() -> type:
    """The FlightNode class, for tests that wire up nodes themselves (e.g. a pool)."""
    return FlightNode


@pytest.fixture
def client(node: FlightNode) -> Iterator[tf.Client]:
    with tf.Client(node.uri, namespace="default", retries=2, retry_backoff=0.05) as c:
        yield c


@pytest.fixture
def flight_env(node: FlightNode, monkeypatch: pytest.MonkeyPatch) -> FlightNode:
    """Points the module-level functions at ``node``."""
    monkeypatch.setenv("FLIGHT_URI", node.uri)
    monkeypatch.setenv("FLIGHT_NAMESPACE", "default")
    monkeypatch.delenv("FLIGHT_TOKEN", raising=False)
    monkeypatch.delenv("FLIGHT_TLS_ROOT_CERTS", raising=False)
    return node
