//! Quorate's core: sans-IO state machines for cluster coordination.
//!
//! # IO contract
//! Nothing in this crate touches a clock, a socket, a file, a thread or the OS's randomness.
//! Time comes in as `now` ([`Instant`]) on every call that can act on time; randomness comes
//! from a seed the host passes to each machine's constructor. Outputs are plain values the
//! host drains and carries out in order. The same seed and the same inputs give the same
//! outputs, bit for bit.
//!
//! Every machine has the shape described in [`machine`]: getters, `handle_*` inputs, commands,
//! and `poll_action` / `poll_timeout` outputs drained after each mutation.
//!
//! # Driving loop
//! One loop drives any machine. Here it runs a one-node Raft group with an in-memory "disk":
//!
//! ```
//! use quorate_core::raft::{Action, Config, Membership, Raft, Recovered, Role};
//! use quorate_core::{Instant, NodeId};
//!
//! let id = NodeId(1);
//! let mut raft = Raft::new(Config::new(id), Membership::with_voters([id]), Recovered::default(), 7, Instant::ZERO)
//!     .expect("valid config");
//! let mut now = Instant::ZERO;
//! let mut applied = Vec::new();
//! let mut proposed = false;
//! for _ in 0..100 {
//!     // 1. Drain every action, in order. Persist before sending what follows it.
//!     let mut durable = Vec::new();
//!     while let Some(action) = raft.poll_action() {
//!         match action {
//!             Action::PersistEntries { first_index, last_index } => {
//!                 // Entries are lent: write raft.entries(..) to disk, fsync, then report.
//!                 if let Some(last) = raft.entries(first_index, last_index).last() {
//!                     durable.push((last.index, last.term));
//!                 }
//!             }
//!             Action::ApplyEntries { first_index, last_index } => {
//!                 applied.extend(raft.entries(first_index, last_index).iter().cloned())
//!             }
//!             Action::Send { .. } => { /* encode and send the datagram */ }
//!             _ => {}
//!         }
//!     }
//!     for (index, term) in durable {
//!         raft.handle_persisted(now, index, term);
//!     }
//!     // 2. Feed an input: a command, a message, or the timer.
//!     if raft.role() == Role::Leader && !proposed {
//!         raft.propose(now, "hello").expect("leader accepts");
//!         proposed = true;
//!     } else if let Some(deadline) = raft.poll_timeout() {
//!         now = now.max(deadline);
//!         raft.handle_timeout(now);
//!     }
//!     raft.check_invariants();
//! }
//! assert_eq!(raft.role(), Role::Leader);
//! assert!(applied.iter().any(|e| matches!(&e.payload, quorate_core::raft::EntryPayload::Command(d) if d == "hello")));
//! ```

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod hash;
pub mod machine;
pub mod placement;
pub mod raft;
pub mod swim;
pub mod time;
mod types;
pub mod wire;

pub use machine::Machine;
pub use time::Instant;
pub use types::{fnv1a64, fnv1a64_extend, NodeId};
