"""Namespace isolation, invariant (I5): a token for namespace A can neither read, list,
learn about nor change anything of namespace B through any RPC, action, HTTP route or
metric.

One node serves three tokens: `tok-a` → [alpha], `tok-b` → [beta], `tok-star` → ["*"].
Beta holds a dataset with a distinctive name (`secret-ledger`) and distinctive values
(`beta-secret-value`), and a CSV object under its storage prefix (`beta/incoming/x.csv`);
alpha holds a table of its own, and a shared area (`shared/y.csv`) belongs to no namespace.

Every gRPC method, every `DoAction` type and every HTTP route is called by four callers —
no token, a wrong token, `tok-a` and `tok-star` — and must answer the documented code:

* no token or a wrong token: UNAUTHENTICATED / 401 for everything that touches data; the
  HTTP probes (`/healthz`, `/readyz`, `/metrics`) may answer, but never with beta's names
  or values;
* `tok-a` on beta: PERMISSION_DENIED / 403, and no answer (message text, JSON) names beta's
  dataset or shows its values;
* `tok-a` on calls that are not scoped to one namespace (ListFlights without criteria,
  `stats`, ListActions): answered, with alpha's things only;
* `tok-star`: success (writes and deletes go to beta datasets made for that, so that
  `secret-ledger` itself stays untouched).

Every call by a caller without beta's grant must leave beta's records, parts and objects in
storage byte for byte as they were. `load` gets its own table: a `tok-a` load into alpha may
read only alpha's prefix (and shared prefixes the node was started with
`--load-source-prefix`), whichever way the source is spelled. At the end, beta's dataset is
checked to be the same version with the same data.

pyarrow reports most statuses as Flight-specific exceptions, some streaming calls as plain
OSError; all carry "Flight returned <code> error", which is what the code of a cell is read
from. PollFlightInfo is called through grpcio (pyarrow's client has no method for it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from conftest import Node, get_table, http_request, put_table

TOKENS = """\
tokens:
  - {token: tok-a, namespaces: [alpha]}
  - {token: tok-b, namespaces: [beta]}
  - {token: tok-star, namespaces: ["*"]}
"""

SECRET_NAME = "secret-ledger"
SECRET_VALUE = "beta-secret-value"
INCOMING_VALUE = "beta-incoming-value"  # inside beta/incoming/x.csv
SECRET = pa.table({"account": [SECRET_VALUE, SECRET_VALUE + "-2"], "amount": [10.5, 20.25]})
ALPHA_NAME = "alpha-table"
ALPHA = pa.table({"x": ["alpha-value"]})
BETA_CSV = f"account,amount\n{INCOMING_VALUE},1\n"
ALPHA_CSV = "a\nalpha-incoming-value\n"
SHARED_CSV = "k,n\nshared-value,1\n"
LOOKALIKE_CSV = "k\nlookalike-value\n"

# What no answer to a caller without beta's grant may contain.
FORBIDDEN = (SECRET_NAME, SECRET_VALUE, INCOMING_VALUE)
# A load names beta's objects in its own request (and the refusal may quote it back): there
# only beta's values count.
FORBIDDEN_VALUES = (SECRET_VALUE, INCOMING_VALUE)

CALLERS = ("no-token", "wrong-token", "tok-a", "tok-star")
TOKEN_OF = {"no-token": None, "wrong-token": "tok-wrong", "tok-a": "tok-a", "tok-b": "tok-b",
            "tok-star": "tok-star"}

OK = "OK"
UNAUTHENTICATED = "UNAUTHENTICATED"
PERMISSION_DENIED = "PERMISSION_DENIED"
NOT_FOUND = "NOT_FOUND"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNIMPLEMENTED = "UNIMPLEMENTED"

# pyarrow's wording of each gRPC status ("Flight returned <word> error, with message: ...").
PYARROW_CODE_WORDS = {
    "unauthenticated": UNAUTHENTICATED,
    "unauthorized": PERMISSION_DENIED,
    "not found": NOT_FOUND,
    "invalid argument": INVALID_ARGUMENT,
    "unimplemented": UNIMPLEMENTED,
    "internal": "INTERNAL",
    "unavailable": "UNAVAILABLE",
    "unknown": "UNKNOWN",
    "cancelled": "CANCELLED",
    "timed out": "DEADLINE_EXCEEDED",
    "already exists": "ALREADY_EXISTS",
}
_RETURNED = re.compile(r"Flight returned (.+?) error")

# Objects that make up a dataset's or a namespace's content in storage: records (manifests
# and tombstones), Parquet parts and the CSV objects a load reads. (Markers of uploads in
# flight are bookkeeping and may come and go on their own.)
CONTENT_SUFFIXES = (".manifest.json", ".parquet", ".csv")


# ----- callers and answers ------------------------------------------------------------------


def authorization(caller: str) -> bytes | None:
    token = TOKEN_OF[caller]
    return None if token is None else f"Bearer {token}".encode()


def call_options(caller: str) -> flight.FlightCallOptions | None:
    header = authorization(caller)
    return None if header is None else flight.FlightCallOptions(
        headers=[(b"authorization", header)])


def http_headers(caller: str) -> dict:
    header = authorization(caller)
    return {} if header is None else {"Authorization": header.decode()}


@dataclass
class HttpAnswer:
    status: int
    body: bytes


def status_of(error: BaseException) -> str:
    """The gRPC code of a refused call, as the server sent it."""
    if isinstance(error, grpc.RpcError):
        return error.code().name
    m = _RETURNED.search(str(error))
    if m is None:
        raise error  # not a status from the server: a bug in the test or the client
    word = m.group(1).lower()
    return PYARROW_CODE_WORDS.get(word, word.upper().replace(" ", "_"))


def run(call: Callable[[], Any]) -> tuple[Any, Any]:
    """(code, answer): the gRPC code (OK or the status) or the HTTP status, and the answer
    (the result, the exception or the HttpAnswer)."""
    try:
        answer = call()
    except AssertionError:
        raise
    except Exception as e:  # noqa: BLE001 - every status is classified by status_of
        return status_of(e), e
    if isinstance(answer, HttpAnswer):
        return answer.status, answer
    return OK, answer


def exposed(value) -> bytes:
    """Everything an answer shows its caller, as bytes to search."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, HttpAnswer):
        return value.body
    if isinstance(value, grpc.RpcError):
        return f"{value.code()} {value.details()}".encode()
    if isinstance(value, BaseException):
        extra = getattr(value, "extra_info", None) or b""
        return str(value).encode() + b"\n" + bytes(extra)
    if isinstance(value, (list, tuple)):
        return b"\n".join(exposed(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value).encode()
    if isinstance(value, (flight.FlightInfo, flight.FlightEndpoint)):
        return value.serialize()
    if isinstance(value, flight.SchemaResult):
        return exposed(value.schema)
    if isinstance(value, pa.Schema):
        return value.serialize().to_pybytes() + str(value).encode()
    if isinstance(value, pa.Table):
        return exposed(value.schema) + json.dumps(value.to_pylist(), default=str).encode()
    if isinstance(value, flight.ActionType):
        return f"{value.type} {value.description}".encode()
    return repr(value).encode()


def assert_shows_nothing_of_beta(answer, where: str, forbidden=FORBIDDEN):
    blob = exposed(answer)
    leaked = [s for s in forbidden if s.encode() in blob]
    assert not leaked, f"{where}: the answer shows beta's {leaked}: {blob[:600]!r}"


def paths_of(infos) -> set[tuple[str, str]]:
    return {tuple(p.decode() for p in i.descriptor.path) for i in infos}


def json_answer(answer) -> dict:
    assert len(answer) == 1, answer
    return json.loads(answer[0])


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_message_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def pb_fields(message: bytes) -> dict[int, bytes | int]:
    """The top-level fields of a protobuf message: length-delimited ones as bytes, varints
    as ints (the last occurrence wins)."""
    def varint(pos):
        value = shift = 0
        while True:
            b = message[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value, pos
    out, pos = {}, 0
    while pos < len(message):
        key, pos = varint(pos)
        number, kind = key >> 3, key & 7
        if kind == 2:
            length, pos = varint(pos)
            out[number], pos = message[pos:pos + length], pos + length
        elif kind == 0:
            out[number], pos = varint(pos)
        elif kind == 1:
            out[number], pos = message[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unexpected protobuf wire type {kind}")
    return out


def renew_endpoint_request(ticket: str) -> bytes:
    """RenewFlightEndpointRequest{endpoint = 1}: the ticket and the wanted expiration."""
    until = pa.scalar(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1),
                      type=pa.timestamp("ns", tz="UTC"))
    endpoint = flight.FlightEndpoint(ticket.encode(), [], expiration_time=until)
    return pb_message_field(1, endpoint.serialize())


class EmptyHandshake(flight.ClientAuthHandler):
    """A Handshake with an empty payload and no authorization header: no token at all."""

    def __init__(self):
        super().__init__()
        self.answer = None

    def authenticate(self, outgoing, incoming):
        outgoing.write(b"")
        self.answer = incoming.read()

    def get_token(self):
        return b""


# ----- the node -----------------------------------------------------------------------------


def write_object(storage: Path, key: str, text: str) -> None:
    path = storage / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def content_of(storage: Path, prefix: str) -> dict[str, str]:
    """SHA-256 of every content object under `<storage>/<prefix>`, by key."""
    out = {}
    for root, _dirs, files in os.walk(storage / prefix):
        for name in files:
            if not name.endswith(CONTENT_SUFFIXES):
                continue
            path = Path(root) / name
            try:
                out[str(path.relative_to(storage))] = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                pass
    return out


@dataclass
class World:
    node: Node
    client: flight.FlightClient
    channel: grpc.Channel
    secret_ticket: str = ""
    secret_info: bytes = b""  # beta's FlightInfo, serialized
    secret_records: dict = field(default_factory=dict)

    @property
    def storage(self) -> Path:
        return self.node.storage_dir

    def action(self, caller: str, kind: str, body=b"") -> list[bytes]:
        return self.node.action(self.client, kind, body, options=call_options(caller))

    def get(self, caller: str, ticket: str) -> pa.Table:
        return get_table(self.client, ticket, options=call_options(caller))

    def http(self, caller: str, path: str, method: str = "GET", data: bytes | None = None):
        status, body, _ = http_request(f"{self.node.http}{path}", method=method, data=data,
                                       headers=http_headers(caller))
        return HttpAnswer(status, body)

    def raw_unary(self, method: str, request: bytes, caller: str) -> bytes:
        call = self.channel.unary_unary(f"/arrow.flight.protocol.FlightService/{method}",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
        header = authorization(caller)
        metadata = [] if header is None else [("authorization", header.decode())]
        return call(request, metadata=metadata, timeout=30)

    def beta_content(self) -> dict[str, str]:
        return content_of(self.storage, "beta")

    def load(self, caller: str, namespace: str, name: str, source: str, **extra):
        body = {"namespace": namespace, "name": name, "source": source, **extra}
        return self.action(caller, "load", body)

    def exists(self, namespace: str, name: str) -> bool:
        """Whether any version of the dataset was committed (read with tok-star)."""
        try:
            self.client.get_flight_info(flight.FlightDescriptor.for_path(namespace, name),
                                        options=call_options("tok-star"))
        except Exception as e:  # noqa: BLE001
            assert status_of(e) == NOT_FOUND, e
            return False
        return True


def start_world(tmp_path_factory, *flags: str) -> World:
    base = tmp_path_factory.mktemp("isolation")
    storage = base / "data"
    storage.mkdir()
    tokens = base / "tokens.yaml"
    tokens.write_text(TOKENS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_")}
    env.setdefault("RUST_LOG", "info")
    node = Node(storage_dir=storage, storage_url=f"file://{storage}",
                args=["--token-file", str(tokens), *flags], env=env,
                log_path=base / "node.log")
    node.start()
    world = World(node=node, client=node.client(),
                  channel=grpc.insecure_channel(node.location.removeprefix("grpc://")))
    # Objects a load may or may not read.
    write_object(storage, "beta/incoming/x.csv", BETA_CSV)
    write_object(storage, "alpha/incoming/a.csv", ALPHA_CSV)
    write_object(storage, "shared/y.csv", SHARED_CSV)
    write_object(storage, "alphabet/incoming/z.csv", LOOKALIKE_CSV)  # a namespace "alpha*"
    write_object(storage, "shared2/z.csv", LOOKALIKE_CSV)  # a prefix "shared*"
    return world


def stop_world(world: World) -> None:
    world.channel.close()
    world.node.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The node every matrix cell talks to, with beta's secret, alpha's table and the beta
    datasets tok-star may write, renew and delete."""
    w = start_world(tmp_path_factory)
    c, b = w.client, call_options("tok-b")
    w.secret_ticket = put_table(c, ("beta", SECRET_NAME), SECRET, options=b)["ticket"]
    assert w.secret_ticket == f"ads1:beta/{SECRET_NAME}@1"
    for scratch in ("doomed", "renewable"):
        put_table(c, ("beta", scratch), pa.table({"v": [1]}), options=b)
    put_table(c, ("alpha", ALPHA_NAME), ALPHA, options=call_options("tok-a"))
    w.secret_info = c.get_flight_info(flight.FlightDescriptor.for_path("beta", SECRET_NAME),
                                      options=b).serialize()
    w.secret_records = content_of(w.storage, f"beta/{SECRET_NAME}")
    assert any(k.endswith("v1.manifest.json") for k in w.secret_records), w.secret_records
    assert any(k.endswith(".parquet") for k in w.secret_records), w.secret_records
    yield w
    stop_world(w)


# ----- the matrix ---------------------------------------------------------------------------


def codes(no_token, wrong_token, tok_a, tok_star) -> dict[str, frozenset]:
    """Expected code(s) per caller; a tuple allows each of its codes."""
    as_set = lambda c: frozenset(c if isinstance(c, tuple) else (c,))  # noqa: E731
    return {"no-token": as_set(no_token), "wrong-token": as_set(wrong_token),
            "tok-a": as_set(tok_a), "tok-star": as_set(tok_star)}


# A call about beta: only tok-star gets through.
ABOUT_BETA = codes(UNAUTHENTICATED, UNAUTHENTICATED, PERMISSION_DENIED, OK)
# A call no single namespace owns: any valid token is answered (with its own things only).
UNSCOPED = codes(UNAUTHENTICATED, UNAUTHENTICATED, OK, OK)
# A method or action the node does not offer (documented as not supported): refusing it
# reveals nothing, whoever asks. Checking the token first would be tidier and is allowed.
NOT_OFFERED = codes((UNAUTHENTICATED, UNIMPLEMENTED), (UNAUTHENTICATED, UNIMPLEMENTED),
                    (PERMISSION_DENIED, UNIMPLEMENTED), UNIMPLEMENTED)
# A request that is malformed whatever the token (a traversal attempt): never served.
MALFORMED = codes(UNAUTHENTICATED, UNAUTHENTICATED, (INVALID_ARGUMENT, PERMISSION_DENIED),
                  INVALID_ARGUMENT)

HTTP_ABOUT_BETA = codes(401, 401, 403, 200)
HTTP_PROBE = codes(200, 200, 200, 200)
HTTP_METRICS = codes((200, 401), (200, 401), (200, 403), 200)


@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[World, str], Any]  # (world, caller) -> answer
    expect: dict
    check: Callable[[World, str, Any], None] | None = None  # of an answer that succeeded
    public: bool = False  # no one, tok-star included, may see beta's names here
    # A malformed request may be quoted back in its refusal; then only beta's values count.
    forbidden: tuple = FORBIDDEN


def written_by(caller: str, scratch: str) -> str:
    """The beta dataset a writing call targets: tok-star writes to a dataset made for it,
    everyone else aims at the secret (and must be refused)."""
    return scratch if caller == "tok-star" else SECRET_NAME


SECRET_DESCRIPTOR = flight.FlightDescriptor.for_path("beta", SECRET_NAME)


def handshake(w: World, caller: str):
    c = w.node.client()
    token = TOKEN_OF[caller]
    if token is None:
        handler = EmptyHandshake()
        c.authenticate(handler, options=None)
        return handler.answer
    return c.authenticate_basic_token("", token)


def do_put(w: World, caller: str):
    return put_table(w.client, ("beta", written_by(caller, "uploaded")), SECRET,
                     options=call_options(caller))


def do_exchange(w: World, caller: str):
    writer, reader = w.client.do_exchange(SECRET_DESCRIPTOR, options=call_options(caller))
    try:
        writer.begin(SECRET.schema)
        writer.write_table(SECRET)
        writer.done_writing()
        return reader.read_all()
    finally:
        try:
            writer.close()
        except Exception:  # noqa: BLE001 - the status was reported by the calls above
            pass


def check_handshake(w, caller, answer):
    assert answer == (b"authorization", f"Bearer {TOKEN_OF[caller]}".encode()), answer


def check_lists_own_namespaces(w, caller, infos):
    listed = paths_of(infos)
    assert ("alpha", ALPHA_NAME) in listed, listed
    if caller == "tok-a":
        assert {ns for ns, _ in listed} == {"alpha"}, listed
    else:
        assert ("beta", SECRET_NAME) in listed, listed


def check_lists_beta(w, caller, infos):
    assert ("beta", SECRET_NAME) in paths_of(infos)


def check_secret_info(w, caller, info):
    assert info.total_records == SECRET.num_rows
    assert paths_of([info]) == {("beta", SECRET_NAME)}


def check_poll_complete(w, caller, answer: bytes):
    """A completed PollInfo: the FlightInfo (field 1), no descriptor to poll again (field 2),
    progress 1.0 (field 3)."""
    fields = pb_fields(answer)
    check_secret_info(w, caller, flight.FlightInfo.deserialize(fields[1]))
    assert 2 not in fields
    assert struct.unpack("<d", fields[3])[0] == 1.0


def check_not_cancellable(w, caller, results):
    # CancelFlightInfoResult{status = 1}: CANCEL_STATUS_NOT_CANCELLABLE is 3.
    assert pb_fields(results[0]) == {1: 3}, results


def check_secret_schema(w, caller, result):
    assert result.schema.equals(SECRET.schema), result.schema


def check_secret_table(w, caller, table):
    assert table.equals(SECRET)


def check_action_types(w, caller, types):
    assert {"delete", "evict", "stats", "preload", "load", "renew"} <= {t.type for t in types}


def check_put_into_beta(w, caller, result):
    assert (result["namespace"], result["name"]) == ("beta", "uploaded"), result


GRPC_CASES = [
    Case("Handshake", handshake, UNSCOPED, check_handshake),
    Case("ListFlights()", lambda w, c: list(w.client.list_flights(options=call_options(c))),
         UNSCOPED, check_lists_own_namespaces),
    Case("ListFlights(beta)",
         lambda w, c: list(w.client.list_flights(b"beta", options=call_options(c))),
         ABOUT_BETA, check_lists_beta),
    Case("ListFlights( beta )",
         lambda w, c: list(w.client.list_flights(b" beta ", options=call_options(c))),
         ABOUT_BETA, check_lists_beta),
    Case("GetFlightInfo",
         lambda w, c: w.client.get_flight_info(SECRET_DESCRIPTOR, options=call_options(c)),
         ABOUT_BETA, check_secret_info),
    Case("PollFlightInfo",
         lambda w, c: w.raw_unary("PollFlightInfo", SECRET_DESCRIPTOR.serialize(), c),
         ABOUT_BETA, check_poll_complete),
    Case("GetSchema",
         lambda w, c: w.client.get_schema(SECRET_DESCRIPTOR, options=call_options(c)),
         ABOUT_BETA, check_secret_schema),
    Case("DoGet", lambda w, c: w.get(c, f"ads1:beta/{SECRET_NAME}@1"),
         ABOUT_BETA, check_secret_table),
    Case("DoGet(part)", lambda w, c: w.get(c, f"ads1:beta/{SECRET_NAME}@1#0"),
         ABOUT_BETA, check_secret_table),
    Case("DoGet(alpha/../beta)", lambda w, c: w.get(c, f"ads1:alpha/../beta/{SECRET_NAME}@1"),
         MALFORMED, forbidden=FORBIDDEN_VALUES),
    Case("DoGet(forged signature)", lambda w, c: w.get(c, f"ads1:beta/{SECRET_NAME}@1~AAAA"),
         MALFORMED, forbidden=FORBIDDEN_VALUES),
    Case("DoPut", do_put, ABOUT_BETA, check_put_into_beta),
    Case("DoExchange", do_exchange, NOT_OFFERED),
    Case("ListActions", lambda w, c: list(w.client.list_actions(options=call_options(c))),
         UNSCOPED, check_action_types),
]


def stats(w: World, caller: str):
    # Both tables are in memory when stats is asked (earlier cells may have evicted them).
    for ns, name in (("alpha", ALPHA_NAME), ("beta", SECRET_NAME)):
        w.action("tok-star", "preload", {"namespace": ns, "name": name})
    return w.action(caller, "stats")


def check_stats(w, caller, answer):
    tables = {(t["namespace"], t["name"]) for t in json_answer(answer)["tables"]}
    assert ("alpha", ALPHA_NAME) in tables, tables
    if caller == "tok-a":
        assert {ns for ns, _ in tables} == {"alpha"}, tables
    else:
        assert ("beta", SECRET_NAME) in tables, tables


def check_deleted(w, caller, answer):
    assert json_answer(answer) == {"deleted": [1]}, answer
    assert not w.exists("beta", "doomed")


def check_evicted(w, caller, answer):
    assert isinstance(json_answer(answer)["evicted"], int), answer


def check_preloaded(w, caller, answer):
    assert json_answer(answer)["version"] == 1, answer


def check_loaded_into_beta(w, caller, answer):
    result = json_answer(answer)
    assert (result["namespace"], result["name"], result["rows"]) == ("beta", "loaded", 1)
    assert w.get("tok-star", result["ticket"]).to_pylist() == [{"account": INCOMING_VALUE,
                                                                "amount": 1}]


def check_renewed(w, caller, answer):
    assert json_answer(answer)["expiresAt"], answer


def check_endpoint_renewed(w, caller, answer):
    (raw,) = answer
    assert flight.FlightEndpoint.deserialize(raw).expiration_time is not None


ACTION_CASES = [
    Case("delete",
         lambda w, c: w.action(c, "delete", {"namespace": "beta", "version": 1,
                                             "name": written_by(c, "doomed")}),
         ABOUT_BETA, check_deleted),
    Case("evict", lambda w, c: w.action(c, "evict", {"namespace": "beta", "name": SECRET_NAME}),
         ABOUT_BETA, check_evicted),
    Case("stats", stats, UNSCOPED, check_stats),
    Case("preload",
         lambda w, c: w.action(c, "preload", {"namespace": "beta", "name": SECRET_NAME}),
         ABOUT_BETA, check_preloaded),
    Case("load", lambda w, c: w.load(c, "beta", written_by(c, "loaded"), "beta/incoming/x.csv"),
         ABOUT_BETA, check_loaded_into_beta),
    Case("renew",
         lambda w, c: w.action(c, "renew", {"ttl": "1h",
                                            "ticket": f"ads1:beta/{written_by(c, 'renewable')}@1"}),
         ABOUT_BETA, check_renewed),
    Case("RenewFlightEndpoint",
         lambda w, c: w.action(c, "RenewFlightEndpoint", renew_endpoint_request(
             f"ads1:beta/{written_by(c, 'renewable')}@1")),
         ABOUT_BETA, check_endpoint_renewed),
    Case("CancelFlightInfo",
         lambda w, c: w.action(c, "CancelFlightInfo", pb_message_field(1, w.secret_info)),
         ABOUT_BETA, check_not_cancellable),
    Case("unknown action",
         lambda w, c: w.action(c, "no-such-action", {"namespace": "beta", "name": SECRET_NAME}),
         codes(UNAUTHENTICATED, UNAUTHENTICATED, (INVALID_ARGUMENT, PERMISSION_DENIED),
               INVALID_ARGUMENT)),
]


def check_csv_export(w, caller, answer):
    assert answer.body.decode().splitlines()[1].startswith(f"{SECRET_VALUE},"), answer.body


def check_json_export(w, caller, answer):
    assert json.loads(answer.body) == SECRET.to_pylist(), answer.body


def check_http_upload(w, caller, answer):
    result = json.loads(answer.body)
    assert (result["namespace"], result["name"], result["rows"]) == ("beta", "x", 1), result


SECRET_URL = f"/v1/datasets/beta/{SECRET_NAME}"

HTTP_CASES = [
    Case("GET /healthz", lambda w, c: w.http(c, "/healthz"), HTTP_PROBE, public=True),
    Case("GET /readyz", lambda w, c: w.http(c, "/readyz"), HTTP_PROBE, public=True),
    Case("GET /metrics", lambda w, c: w.http(c, "/metrics"), HTTP_METRICS, public=True),
    Case("POST /v1/datasets/beta/x",
         lambda w, c: w.http(c, "/v1/datasets/beta/x", "POST", b"k\nposted-value\n"),
         codes(401, 401, 403, 201), check_http_upload),
    Case("GET csv", lambda w, c: w.http(c, f"{SECRET_URL}?format=csv"),
         HTTP_ABOUT_BETA, check_csv_export),
    Case("GET json", lambda w, c: w.http(c, f"{SECRET_URL}?format=json"),
         HTTP_ABOUT_BETA, check_json_export),
    Case("GET json version=1", lambda w, c: w.http(c, f"{SECRET_URL}?format=json&version=1"),
         HTTP_ABOUT_BETA, check_json_export),
    Case("GET csv version=1", lambda w, c: w.http(c, f"{SECRET_URL}?format=csv&version=1"),
         HTTP_ABOUT_BETA, check_csv_export),
    Case("GET alpha%2F..%2Fbeta",
         lambda w, c: w.http(c, f"/v1/datasets/alpha%2F..%2Fbeta/{SECRET_NAME}?format=csv"),
         codes((400, 401), (400, 401), (400, 403), 400), forbidden=FORBIDDEN_VALUES),
    Case("GET alpha/../beta",
         lambda w, c: w.http(c, f"/v1/datasets/alpha/../beta/{SECRET_NAME}?format=csv"),
         codes((401, 404), (401, 404), (403, 404), (200, 404)), forbidden=FORBIDDEN_VALUES),
]


def matrix(cases):
    return [pytest.param(case, caller, id=f"{case.id}-{caller}")
            for case in cases for caller in CALLERS]


def check_cell(w: World, case: Case, caller: str) -> None:
    before = w.beta_content()
    code, answer = run(lambda: case.call(w, caller))
    wanted = case.expect[caller]
    assert code in wanted, (
        f"{case.id} as {caller}: expected {sorted(map(str, wanted))}, got {code}: "
        f"{exposed(answer)[:600]!r}")
    if caller != "tok-star" or case.public:
        assert_shows_nothing_of_beta(answer, f"{case.id} as {caller}", case.forbidden)
    if caller != "tok-star":
        assert w.beta_content() == before, f"{case.id} as {caller} changed beta's storage"
    if code in (OK, 200, 201) and case.check is not None:
        case.check(w, caller, answer)


@pytest.mark.parametrize(("case", "caller"), matrix(GRPC_CASES))
def test_grpc_method(world, case, caller):
    check_cell(world, case, caller)


@pytest.mark.parametrize(("case", "caller"), matrix(ACTION_CASES))
def test_action(world, case, caller):
    check_cell(world, case, caller)


@pytest.mark.parametrize(("case", "caller"), matrix(HTTP_CASES))
def test_http_route(world, case, caller):
    check_cell(world, case, caller)


# ----- load: where a namespace token may read from ------------------------------------------


@dataclass(frozen=True)
class Source:
    id: str
    source: str  # "{url}" stands for the storage URL, "{beta_part}" for a part of the secret
    expect: frozenset
    extra: dict = field(default_factory=dict)

    def spelled(self, w: World) -> str:
        part = next(k for k in w.secret_records if k.endswith(".parquet"))
        return self.source.format(url=w.node.storage_url, beta_part=part)


DENIED = frozenset({PERMISSION_DENIED})
DENIED_OR_MALFORMED = frozenset({PERMISSION_DENIED, INVALID_ARGUMENT})

# tok-a loads into alpha from each source; only alpha's own prefix may be read.
LOAD_SOURCES = [
    Source("beta prefix", "beta/incoming/x.csv", DENIED),
    Source("beta prefix, leading slash", "/beta/incoming/x.csv", DENIED),
    Source("beta as storage URL", "{url}/beta/incoming/x.csv", DENIED),
    Source("beta as storage URL, double slash", "{url}//beta/incoming/x.csv",
           DENIED_OR_MALFORMED),
    Source("alpha/../beta", "alpha/../beta/incoming/x.csv", DENIED_OR_MALFORMED),
    Source("alpha/incoming/../../beta", "alpha/incoming/../../beta/incoming/x.csv",
           DENIED_OR_MALFORMED),
    Source("URL alpha/../beta", "{url}/alpha/../beta/incoming/x.csv", DENIED_OR_MALFORMED),
    Source("./beta", "./beta/incoming/x.csv", DENIED_OR_MALFORMED),
    # Percent signs are literal in a path: this names an object under alpha that is absent.
    Source("alpha/%2E%2E/beta", "alpha/%2E%2E/beta/incoming/x.csv",
           frozenset({PERMISSION_DENIED, INVALID_ARGUMENT, NOT_FOUND})),
    # Read as one-column CSV, a record would show where beta's parts are.
    Source("beta's record", f"beta/{SECRET_NAME}/v1.manifest.json", DENIED,
           {"format": "csv", "delimiter": "\u0001"}),
    Source("beta's Parquet part", "{beta_part}", DENIED),
    Source("namespace alphabet (prefix alpha)", "alphabet/incoming/z.csv", DENIED),
    Source("shared area, not allowed", "shared/y.csv", DENIED),
]


@pytest.mark.parametrize("src", [pytest.param(s, id=s.id) for s in LOAD_SOURCES])
def test_load_from_outside_the_namespace_is_refused(world, src):
    w = world
    dest = "stolen-" + hashlib.sha256(src.id.encode()).hexdigest()[:8]
    before = w.beta_content()
    code, answer = run(lambda: w.load("tok-a", "alpha", dest, src.spelled(w), **src.extra))
    assert code in src.expect, (
        f"tok-a load into alpha from {src.spelled(w)!r}: expected {sorted(src.expect)}, got "
        f"{code}: {exposed(answer)[:600]!r}")
    assert_shows_nothing_of_beta(answer, f"load from {src.id}", FORBIDDEN_VALUES)
    assert not w.exists("alpha", dest), f"the refused load from {src.id} created alpha/{dest}"
    assert not list((w.storage / "alpha" / dest).rglob("*.manifest.json"))
    assert w.beta_content() == before


def test_load_from_the_namespace_itself_works(world):
    w = world
    result = json_answer(w.load("tok-a", "alpha", "from-own-prefix", "alpha/incoming/a.csv"))
    assert (result["namespace"], result["rows"]) == ("alpha", 1), result
    assert w.get("tok-a", result["ticket"]).to_pylist() == [{"a": "alpha-incoming-value"}]
    # The same object named by its full URL.
    result = json_answer(w.load("tok-a", "alpha", "from-own-url",
                                f"{w.node.storage_url}/alpha/incoming/a.csv"))
    assert result["rows"] == 1, result


@pytest.fixture(scope="module")
def shared_world(tmp_path_factory):
    """A node that allows loads from the shared area `shared/`."""
    w = start_world(tmp_path_factory, "--load-source-prefix", "shared/")
    put_table(w.client, ("beta", SECRET_NAME), SECRET, options=call_options("tok-b"))
    w.secret_records = content_of(w.storage, f"beta/{SECRET_NAME}")
    yield w
    stop_world(w)


SHARED_SOURCES = [
    Source("shared area", "shared/y.csv", frozenset({OK})),
    Source("shared area as storage URL", "{url}/shared/y.csv", frozenset({OK})),
    Source("beta prefix", "beta/incoming/x.csv", DENIED),
    Source("shared/../beta", "shared/../beta/incoming/x.csv", DENIED_OR_MALFORMED),
    Source("shared2 (prefix shared)", "shared2/z.csv", DENIED),
    Source("beta's Parquet part", "{beta_part}", DENIED),
]


@pytest.mark.parametrize("src", [pytest.param(s, id=s.id) for s in SHARED_SOURCES])
def test_load_source_prefix_allows_only_the_shared_area(shared_world, src):
    w = shared_world
    dest = "shared-" + hashlib.sha256(src.id.encode()).hexdigest()[:8]
    before = w.beta_content()
    code, answer = run(lambda: w.load("tok-a", "alpha", dest, src.spelled(w)))
    assert code in src.expect, (
        f"tok-a load into alpha from {src.spelled(w)!r} with --load-source-prefix shared/: "
        f"expected {sorted(src.expect)}, got {code}: {exposed(answer)[:600]!r}")
    assert_shows_nothing_of_beta(answer, f"load from {src.id}", FORBIDDEN_VALUES)
    assert w.beta_content() == before
    if code == OK:
        result = json_answer(answer)
        assert (result["namespace"], result["name"]) == ("alpha", dest), result
        assert w.get("tok-a", result["ticket"]).to_pylist() == [{"k": "shared-value", "n": 1}]
    else:
        assert not w.exists("alpha", dest), f"the refused load from {src.id} created alpha/{dest}"


# ----- listing never reads another namespace ------------------------------------------------


def test_listing_one_namespace_does_not_depend_on_another(tmp_path_factory):
    """ListFlights without criteria, for tok-a, must not read beta's records at all: a beta
    record this node cannot read (corrupt, or from a newer format) neither fails alpha's
    listing nor reaches tok-a by name."""
    w = start_world(tmp_path_factory)
    try:
        put_table(w.client, ("alpha", ALPHA_NAME), ALPHA, options=call_options("tok-a"))
        write_object(w.storage, f"beta/{SECRET_NAME}/v1.manifest.json",
                     "{ not a record: " + SECRET_VALUE)
        code, answer = run(lambda: list(w.client.list_flights(options=call_options("tok-a"))))
        assert_shows_nothing_of_beta(answer, "ListFlights() as tok-a")
        assert code == OK, f"tok-a's listing failed because of beta's record: {answer}"
        assert paths_of(answer) == {("alpha", ALPHA_NAME)}
    finally:
        stop_world(w)


# ----- after the matrix ---------------------------------------------------------------------


def test_beta_is_intact_after_the_matrix(world):
    """Nothing any caller did changed beta's secret: same records and parts, same newest
    version, same data."""
    w = world
    assert content_of(w.storage, f"beta/{SECRET_NAME}") == w.secret_records
    star = call_options("tok-star")
    info = w.client.get_flight_info(SECRET_DESCRIPTOR, options=star)
    assert json.loads(info.app_metadata)["version"] == 1
    assert info.total_records == SECRET.num_rows
    assert w.get("tok-star", w.secret_ticket).equals(SECRET)
    assert w.get("tok-b", w.secret_ticket).equals(SECRET)
    listed = paths_of(w.client.list_flights(b"beta", options=star))
    assert ("beta", SECRET_NAME) in listed


def test_alpha_received_nothing_of_beta(world):
    """No dataset of alpha holds beta's values (a load that read beta's objects would)."""
    w = world
    star = call_options("tok-star")
    for info in w.client.list_flights(b"alpha", options=star):
        for endpoint in info.endpoints:
            assert_shows_nothing_of_beta(w.get("tok-star", endpoint.ticket.ticket.decode()),
                                         f"alpha dataset {paths_of([info])}", FORBIDDEN_VALUES)
