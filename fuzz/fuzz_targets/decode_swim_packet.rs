//! Fuzz target: decoding a SWIM packet is total, and what decodes re-encodes to itself.
//!
//! ```text
//! cd fuzz && cargo fuzz run -s none decode_swim_packet -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quorate_core::swim::testkit::check_decode(data));
