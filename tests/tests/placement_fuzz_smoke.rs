//! Short proptest versions of the placement cargo-fuzz targets (`plan_placement`,
//! `step_migration`): both call the same drivers in `quorate_core::placement::testkit`.

use proptest::prelude::*;
use quorate_core::placement::testkit::{drive_migration, drive_planner};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn placement_fuzz_smoke_planner_keeps_its_rules(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        drive_planner(&bytes);
    }

    #[test]
    fn placement_fuzz_smoke_migration_keeps_its_floor(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        drive_migration(&bytes);
    }

    #[test]
    fn placement_fuzz_smoke_migration_in_order(seed in any::<u64>()) {
        // Mostly well-ordered events, so the later phases are reached often.
        let mut bytes = vec![(seed % 3) as u8, (seed >> 8) as u8 % 4, 1];
        for (i, op) in [0u8, 1, 2, 3, 4].iter().enumerate() {
            if (seed >> (16 + i)) & 1 == 1 {
                bytes.extend_from_slice(&[5, (seed >> (24 + 2 * i)) as u8]);
            }
            bytes.extend_from_slice(&[*op, 7]);
        }
        drive_migration(&bytes);
    }
}
