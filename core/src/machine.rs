//! The shape every state machine of the core shares, so one driving loop serves them all.
//!
//! A machine has four kinds of methods:
//! - **getters** (`&self`), which never change state;
//! - **inputs** named `handle_*` (a message, a timeout, a durability report), each taking `now`;
//! - **commands** (`propose`, `read_index`, `transfer_leader`, ...), each taking `now` and
//!   returning a typed error when refused, in which case nothing changed;
//! - **outputs**: [`Machine::poll_action`], drained until it returns `None` after every input or
//!   command, then [`Machine::poll_timeout`], the instant to call [`Machine::handle_timeout`] at.
//!
//! Actions are ordered. A host carries them out in the order they are polled; the action types
//! document the duties that order carries (for Raft: every `Persist` before it must be durable
//! before a later `Send` leaves the node).

use crate::time::Instant;

/// A sans-IO state machine driven by inputs carrying `now` and drained of ordered actions.
pub trait Machine {
    /// What the machine asks its host to do.
    type Action;

    /// Lets timers fire. Harmless when called early, late or repeatedly.
    fn handle_timeout(&mut self, now: Instant);

    /// The next action to carry out, in order; `None` once drained.
    fn poll_action(&mut self) -> Option<Self::Action>;

    /// The earliest instant at which [`Machine::handle_timeout`] wants to be called.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Panics if an internal invariant is broken. Tests and simulators call it after every step.
    fn check_invariants(&self);
}
