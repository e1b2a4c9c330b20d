"""A minimal raw Flight DoPut client on grpcio, for streams pyarrow's writer refuses to
build: a schema change mid-stream, a batch before the schema, garbage headers, and uploads
cancelled half-way. Messages are FlightData protobufs encoded by hand; IPC messages come from
pyarrow's own IPC writer."""

from __future__ import annotations

import grpc
import pyarrow as pa
import pyarrow.flight as flight

DO_PUT = "/arrow.flight.protocol.FlightService/DoPut"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def flight_data(header: bytes = b"", body: bytes = b"", descriptor=None) -> bytes:
    """Encodes one FlightData message (descriptor=1, data_header=2, data_body=1000)."""
    out = b""
    if descriptor is not None:
        out += _field(1, descriptor.serialize())
    if header:
        out += _field(2, header)
    if body:
        out += _field(1000, body)
    return out


def ipc_messages(table: pa.Table, max_chunksize: int | None = None) -> list[tuple[bytes, bytes]]:
    """(header, body) of each IPC message of a stream holding `table`: schema first."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=max_chunksize)
    out = []
    for m in pa.ipc.MessageReader.open_stream(sink.getvalue()):
        out.append((m.metadata.to_pybytes(), m.body.to_pybytes() if m.body is not None else b""))
    return out


def upload_messages(path, table: pa.Table, max_chunksize: int | None = None) -> list[bytes]:
    """The FlightData messages pyarrow would send for `table`, descriptor on the first."""
    desc = flight.FlightDescriptor.for_path(*path)
    msgs = ipc_messages(table, max_chunksize)
    return [flight_data(h, b, desc if i == 0 else None) for i, (h, b) in enumerate(msgs)]


def decode_put_result(raw: bytes) -> bytes:
    """app_metadata (field 1) of a PutResult protobuf."""
    assert raw[:1] == b"\x0a", raw[:8]
    pos, length, shift = 1, 0, 0
    while True:
        b = raw[pos]
        pos += 1
        length |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return raw[pos:pos + length]


class RawFlight:
    def __init__(self, location: str, headers: list[tuple[str, str]] | None = None):
        target = location.removeprefix("grpc://")
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ])
        self.headers = headers or []
        self._do_put = self.channel.stream_stream(
            DO_PUT, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    def do_put(self, messages, timeout: float = 30.0) -> list[bytes]:
        """Sends the messages, half-closes, returns the PutResult app_metadata of each
        answer; raises grpc.RpcError with the server's status on failure."""
        answers = self._do_put(iter(messages), metadata=self.headers, timeout=timeout)
        return [decode_put_result(a) for a in answers]

    def start_put(self, messages_iter, timeout: float = 30.0):
        """Starts a DoPut fed by an iterator (which may block); returns the call, which can
        be cancelled."""
        return self._do_put(messages_iter, metadata=self.headers, timeout=timeout)

    def close(self):
        self.channel.close()
