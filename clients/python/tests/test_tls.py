"""TLS options: root certificates, hostname override, disabled verification."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

import trinity_flight as tf

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def make_cert(tmp_path: Path) -> "tuple[Path, Path]":
    """A self-signed certificate for the host name flight.test."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=flight.test", "-addext", "subjectAltName=DNS:flight.test",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_node(start_node, tmp_path: Path):
    cert, key = make_cert(tmp_path)
    try:
        node = start_node("--tls-cert", str(cert), "--tls-key", str(key))
    except RuntimeError as e:
        if "CryptoProvider" in str(e):
            pytest.xfail("flight-node panics at start-up with --tls-cert: no rustls CryptoProvider installed")
        raise
    return node, cert


class TinyFlightServer(flight.FlightServerBase):
    """A minimal pyarrow Flight server speaking the node's DoPut/DoGet conventions, to check
    the client's TLS options against an independent implementation."""

    def __init__(self, location: str, **kwargs) -> None:
        super().__init__(location, **kwargs)
        self.tables: dict = {}

    def do_put(self, context, descriptor, reader, writer):
        ns, name = (p.decode() for p in descriptor.path)
        version = sum(1 for k in self.tables if k[:2] == (ns, name)) + 1
        table = reader.read_all()
        self.tables[(ns, name, version)] = table
        ticket = f"ads1:{ns}/{name}@{version}"
        writer.write(pa.py_buffer(json.dumps({
            "ticket": ticket, "namespace": ns, "name": name, "version": version,
            "rows": table.num_rows, "bytes": table.nbytes}).encode()))

    def get_flight_info(self, context, descriptor):
        raise NotImplementedError("GetFlightInfo is not offered")

    def do_get(self, context, ticket):
        t = tf.Ticket(ticket.ticket)
        return flight.RecordBatchStream(self.tables[(t.namespace, t.name, t.version)])


def test_tls_options_against_a_pyarrow_server(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    server = TinyFlightServer(
        "grpc+tls://127.0.0.1:0", tls_certificates=[(cert.read_bytes(), key.read_bytes())]
    )
    try:
        uri = f"grpc+tls://127.0.0.1:{server.port}"
        table = pa.table({"a": [1, 2, 3]})
        with tf.Client(uri, namespace="default", tls_root_certs=str(cert),
                       override_hostname="flight.test", retries=0) as c:
            t = c.upload_table(table, "tls")
            # This server has no GetFlightInfo: the ticket is fetched directly.
            assert c.download_table(t).equals(table)
        with tf.Client(uri, namespace="default", disable_server_verification=True) as c:
            assert c.download_dataframe(t)["a"].tolist() == [1, 2, 3]
        with tf.Client(uri, namespace="default", retries=0) as c:
            with pytest.raises(tf.ServerUnavailable):
                c.upload_table(table, "untrusted")
    finally:
        server.shutdown()


def test_tls_with_root_certs_and_hostname_override(tls_node) -> None:
    node, cert = tls_node
    uri = f"grpc+tls://127.0.0.1:{node.port}"
    table = pa.table({"a": [1, 2, 3]})
    with tf.Client(uri, namespace="default", tls_root_certs=str(cert), override_hostname="flight.test") as c:
        t = c.upload_table(table, "tls")
        assert c.download_table(t).equals(table)
    with tf.Client(uri, namespace="default", tls_root_certs=cert.read_bytes(),
                   override_hostname="flight.test") as c:
        assert c.download_table(t).equals(table)
    with tf.Client(uri, namespace="default", disable_server_verification=True) as c:
        assert c.download_table(t).equals(table)
    # Without trust in the certificate the connection fails.
    with tf.Client(uri, namespace="default", retries=0) as c:
        with pytest.raises(tf.ServerUnavailable):
            c.download_table(t)


def test_tls_root_certs_from_environment(tls_node, monkeypatch) -> None:
    node, cert = tls_node
    monkeypatch.setenv("FLIGHT_URI", f"grpc+tls://127.0.0.1:{node.port}")
    monkeypatch.setenv("FLIGHT_TLS_ROOT_CERTS", str(cert))
    monkeypatch.setenv("FLIGHT_NAMESPACE", "default")
    with tf.Client(override_hostname="flight.test") as c:
        t = c.upload_table(pa.table({"a": [1]}), "tls-env")
        assert c.download_table(t).num_rows == 1
