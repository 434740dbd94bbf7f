//! The few etcd v3 protobuf messages the benchmark needs, encoded and decoded by hand.
//!
//! Generated code would need `protoc` at build time, which neither CI nor this machine has, and
//! the benchmark sends only three requests (`Put`, `Range`, `Status`). Field numbers are those
//! of etcd's `etcdserverpb/rpc.proto`. Decoding is total and bounded: every length is checked
//! against what remains, varints stop after 10 bytes, unknown fields are skipped, and bad input
//! is a [`ProtoError`], never a panic. Also here: gRPC's 5-byte message framing.

/// Why bytes did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The input ended inside a field.
    #[error("truncated protobuf")]
    Truncated,
    /// A varint longer than 10 bytes (or overflowing 64 bits).
    #[error("varint too long")]
    VarintTooLong,
    /// A wire type this decoder does not accept (groups, or 6 and 7).
    #[error("unsupported wire type {0}")]
    WireType(u8),
    /// Field number 0, which protobuf forbids.
    #[error("field number 0")]
    FieldZero,
    /// A known field with the wrong wire type.
    #[error("field {field} has wire type {got}, expected {expected}")]
    WrongType {
        /// The field number.
        field: u32,
        /// The wire type found.
        got: u8,
        /// The wire type the message defines.
        expected: u8,
    },
    /// A gRPC frame that is compressed, truncated or has trailing bytes.
    #[error("bad gRPC frame: {0}")]
    Frame(&'static str),
    /// A string field that is not UTF-8.
    #[error("field {0} is not UTF-8")]
    Utf8(u32),
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// One decoded field's value (borrowed from the input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 1.
    Fixed64(u64),
    /// Wire type 2: bytes, strings and embedded messages.
    Bytes(&'a [u8]),
    /// Wire type 5.
    Fixed32(u32),
}

impl Value<'_> {
    fn wire_type(&self) -> u8 {
        match self {
            Value::Varint(_) => VARINT,
            Value::Fixed64(_) => FIXED64,
            Value::Bytes(_) => LEN,
            Value::Fixed32(_) => FIXED32,
        }
    }
}

/// Appends `v` as a base-128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

/// Appends a length-delimited field (proto3 omits empty ones; so does this).
pub fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends a varint field (proto3 omits zeros; so does this).
pub fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v == 0 {
        return;
    }
    put_tag(out, field, VARINT);
    put_varint(out, v);
}

/// Reads one varint from the front of `input`, advancing it.
pub fn take_varint(input: &mut &[u8]) -> Result<u64, ProtoError> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = input.split_first() else { return Err(ProtoError::Truncated) };
        *input = rest;
        // The tenth byte may only carry the 64th bit.
        if i == 9 && b > 1 {
            return Err(ProtoError::VarintTooLong);
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ProtoError::VarintTooLong)
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8], ProtoError> {
    if input.len() < n {
        return Err(ProtoError::Truncated);
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

/// The fields of one message, in wire order.
pub struct Fields<'a> {
    input: &'a [u8],
}

/// Iterates over the fields of the message in `input`.
pub fn fields(input: &[u8]) -> Fields<'_> {
    Fields { input }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.input.is_empty() {
            return None;
        }
        let r = self.next_field();
        if r.is_err() {
            // Stop after the first error: what follows cannot be framed.
            self.input = &[];
        }
        Some(r)
    }
}

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<(u32, Value<'a>), ProtoError> {
        let tag = take_varint(&mut self.input)?;
        let field = u32::try_from(tag >> 3).map_err(|_| ProtoError::VarintTooLong)?;
        if field == 0 {
            return Err(ProtoError::FieldZero);
        }
        let value = match (tag & 7) as u8 {
            VARINT => Value::Varint(take_varint(&mut self.input)?),
            FIXED64 => {
                let b = take(&mut self.input, 8)?;
                Value::Fixed64(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            }
            LEN => {
                let n = take_varint(&mut self.input)?;
                let n = usize::try_from(n).map_err(|_| ProtoError::Truncated)?;
                Value::Bytes(take(&mut self.input, n)?)
            }
            FIXED32 => {
                let b = take(&mut self.input, 4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(ProtoError::WireType(other)),
        };
        Ok((field, value))
    }
}

fn want_uint(field: u32, v: Value<'_>) -> Result<u64, ProtoError> {
    match v {
        Value::Varint(x) => Ok(x),
        other => Err(ProtoError::WrongType { field, got: other.wire_type(), expected: VARINT }),
    }
}

fn want_bytes(field: u32, v: Value<'_>) -> Result<&[u8], ProtoError> {
    match v {
        Value::Bytes(b) => Ok(b),
        other => Err(ProtoError::WrongType { field, got: other.wire_type(), expected: LEN }),
    }
}

/// `PutRequest { key = 1, value = 2 }` (no lease, no prev_kv).
pub fn encode_put_request(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + value.len() + 8);
    put_bytes(&mut out, 1, key);
    put_bytes(&mut out, 2, value);
    out
}

/// `RangeRequest { key = 1 }`: one key, and linearizable, because `serializable` (field 7)
/// is left false.
pub fn encode_range_request(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 4);
    put_bytes(&mut out, 1, key);
    out
}

/// `StatusRequest {}`.
pub fn encode_status_request() -> Vec<u8> {
    Vec::new()
}

/// etcd's `ResponseHeader`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Field 1.
    pub cluster_id: u64,
    /// Field 2: the member that answered.
    pub member_id: u64,
    /// Field 3: the store revision.
    pub revision: i64,
    /// Field 4.
    pub raft_term: u64,
}

impl ResponseHeader {
    /// Decodes a header.
    pub fn decode(input: &[u8]) -> Result<ResponseHeader, ProtoError> {
        let mut h = ResponseHeader::default();
        for f in fields(input) {
            match f? {
                (1, v) => h.cluster_id = want_uint(1, v)?,
                (2, v) => h.member_id = want_uint(2, v)?,
                // int64 travels as its two's-complement varint.
                (3, v) => h.revision = want_uint(3, v)? as i64,
                (4, v) => h.raft_term = want_uint(4, v)?,
                _ => {}
            }
        }
        Ok(h)
    }
}

/// etcd's `PutResponse` (the header; `prev_kv` is never asked for).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutResponse {
    /// Field 1.
    pub header: ResponseHeader,
}

impl PutResponse {
    /// Decodes a put response.
    pub fn decode(input: &[u8]) -> Result<PutResponse, ProtoError> {
        let mut r = PutResponse::default();
        for f in fields(input) {
            if let (1, v) = f? {
                r.header = ResponseHeader::decode(want_bytes(1, v)?)?;
            }
        }
        Ok(r)
    }
}

/// etcd's `KeyValue` (the fields the benchmark looks at).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyValue {
    /// Field 1.
    pub key: Vec<u8>,
    /// Field 3.
    pub mod_revision: i64,
    /// Field 5.
    pub value: Vec<u8>,
}

impl KeyValue {
    /// Decodes a key-value pair.
    pub fn decode(input: &[u8]) -> Result<KeyValue, ProtoError> {
        let mut kv = KeyValue::default();
        for f in fields(input) {
            match f? {
                (1, v) => kv.key = want_bytes(1, v)?.to_vec(),
                (3, v) => kv.mod_revision = want_uint(3, v)? as i64,
                (5, v) => kv.value = want_bytes(5, v)?.to_vec(),
                _ => {}
            }
        }
        Ok(kv)
    }
}

/// etcd's `RangeResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeResponse {
    /// Field 1.
    pub header: ResponseHeader,
    /// Field 2, repeated.
    pub kvs: Vec<KeyValue>,
    /// Field 3.
    pub more: bool,
    /// Field 4.
    pub count: i64,
}

impl RangeResponse {
    /// Decodes a range response.
    pub fn decode(input: &[u8]) -> Result<RangeResponse, ProtoError> {
        let mut r = RangeResponse::default();
        for f in fields(input) {
            match f? {
                (1, v) => r.header = ResponseHeader::decode(want_bytes(1, v)?)?,
                (2, v) => r.kvs.push(KeyValue::decode(want_bytes(2, v)?)?),
                (3, v) => r.more = want_uint(3, v)? != 0,
                (4, v) => r.count = want_uint(4, v)? as i64,
                _ => {}
            }
        }
        Ok(r)
    }
}

/// etcd's `Maintenance.Status` answer (the fields that find the leader).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusResponse {
    /// Field 1: `member_id` says who answered.
    pub header: ResponseHeader,
    /// Field 2.
    pub version: String,
    /// Field 4: the member id the answering member believes leads (0: none).
    pub leader: u64,
    /// Field 5: the committed index.
    pub raft_index: u64,
    /// Field 6.
    pub raft_term: u64,
}

impl StatusResponse {
    /// Decodes a status response.
    pub fn decode(input: &[u8]) -> Result<StatusResponse, ProtoError> {
        let mut r = StatusResponse::default();
        for f in fields(input) {
            match f? {
                (1, v) => r.header = ResponseHeader::decode(want_bytes(1, v)?)?,
                (2, v) => r.version = String::from_utf8(want_bytes(2, v)?.to_vec()).map_err(|_| ProtoError::Utf8(2))?,
                (4, v) => r.leader = want_uint(4, v)?,
                (5, v) => r.raft_index = want_uint(5, v)?,
                (6, v) => r.raft_term = want_uint(6, v)?,
                _ => {}
            }
        }
        Ok(r)
    }
}

/// Wraps `message` in gRPC's length-prefixed framing: a compression flag (0) and a 4-byte
/// big-endian length.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The one uncompressed message in a unary gRPC response body.
pub fn grpc_unframe(body: &[u8]) -> Result<&[u8], ProtoError> {
    if body.len() < 5 {
        return Err(ProtoError::Frame("shorter than its 5-byte prefix"));
    }
    if body[0] != 0 {
        return Err(ProtoError::Frame("compressed (not negotiated)"));
    }
    let n = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let rest = &body[5..];
    if rest.len() < n {
        return Err(ProtoError::Frame("truncated message"));
    }
    if rest.len() > n {
        return Err(ProtoError::Frame("bytes after the message"));
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_bytes(h: &ResponseHeader) -> Vec<u8> {
        let mut out = Vec::new();
        put_uint(&mut out, 1, h.cluster_id);
        put_uint(&mut out, 2, h.member_id);
        put_uint(&mut out, 3, h.revision as u64);
        put_uint(&mut out, 4, h.raft_term);
        out
    }

    #[test]
    fn varints_match_the_protobuf_spec_examples() {
        let mut out = Vec::new();
        put_varint(&mut out, 1);
        put_varint(&mut out, 150);
        put_varint(&mut out, 300);
        assert_eq!(out, [0x01, 0x96, 0x01, 0xac, 0x02]);
        let mut input = &out[..];
        assert_eq!(take_varint(&mut input), Ok(1));
        assert_eq!(take_varint(&mut input), Ok(150));
        assert_eq!(take_varint(&mut input), Ok(300));
        assert!(input.is_empty());
    }

    #[test]
    fn the_largest_varint_round_trips_and_an_eleventh_byte_is_refused() {
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        assert_eq!(take_varint(&mut &out[..]), Ok(u64::MAX));
        let too_long = [0xffu8; 11];
        assert_eq!(take_varint(&mut &too_long[..]), Err(ProtoError::VarintTooLong));
        // Ten bytes whose last one carries more than the 64th bit overflow.
        let overflow = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert_eq!(take_varint(&mut &overflow[..]), Err(ProtoError::VarintTooLong));
        assert_eq!(take_varint(&mut &[0x80u8][..]), Err(ProtoError::Truncated));
    }

    #[test]
    fn put_request_bytes_are_those_protoc_would_write() {
        // PutRequest{key: "foo", value: "bar"}: tag 0x0a (field 1, LEN), tag 0x12 (field 2, LEN).
        assert_eq!(encode_put_request(b"foo", b"bar"), [0x0a, 3, b'f', b'o', b'o', 0x12, 3, b'b', b'a', b'r']);
        // A 128-byte value needs a two-byte length.
        let v = [7u8; 128];
        let enc = encode_put_request(b"k", &v);
        assert_eq!(&enc[..6], &[0x0a, 1, b'k', 0x12, 0x80, 0x01]);
        assert_eq!(enc.len(), 6 + 128);
    }

    #[test]
    fn range_request_is_linearizable_by_leaving_serializable_out() {
        assert_eq!(encode_range_request(b"a/1"), [0x0a, 3, b'a', b'/', b'1']);
        assert!(encode_status_request().is_empty());
    }

    #[test]
    fn a_put_response_header_decodes_with_unknown_fields_skipped() {
        let h = ResponseHeader { cluster_id: 0x1234_5678_9abc_def0, member_id: 42, revision: 9001, raft_term: 3 };
        let mut msg = Vec::new();
        put_bytes(&mut msg, 1, &header_bytes(&h));
        // prev_kv (field 2) and fields from a newer etcd of every wire type are ignored.
        put_bytes(&mut msg, 2, b"\x0a\x01k");
        msg.extend_from_slice(&[0x19, 1, 2, 3, 4, 5, 6, 7, 8]); // field 3, fixed64
        msg.extend_from_slice(&[0x25, 1, 2, 3, 4]); // field 4, fixed32
        put_uint(&mut msg, 99, 5);
        assert_eq!(PutResponse::decode(&msg), Ok(PutResponse { header: h }));
    }

    #[test]
    fn a_range_response_yields_its_key_values() {
        let mut kv = Vec::new();
        put_bytes(&mut kv, 1, b"k1");
        put_uint(&mut kv, 2, 5);
        put_uint(&mut kv, 3, 7);
        put_uint(&mut kv, 4, 2);
        put_bytes(&mut kv, 5, b"value");
        let mut msg = Vec::new();
        put_bytes(&mut msg, 1, &header_bytes(&ResponseHeader { revision: 7, ..Default::default() }));
        put_bytes(&mut msg, 2, &kv);
        put_uint(&mut msg, 4, 1);
        let r = RangeResponse::decode(&msg).unwrap();
        assert_eq!(r.header.revision, 7);
        assert_eq!(r.kvs, vec![KeyValue { key: b"k1".to_vec(), mod_revision: 7, value: b"value".to_vec() }]);
        assert_eq!((r.more, r.count), (false, 1));
        // A missing key: no kvs at all.
        assert!(RangeResponse::decode(&[]).unwrap().kvs.is_empty());
    }

    #[test]
    fn a_status_response_names_the_member_and_its_leader() {
        let mut msg = Vec::new();
        put_bytes(&mut msg, 1, &header_bytes(&ResponseHeader { member_id: 11, ..Default::default() }));
        put_bytes(&mut msg, 2, b"3.4.23");
        put_uint(&mut msg, 3, 20480);
        put_uint(&mut msg, 4, 22);
        put_uint(&mut msg, 5, 100);
        put_uint(&mut msg, 6, 2);
        put_uint(&mut msg, 7, 100);
        let s = StatusResponse::decode(&msg).unwrap();
        assert_eq!(
            s,
            StatusResponse {
                header: ResponseHeader { member_id: 11, ..Default::default() },
                version: "3.4.23".into(),
                leader: 22,
                raft_index: 100,
                raft_term: 2,
            }
        );
    }

    #[test]
    fn bad_messages_are_errors() {
        // A length past the end.
        assert_eq!(PutResponse::decode(&[0x0a, 5, 1]), Err(ProtoError::Truncated));
        // A known field with the wrong wire type.
        assert_eq!(
            StatusResponse::decode(&[0x20 | LEN, 0]),
            Err(ProtoError::WrongType { field: 4, got: LEN, expected: VARINT })
        );
        // Groups (wire types 3 and 4) and field 0.
        assert_eq!(PutResponse::decode(&[0x0b]), Err(ProtoError::WireType(3)));
        assert_eq!(PutResponse::decode(&[0x00, 1]), Err(ProtoError::FieldZero));
        assert_eq!(StatusResponse::decode(&[0x12, 1, 0xff]), Err(ProtoError::Utf8(2)));
    }

    #[test]
    fn grpc_frames_round_trip_and_bad_frames_are_refused() {
        let framed = grpc_frame(b"hello");
        assert_eq!(framed, [0, 0, 0, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        assert_eq!(grpc_unframe(&framed), Ok(&b"hello"[..]));
        assert_eq!(grpc_unframe(&grpc_frame(b"")), Ok(&b""[..]));
        assert!(grpc_unframe(&framed[..4]).is_err());
        assert!(grpc_unframe(&framed[..8]).is_err());
        let mut extra = framed.clone();
        extra.push(0);
        assert!(grpc_unframe(&extra).is_err());
        let mut compressed = framed;
        compressed[0] = 1;
        assert!(grpc_unframe(&compressed).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = PutResponse::decode(&bytes);
            let _ = RangeResponse::decode(&bytes);
            let _ = StatusResponse::decode(&bytes);
            let _ = grpc_unframe(&bytes);
            // The field iterator ends: at most one item per input byte, plus one error.
            prop_assert!(fields(&bytes).count() <= bytes.len() + 1);
        }

        #[test]
        fn put_requests_decode_back_to_their_key_and_value(
            key in proptest::collection::vec(any::<u8>(), 1..64),
            value in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let enc = encode_put_request(&key, &value);
            let got: Vec<(u32, Value<'_>)> = fields(&enc).collect::<Result<_, _>>().unwrap();
            let mut want = vec![(1, Value::Bytes(&key[..]))];
            if !value.is_empty() {
                want.push((2, Value::Bytes(&value[..])));
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn headers_round_trip(cluster_id: u64, member_id: u64, revision: i64, raft_term: u64) {
            let h = ResponseHeader { cluster_id, member_id, revision, raft_term };
            prop_assert_eq!(ResponseHeader::decode(&header_bytes(&h)), Ok(h));
        }
    }
}
