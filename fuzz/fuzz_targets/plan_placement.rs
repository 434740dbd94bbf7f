//! Fuzz target: the placement planner, fed arbitrary topologies, shard maps and limits, never
//! panics, plans the same twice, keeps its node limits, copies only from live readable
//! replicas, and never leaves a shard with fewer readable replicas than before (up to its rf).
//!
//! ```text
//! cd fuzz && cargo fuzz run -s none plan_placement -- -max_total_time=60
//! ```

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| quorate_core::placement::testkit::drive_planner(data));
