//! Fuzz target: three replicas fed writes, reads, deletes, crashes, cut links and arbitrary or
//! forged datagrams never panic, keep their invariants after every step, and only send
//! datagrams that fit the limit and decode.
//!
//! ```text
//! cd fuzz && cargo fuzz run -s none handle_replication_messages -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quorate_core::replication::testkit::drive(data));
