//! Fuzz target: one shard move fed arbitrary events (in any order, with node failures and
//! timeouts) keeps its invariants and never leaves fewer readable replicas than it started with.
//!
//! ```text
//! cd fuzz && cargo fuzz run -s none step_migration -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quorate_core::placement::testkit::drive_migration(data));
