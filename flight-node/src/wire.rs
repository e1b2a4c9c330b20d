//! gRPC framing of `FlightData` messages, done once, so that frames can be cached and sent
//! as they are: the 5-byte gRPC prefix, then the protobuf `FlightData` with `data_header`
//! (field 2), `app_metadata` (field 3, when set) and `data_body` (field 1000).

use arrow_flight::FlightData;
use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, WireType};

/// Frames one message: returns the small head (gRPC prefix, protobuf keys and lengths,
/// the IPC header and metadata) and the body to send after it as is.
pub fn frame(m: &FlightData) -> (Bytes, Bytes) {
    let header_len = m.data_header.len();
    let meta_len = m.app_metadata.len();
    let body_len = m.data_body.len();
    let field = |tag: u32, len: usize| field_prefix_len(tag, len) + len;
    let message_len = field(2, header_len) + field(3, meta_len) + field(1000, body_len);
    let mut head = BytesMut::with_capacity(5 + message_len - body_len);
    head.put_u8(0);
    // A message never exceeds the configured maximum size, far below 4 GiB.
    head.put_u32(u32::try_from(message_len).unwrap_or(u32::MAX));
    if header_len > 0 {
        encode_key(2, WireType::LengthDelimited, &mut head);
        encode_varint(header_len as u64, &mut head);
        head.put_slice(&m.data_header);
    }
    if meta_len > 0 {
        encode_key(3, WireType::LengthDelimited, &mut head);
        encode_varint(meta_len as u64, &mut head);
        head.put_slice(&m.app_metadata);
    }
    if body_len > 0 {
        encode_key(1000, WireType::LengthDelimited, &mut head);
        encode_varint(body_len as u64, &mut head);
    }
    (head.freeze(), m.data_body.clone())
}

/// Bytes of a length-delimited field's key and length (none for an empty field, which
/// `frame` leaves out).
fn field_prefix_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(len as u64)
    }
}

/// Where a cached message's body starts in memory: a multiple of this. The Arrow buffers
/// in a body are aligned relative to its start, so they are then aligned in memory too and
/// decode without a copy (a read of some columns, an export).
pub const BODY_ALIGN: usize = 64;

/// Bytes to put before an address to reach the next multiple of [`BODY_ALIGN`].
fn align_pad(address: usize) -> usize {
    (BODY_ALIGN - address % BODY_ALIGN) % BODY_ALIGN
}

/// Lays a message out as its whole gRPC frame in one buffer, its body aligned to
/// [`BODY_ALIGN`]; returns the frame and a `FlightData` whose fields are slices of it.
pub fn contiguous(m: FlightData) -> (Bytes, FlightData) {
    let (head, _) = frame(&m);
    // Where `frame` put the header and the metadata; the body follows the head.
    let header_start = 5 + field_prefix_len(2, m.data_header.len());
    let header_end = header_start + m.data_header.len();
    let meta_start = header_end + field_prefix_len(3, m.app_metadata.len());
    let meta_end = meta_start + m.app_metadata.len();
    let body_start = head.len();
    let room = BODY_ALIGN - 1 + head.len();
    let (frame, pad) = match m.data_body.try_into_mut() {
        Ok(body) => {
            // The body's own buffer, the head inserted in front of it in place: fresh
            // memory for every frame made cold loads slower.
            let mut buf = Vec::from(body);
            // The frame is cached: spare capacity would stay resident.
            buf.shrink_to_fit();
            buf.reserve_exact(room);
            let pad = align_pad(buf.as_ptr() as usize + head.len());
            buf.splice(
                0..0,
                std::iter::repeat_n(0, pad).chain(head.iter().copied()),
            );
            (Bytes::from(buf), pad)
        }
        Err(body) => {
            let mut buf: Vec<u8> = Vec::with_capacity(room + body.len());
            let pad = align_pad(buf.as_ptr() as usize + head.len());
            buf.resize(pad, 0);
            buf.extend_from_slice(&head);
            buf.extend_from_slice(&body);
            (Bytes::from(buf), pad)
        }
    };
    let frame = frame.slice(pad..);
    let data = FlightData {
        flight_descriptor: m.flight_descriptor,
        data_header: frame.slice(header_start..header_end),
        app_metadata: frame.slice(meta_start..meta_end),
        data_body: frame.slice(body_start..),
    };
    (frame, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    /// A message written into one frame keeps its fields (as slices of the frame), and the
    /// frame is the message on the wire, with or without metadata and body.
    #[test]
    fn contiguous_frames_hold_the_message_fields() {
        let cases = [
            (vec![1u8; 300], vec![], vec![7u8; 100_000]),
            (vec![2u8; 10], vec![9u8; 200], vec![8u8; 5]),
            (vec![3u8; 130], vec![4u8; 1], vec![]),
        ];
        for (header, meta, body) in cases {
            let m = FlightData {
                flight_descriptor: None,
                data_header: header.into(),
                app_metadata: meta.into(),
                data_body: body.into(),
            };
            // A body shared with `m` is copied; a body of its own is framed in place.
            let own = FlightData {
                data_body: Bytes::from(m.data_body.to_vec()),
                ..m.clone()
            };
            for (frame, data) in [contiguous(m.clone()), contiguous(own)] {
                assert_eq!(data, m);
                assert_eq!(data.data_body.as_ptr() as usize % BODY_ALIGN, 0);
                assert_eq!(frame[0], 0);
                let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
                assert_eq!(len + 5, frame.len());
                assert_eq!(FlightData::decode(&frame[5..]).unwrap(), m);
            }
            let (frame, data) = contiguous(m.clone());
            assert_eq!(data, m);
            assert_eq!(frame[0], 0);
            let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
            assert_eq!(len + 5, frame.len());
            assert_eq!(FlightData::decode(&frame[5..]).unwrap(), m);
        }
    }

    #[test]
    fn frames_decode_as_protobuf_flight_data() {
        for (header, meta, body) in [
            (vec![1u8; 10], vec![], vec![7u8; 300]),
            (vec![2u8; 200], vec![3u8; 5], vec![]),
            (vec![], vec![], vec![]),
            (vec![4u8; 1], vec![], vec![9u8; 70_000]),
        ] {
            let m = FlightData {
                flight_descriptor: None,
                data_header: header.into(),
                app_metadata: meta.into(),
                data_body: body.into(),
            };
            let (head, body) = frame(&m);
            let mut wire = head.to_vec();
            wire.extend_from_slice(&body);
            assert_eq!(wire[0], 0);
            let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
            assert_eq!(len, wire.len() - 5);
            assert_eq!(len, m.encoded_len());
            let back = FlightData::decode(&wire[5..]).unwrap();
            assert_eq!(back, m);
        }
    }
}
