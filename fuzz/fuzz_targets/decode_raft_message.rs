//! Fuzz target: the datagram decoder must be total, and every datagram it accepts must
//! re-encode to bytes that decode to the same envelope (and re-encode to themselves).
//!
//! Run (stable toolchain; needs `cargo install cargo-fuzz`):
//!
//! ```text
//! cd fuzz && cargo fuzz run -s none decode_raft_message -- -max_total_time=60
//! # reproduce and minimise a crash:
//! cd fuzz && cargo fuzz run -s none decode_raft_message artifacts/decode_raft_message/crash-<hash>
//! cd fuzz && cargo fuzz tmin -s none decode_raft_message artifacts/decode_raft_message/crash-<hash>
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;
use quorate_core::raft::Message;
use quorate_core::wire::{self, Envelope, MAGIC, PROTOCOL_VERSION};

const CLUSTER_ID: u64 = 0x5152_0001;
const MAX_BYTES: usize = 64 << 10;

fn check(bytes: &[u8]) {
    let Ok(env) = wire::decode::<Message>(bytes, CLUSTER_ID, MAX_BYTES) else { return };
    assert_eq!(env.cluster_id, CLUSTER_ID, "decode accepted another cluster's datagram");
    // Postcard accepts non-minimal varints, so the canonical re-encoding is never longer.
    let again = wire::encode(CLUSTER_ID, env.from, &env.body, MAX_BYTES).expect("a decoded message re-encodes");
    assert!(again.len() <= bytes.len(), "re-encoding grew from {} to {} bytes", bytes.len(), again.len());
    let back: Envelope<Message> = wire::decode(&again, CLUSTER_ID, MAX_BYTES).expect("a re-encoded message decodes");
    assert_eq!(back, env, "round trip changed the message");
    let third = wire::encode(CLUSTER_ID, back.from, &back.body, MAX_BYTES).expect("re-encodes");
    assert_eq!(third, again, "encoding is not canonical");
}

fuzz_target!(|data: &[u8]| {
    // The raw input, which exercises the header checks...
    check(data);
    // ...and the same bytes behind a valid header, which reaches the body decoder at once.
    let mut framed = Vec::with_capacity(data.len() + 3);
    framed.extend_from_slice(&MAGIC);
    framed.push(PROTOCOL_VERSION);
    framed.extend_from_slice(data);
    check(&framed);
});
