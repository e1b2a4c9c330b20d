"""Tests that need no node: tickets, error translation, settings, batch splitting."""

from __future__ import annotations

import datetime as dt
import json
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl
import pytest

import trinity_flight as tf
from trinity_flight._client import _ttl_text
from trinity_flight._convert import split_batches
from trinity_flight.errors import translate


def test_ticket_is_a_string_with_parts() -> None:
    t = tf.Ticket("ads1:analytics/sales@3")
    assert isinstance(t, str)
    assert t == "ads1:analytics/sales@3"
    assert (t.namespace, t.name, t.version, t.part, t.signature) == ("analytics", "sales", 3, None, None)
    assert json.loads(json.dumps({"t": t}))["t"] == t
    assert pickle.loads(pickle.dumps(t)).version == 3
    assert tf.Ticket(t) is t
    assert tf.Ticket(b"ads1:a/b@1").name == "b"
    assert repr(t) == "Ticket('ads1:analytics/sales@3')"


def test_ticket_part_signature_and_whitespace() -> None:
    t = tf.Ticket(" ads1:ns-1/x@12#4~AbC_-9\n")
    assert t == "ads1:ns-1/x@12#4~AbC_-9"
    assert (t.namespace, t.name, t.version, t.part, t.signature) == ("ns-1", "x", 12, 4, "AbC_-9")
    assert tf.Ticket.build("a", "b", 2, part=1) == "ads1:a/b@2#1"


@pytest.mark.parametrize(
    "bad",
    ["", "ads1", "ads2:a/b@1", "ads1:a/b", "ads1:a/b@0", "ads1:a/b@-1", "ads1:a/b@1x",
     "ads1:b@1", "ads1:../etc@1", "ads1:A/b@1", "ads1:a/b@1#", "ads1:a/b@1~", "x" * 600],
)
def test_malformed_tickets(bad: str) -> None:
    with pytest.raises(tf.InvalidRequest):
        tf.Ticket(bad)


def test_ticket_type_errors() -> None:
    with pytest.raises(TypeError):
        tf.Ticket(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc, cls, code, message",
    [
        (pa.ArrowKeyError("Flight returned not found error, with message: dataset default/x has no version 1. "
                          "gRPC client debug context: NOT_FOUND:... Client context: IOError: x. Detail: Internal"),
         tf.DatasetNotFound, "NOT_FOUND", "dataset default/x has no version 1"),
        (pa.ArrowInvalid("Flight returned invalid argument error, with message: data contract violation: "
                         "column id is missing. gRPC client debug context: x"),
         tf.ContractViolation, "INVALID_ARGUMENT", "data contract violation: column id is missing"),
        (pa.ArrowInvalid("Flight returned invalid argument error, with message: bad name"),
         tf.InvalidRequest, "INVALID_ARGUMENT", "bad name"),
        (fl.FlightUnauthenticatedError("Flight returned unauthenticated error, with message: unknown bearer token"),
         tf.Unauthorized, "UNAUTHENTICATED", "unknown bearer token"),
        (fl.FlightUnauthorizedError("Flight returned unauthorized error, with message: not yours"),
         tf.Unauthorized, "PERMISSION_DENIED", "not yours"),
        (pa.ArrowInvalid("gRPC returned resource exhausted error, with message: too big. gRPC client debug context: y"),
         tf.LimitExceeded, "RESOURCE_EXHAUSTED", "too big"),
        (fl.FlightUnavailableError("Flight returned unavailable error, with message: failed to connect"),
         tf.ServerUnavailable, "UNAVAILABLE", "failed to connect"),
        (fl.FlightInternalError("Flight returned internal error, with message: boom"),
         tf.FlightError, "INTERNAL", "boom"),
    ],
)
def test_translate(exc: Exception, cls: type, code: str, message: str) -> None:
    err = translate(exc)
    assert type(err) is cls
    assert err.code == code
    assert str(err) == message == err.message


def test_exception_hierarchy() -> None:
    assert issubclass(tf.ContractViolation, tf.InvalidRequest)
    assert issubclass(tf.InvalidRequest, ValueError)
    assert issubclass(tf.DatasetNotFound, LookupError)
    assert issubclass(tf.ServerUnavailable, ConnectionError)
    for cls in (tf.DatasetNotFound, tf.InvalidRequest, tf.Unauthorized, tf.LimitExceeded, tf.ServerUnavailable):
        assert issubclass(cls, tf.FlightError)


def test_settings_from_env(tmp_path, monkeypatch) -> None:
    s = tf.Settings.from_env({})
    assert s.uri == "grpc://localhost:8815" and s.token is None
    s = tf.Settings.from_env({"FLIGHT_URI": "grpc://n:1", "FLIGHT_TOKEN": "t", "FLIGHT_NAMESPACE": "analytics"})
    assert (s.uri, s.token, s.namespace) == ("grpc://n:1", "t", "analytics")
    ns_file = tmp_path / "namespace"
    ns_file.write_text("team-a\n")
    from trinity_flight import _config

    monkeypatch.setattr(_config.pod_namespace, "__defaults__", (str(ns_file),))
    assert tf.Settings.from_env({}).namespace == "team-a"
    assert tf.Settings.from_env({"FLIGHT_NAMESPACE": "x"}).namespace == "x"
    monkeypatch.setattr(_config.pod_namespace, "__defaults__", (str(tmp_path / "missing"),))
    assert tf.Settings.from_env({}).namespace == "default"


def test_ttl_text() -> None:
    assert _ttl_text("6h") == "6h"
    assert _ttl_text(dt.timedelta(hours=2)) == "7200s"
    assert _ttl_text(90) == "90s"
    with pytest.raises(tf.InvalidRequest):
        _ttl_text(0)
    with pytest.raises(TypeError):
        _ttl_text(True)


def test_split_batches_bounds_size() -> None:
    batch = pa.record_batch({"a": np.arange(1_000_000, dtype="int64")})  # 8 MB
    pieces = list(split_batches([batch], 1 << 20))
    assert len(pieces) >= 8
    assert all(p.nbytes <= (1 << 20) for p in pieces)
    assert sum(p.num_rows for p in pieces) == batch.num_rows
    assert list(split_batches([batch.slice(0, 10)], 1 << 20)) == [batch.slice(0, 10)]


_FAULTS_SCRIPT = """
import resource, sys
import trinity_flight as tf
kept = tf.keep_freed_memory() if sys.argv[1] == "keep" else None
def faults_of_a_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = bytearray(24 << 20)  # zero-filled: every page is touched
    del b
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_buffer()
print(kept, faults_of_a_buffer())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_lets_the_next_buffer_reuse_pages() -> None:
    def second_buffer_faults(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode],
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0], int(out[1])

    kept, faults_kept = second_buffer_faults("keep")
    _, faults_default = second_buffer_faults("default")
    assert kept == "True"
    pages = (24 << 20) // 4096
    # By default the freed buffer went back to the system and its pages fault in again.
    assert faults_default > pages // 2, faults_default
    assert faults_kept < pages // 10, faults_kept
    with pytest.raises(ValueError):
        tf.keep_freed_memory(-1)
