//! Quorate's seeded fault simulator for the core's state machines.
//!
//! Everything is single-threaded and driven by virtual time that jumps to the next event or
//! timer, so one seed gives one trace, bit for bit, on every machine. A run prints its seed
//! and trace hash; a failing seed replays exactly.
//!
//! ```
//! use quorate_sim::raft_sim::{run, RaftSimConfig};
//!
//! let mut cfg = RaftSimConfig::new(7, 3);
//! cfg.chaos_ns = 2_000_000_000;
//! cfg.healed_ns = 6_000_000_000;
//! let a = run(cfg.clone());
//! let b = run(cfg);
//! assert!(a.violation.is_none(), "{:?}", a.violation);
//! assert_eq!(a.trace, b.trace, "same seed, same trace");
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cli;
pub mod kv;
pub mod linearizability;
pub mod net;
pub mod placement_cli;
pub mod placement_sim;
pub mod raft_sim;
pub mod runtime_cli;
#[cfg(madsim)]
pub mod runtime_sim;
pub mod swim_cli;
pub mod swim_sim;
