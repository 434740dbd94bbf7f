//! Fuzz target: a SWIM member fed arbitrary datagrams and timer firings never panics, keeps its
//! invariants, and only sends packets that fit the limit and decode.
//!
//! ```text
//! cd fuzz && cargo fuzz run -s none handle_swim_packets -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quorate_core::swim::testkit::drive(data));
