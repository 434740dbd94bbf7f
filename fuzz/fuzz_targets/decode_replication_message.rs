//! Fuzz target: decoding a replication datagram (and its checks) is total, and what decodes
//! re-encodes to itself.
//!
//! ```text
//! cd fuzz && cargo fuzz run -s none decode_replication_message -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quorate_core::replication::testkit::check_decode(data));
