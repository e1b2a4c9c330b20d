"""Bearer-token auth with pyarrow's client: no token, wrong token, a foreign namespace, the
`*` token, Handshake via authenticate_basic_token, the HTTP port, and auth off."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import expect_flight_error, get_table, http_request, put_table

TOKENS = """\
tokens:
  - token: t1
    namespaces: [analytics]
  - token: admin
    namespaces: ["*"]
"""

TABLE = pa.table({"x": [1, 2, 3]})


def bearer(token: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


@pytest.fixture
def auth_node(node, tmp_path):
    path = tmp_path / "tokens.yaml"
    path.write_text(TOKENS)
    return node("--token-file", str(path))


# pyarrow raises the Flight-specific classes for GetFlightInfo and actions. For DoPut, DoGet,
# ListFlights and GetSchema the same status may reach Python as a plain OSError (ArrowIOError),
# always with the "Flight returned <code> error" message, which the tests check as well.
STREAMS = ("DoPut", "DoGet", "ListFlights", "GetSchema")


def unauthenticated(name):
    cls = flight.FlightUnauthenticatedError
    return (cls, OSError) if name in STREAMS else cls


def unauthorized(name):
    cls = flight.FlightUnauthorizedError
    return (cls, OSError) if name in STREAMS else cls


def every_call(n, c, options, ns="analytics"):
    """Each RPC that touches a dataset, as zero-argument callables."""
    desc = flight.FlightDescriptor.for_path(ns, "data")
    return {
        "DoPut": lambda: put_table(c, (ns, "data"), TABLE, options=options),
        "DoGet": lambda: get_table(c, f"ads1:{ns}/data@1", options=options),
        "GetFlightInfo": lambda: c.get_flight_info(desc, options=options),
        "GetSchema": lambda: c.get_schema(desc, options=options),
        "ListFlights": lambda: list(c.list_flights(ns.encode(), options=options)),
        "evict": lambda: n.action(c, "evict", {"namespace": ns, "name": "data"}, options=options),
        "delete": lambda: n.action(c, "delete", {"namespace": ns, "name": "data", "version": 1},
                                   options=options),
    }


def test_missing_and_wrong_tokens_are_unauthenticated(auth_node):
    n = auth_node
    c = n.client()
    put_table(c, ("analytics", "data"), TABLE, options=bearer("admin"))
    for options in (None, bearer("wrong"), bearer("")):
        for name, call in every_call(n, c, options).items():
            err = expect_flight_error(unauthenticated(name), call,
                                      match="returned unauthenticated error")
            assert "token" in str(err).lower(), (name, err)
    expect_flight_error(flight.FlightUnauthenticatedError, n.stats, c)
    expect_flight_error(flight.FlightUnauthenticatedError, lambda: list(c.list_flights()))
    basic = flight.FlightCallOptions(headers=[(b"authorization", b"Digest abc")])
    expect_flight_error(flight.FlightUnauthenticatedError, c.get_flight_info,
                        flight.FlightDescriptor.for_path("analytics", "data"), options=basic)
    # Nothing was changed by the refused calls.
    assert get_table(c, "ads1:analytics/data@1", options=bearer("admin")).equals(TABLE)
    assert c.get_flight_info(flight.FlightDescriptor.for_path("analytics", "data"),
                             options=bearer("admin")).total_records == 3


def test_namespace_bound_token(auth_node):
    n = auth_node
    c = n.client()
    put_table(c, ("ops", "data"), TABLE, options=bearer("admin"))
    # t1 may do everything in analytics ...
    calls = every_call(n, c, bearer("t1"), ns="analytics")
    assert calls["DoPut"]()["version"] == 1
    assert calls["DoGet"]().equals(TABLE)
    assert calls["GetFlightInfo"]().total_records == 3
    assert calls["GetSchema"]().schema == TABLE.schema
    assert len(calls["ListFlights"]()) == 1
    assert json.loads(calls["evict"]()[0])["evicted"] == 1
    assert json.loads(calls["delete"]()[0]) == {"deleted": [1]}
    # ... and nothing in ops.
    for name, call in every_call(n, c, bearer("t1"), ns="ops").items():
        err = expect_flight_error(unauthorized(name), call, match="returned unauthorized error")
        assert '"ops"' in str(err), (name, err)
    expect_flight_error(flight.FlightUnauthorizedError, n.action, c, "renew",
                        {"ticket": "ads1:ops/data@1", "ttl": "1h"}, options=bearer("t1"))
    expect_flight_error(flight.FlightUnauthorizedError, n.action, c, "load",
                        {"namespace": "ops", "name": "x", "source": "a.csv"}, options=bearer("t1"))
    # Listing everything shows only the token's namespaces.
    put_table(c, ("analytics", "mine"), TABLE, options=bearer("t1"))
    listed = {tuple(p.decode() for p in i.descriptor.path)
              for i in c.list_flights(options=bearer("t1"))}
    assert listed == {("analytics", "mine")}
    # ops/data is intact.
    assert get_table(c, "ads1:ops/data@1", options=bearer("admin")).equals(TABLE)


def test_star_token_reaches_every_namespace(auth_node):
    n = auth_node
    c = n.client()
    for ns in ("analytics", "ops", "default"):
        calls = every_call(n, c, bearer("admin"), ns=ns)
        assert calls["DoPut"]()["version"] == 1
        assert calls["DoGet"]().equals(TABLE)
        assert calls["GetFlightInfo"]().total_records == 3
    listed = {tuple(p.decode() for p in i.descriptor.path)
              for i in c.list_flights(options=bearer("admin"))}
    assert listed == {("analytics", "data"), ("ops", "data"), ("default", "data")}
    assert "hits" in json.loads(n.action(c, "stats", options=bearer("admin"))[0])


def test_handshake_with_authenticate_basic_token(auth_node):
    n = auth_node
    c = n.client()
    header = c.authenticate_basic_token("", "t1")
    assert header[0].lower() == b"authorization"
    assert header[1] == b"Bearer t1"
    opts = flight.FlightCallOptions(headers=[header])
    assert put_table(c, ("analytics", "hs"), TABLE, options=opts)["version"] == 1
    expect_flight_error(unauthorized("DoPut"), put_table, c, ("ops", "hs"), TABLE,
                        options=opts, match="returned unauthorized error")
    # The token may also be given as the user name.
    assert c.authenticate_basic_token("admin", "")[1] == b"Bearer admin"
    expect_flight_error(flight.FlightUnauthenticatedError, c.authenticate_basic_token,
                        "", "nope")


def test_http_port_uses_the_same_tokens(auth_node):
    n = auth_node
    url = f"{n.http}/v1/datasets/analytics/web"
    status, raw, _ = http_request(url, method="POST", data=b"a\n1\n")
    assert status == 401, raw
    status, raw, _ = http_request(url, method="POST", data=b"a\n1\n",
                                  headers={"Authorization": "Bearer wrong"})
    assert status == 401, raw
    status, raw, _ = http_request(f"{n.http}/v1/datasets/ops/web", method="POST", data=b"a\n1\n",
                                  headers={"Authorization": "Bearer t1"})
    assert status == 403, raw
    status, raw, _ = http_request(url, method="POST", data=b"a\n1\n",
                                  headers={"Authorization": "Bearer t1"})
    assert status == 201, raw
    status, raw, _ = http_request(f"{url}?format=json", headers={"Authorization": "Bearer t1"})
    assert status == 200 and json.loads(raw) == [{"a": 1}]
    status, raw, _ = http_request(f"{url}?format=json")
    assert status == 401
    # Probes stay open.
    assert http_request(f"{n.http}/healthz")[0] == 200
    assert http_request(f"{n.http}/readyz")[0] == 200


def test_auth_off_everything_works_without_a_token(node):
    n = node()
    c = n.client()
    # One namespace per round: a deleted version keeps its number, so a second upload to
    # the same dataset would be version 2.
    for ns, options in (("ops", None), ("ops2", bearer("anything"))):
        calls = every_call(n, c, options, ns=ns)
        assert calls["DoPut"]()["version"] == 1
        assert calls["DoGet"]().equals(TABLE)
        assert calls["GetFlightInfo"]().total_records == 3
        assert calls["GetSchema"]().schema == TABLE.schema
        assert len(calls["ListFlights"]()) == 1
        assert json.loads(calls["evict"]()[0])["evicted"] >= 0
        assert json.loads(calls["delete"]()[0]) == {"deleted": [1]}
    # Handshake is accepted too.
    assert c.authenticate_basic_token("", "whatever")[1] == b"Bearer whatever"
