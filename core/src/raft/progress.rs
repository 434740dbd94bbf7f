//! What the leader knows about each follower's log, and how much it may send it.
//!
//! Each follower is in one of three states (as in etcd's tracker):
//! - **Probe**: the leader does not know where the follower's log ends; it sends one append at
//!   a time and waits for the answer (or the next heartbeat) before sending another.
//! - **Replicate**: the follower is caught up; the leader streams appends optimistically, bounded
//!   by an in-flight window of messages and bytes.
//! - **Snapshot**: the follower needs entries the leader compacted away; the leader streams
//!   snapshot chunks and sends no appends until the follower reports the snapshot installed.

use super::message::LogIndex;
use crate::NodeId;

/// The replication state of one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Finding where the follower's log matches; one append in flight.
    Probe,
    /// Streaming appends within the in-flight window.
    Replicate,
    /// Sending a snapshot.
    Snapshot,
}

/// A ring of in-flight appends: each slot holds the last index and the bytes of one message.
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    slots: alloc::collections::VecDeque<(LogIndex, u64)>,
    bytes: u64,
    msgs_max: usize,
    bytes_max: u64,
}

impl Inflights {
    pub fn new(msgs_max: usize, bytes_max: u64) -> Self {
        Inflights { slots: alloc::collections::VecDeque::new(), bytes: 0, msgs_max, bytes_max }
    }

    pub fn is_full(&self) -> bool {
        self.slots.len() >= self.msgs_max || self.bytes >= self.bytes_max
    }

    pub fn add(&mut self, last: LogIndex, bytes: u64) {
        self.slots.push_back((last, bytes));
        self.bytes = self.bytes.saturating_add(bytes);
    }

    /// Frees every message whose last index is at or below `index`.
    pub fn free_to(&mut self, index: LogIndex) {
        while let Some(&(last, bytes)) = self.slots.front() {
            if last > index {
                break;
            }
            self.slots.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message, so a window stalled by loss can move again.
    pub fn free_first(&mut self) {
        if let Some((_, bytes)) = self.slots.pop_front() {
            self.bytes -= bytes;
        }
    }

    pub fn reset(&mut self) {
        self.slots.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// An in-progress snapshot transfer to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotSend {
    /// The snapshot's last index.
    pub index: LogIndex,
    /// Bytes the follower confirmed.
    pub acked: u64,
    /// Bytes sent so far (may run ahead of `acked` by a bounded window).
    pub sent: u64,
    /// `acked` at the previous heartbeat; no movement since means chunks were lost.
    pub acked_at_last_heartbeat: u64,
}

/// The leader's view of one member's log.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    /// Highest index known to match the leader's log.
    pub matched: LogIndex,
    /// Next index to send.
    pub next: LogIndex,
    pub state: ProgressState,
    /// In Probe: an append is outstanding; wait for its answer or the next heartbeat.
    pub probe_sent: bool,
    pub inflights: Inflights,
    pub snapshot: Option<SnapshotSend>,
    /// The newest leader clock (`ctx`) this member echoed in the current term.
    pub acked_ctx: u64,
}

impl Progress {
    pub fn new(next: LogIndex, msgs_max: usize, bytes_max: u64) -> Self {
        Progress {
            matched: LogIndex(0),
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::new(msgs_max, bytes_max),
            snapshot: None,
            acked_ctx: 0,
        }
    }

    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.is_full(),
            ProgressState::Snapshot => true,
        }
    }

    pub fn become_probe(&mut self) {
        if self.state == ProgressState::Snapshot {
            let pending = self.snapshot.map_or(LogIndex(0), |s| s.index);
            self.next = self.matched.max(pending).next();
        } else {
            self.next = self.matched.next();
        }
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
        self.snapshot = None;
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched.next();
        self.probe_sent = false;
        self.inflights.reset();
        self.snapshot = None;
    }

    pub fn become_snapshot(&mut self, index: LogIndex) {
        self.state = ProgressState::Snapshot;
        self.probe_sent = false;
        self.inflights.reset();
        self.snapshot = Some(SnapshotSend { index, acked: 0, sent: 0, acked_at_last_heartbeat: 0 });
    }

    /// Records an acknowledgement up to `index`. Returns false if it told nothing new.
    pub fn maybe_update(&mut self, index: LogIndex) -> bool {
        let updated = index > self.matched;
        if updated {
            self.matched = index;
            self.probe_sent = false;
        }
        self.next = self.next.max(index.next());
        updated
    }

    /// Handles a rejection of the append that followed `rejected`; `hint` is where to retry.
    /// Returns false when the rejection is stale and was ignored.
    pub fn maybe_decrease_to(&mut self, rejected: LogIndex, hint: LogIndex) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            // The stream broke (loss or a restarted follower): probe again from the match.
            self.next = self.matched.next();
            return true;
        }
        // A rejection at or below the match contradicts an earlier acknowledgement: stale, or
        // from a broken peer. Retrying it at once would loop forever; the heartbeat retries.
        if self.next.prev() != rejected || rejected <= self.matched {
            return false;
        }
        self.next = hint.next().min(rejected).max(self.matched.next());
        self.probe_sent = false;
        true
    }

    /// Notes that entries up to `last` (of `bytes`) were sent.
    pub fn sent_entries(&mut self, last: LogIndex, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                self.next = last.next();
                self.inflights.add(last, bytes);
            }
            ProgressState::Probe => self.probe_sent = true,
            // `send_append` returns early while a snapshot is in flight (`is_paused`):
            // reaching this is a bug in this crate, and recording the entries as in flight
            // would wedge the follower behind a snapshot it may never finish.
            ProgressState::Snapshot => unreachable!("appends are never sent while sending a snapshot"),
        }
    }
}

/// Progress of every member, kept sorted by id in a small vector: clusters have a handful of
/// members, so a linear scan beats a tree on every lookup of the hot path.
#[derive(Clone, Debug, Default)]
pub(crate) struct ProgressMap {
    entries: alloc::vec::Vec<(NodeId, Progress)>,
}

impl ProgressMap {
    pub fn get(&self, id: &NodeId) -> Option<&Progress> {
        self.entries.iter().find(|(k, _)| k == id).map(|(_, p)| p)
    }

    pub fn get_mut(&mut self, id: &NodeId) -> Option<&mut Progress> {
        self.entries.iter_mut().find(|(k, _)| k == id).map(|(_, p)| p)
    }

    pub fn contains_key(&self, id: &NodeId) -> bool {
        self.get(id).is_some()
    }

    /// Inserts `id` (keeping ids sorted) unless present.
    pub fn get_or_insert_with(&mut self, id: NodeId, make: impl FnOnce() -> Progress) -> &mut Progress {
        let pos = match self.entries.binary_search_by_key(&id, |(k, _)| *k) {
            Ok(pos) => pos,
            Err(pos) => {
                self.entries.insert(pos, (id, make()));
                pos
            }
        };
        &mut self.entries[pos].1
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&NodeId) -> bool) {
        self.entries.retain(|(id, _)| keep(id));
    }

    /// Ids in ascending order.
    pub fn keys(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.entries.iter().map(|(id, _)| id)
    }

    /// `(id, progress)` in ascending id order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Progress)> + '_ {
        self.entries.iter().map(|(id, p)| (id, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_map_keeps_ids_sorted_and_unique() {
        let mut m = ProgressMap::default();
        for id in [5, 1, 3, 1] {
            m.get_or_insert_with(NodeId(id), || Progress::new(LogIndex(id), 4, 100));
        }
        assert_eq!(m.keys().map(|k| k.0).collect::<alloc::vec::Vec<_>>(), [1, 3, 5]);
        assert_eq!(m.get(&NodeId(1)).map(|p| p.next), Some(LogIndex(1)), "first insert wins");
        m.retain(|id| id.0 != 3);
        assert!(!m.contains_key(&NodeId(3)) && m.contains_key(&NodeId(5)));
        m.clear();
        assert!(m.is_empty());
    }

    #[test]
    fn inflights_bound_messages_and_bytes() {
        let mut inf = Inflights::new(3, 100);
        inf.add(LogIndex(1), 10);
        inf.add(LogIndex(2), 10);
        assert!(!inf.is_full());
        inf.add(LogIndex(3), 10);
        assert!(inf.is_full(), "message bound");
        inf.free_to(LogIndex(2));
        assert_eq!(inf.len(), 1);
        inf.add(LogIndex(4), 95);
        assert!(inf.is_full(), "byte bound");
        inf.free_first();
        inf.free_first();
        assert_eq!((inf.len(), inf.bytes()), (0, 0));
    }

    #[test]
    fn probe_sends_one_at_a_time_and_backs_off_to_the_hint() {
        let mut pr = Progress::new(LogIndex(11), 4, 1 << 20);
        assert!(!pr.is_paused());
        pr.sent_entries(LogIndex(12), 10);
        assert!(pr.is_paused());
        assert!(!pr.maybe_decrease_to(LogIndex(5), LogIndex(3)), "stale rejection ignored");
        assert!(pr.maybe_decrease_to(LogIndex(10), LogIndex(6)));
        assert_eq!(pr.next, LogIndex(7));
        assert!(!pr.is_paused());
    }

    #[test]
    fn replicate_rejection_falls_back_to_match() {
        let mut pr = Progress::new(LogIndex(1), 4, 1 << 20);
        pr.maybe_update(LogIndex(5));
        pr.become_replicate();
        pr.sent_entries(LogIndex(9), 10);
        assert_eq!(pr.next, LogIndex(10));
        assert!(!pr.maybe_decrease_to(LogIndex(4), LogIndex(0)), "rejection below match is stale");
        assert!(pr.maybe_decrease_to(LogIndex(7), LogIndex(0)));
        assert_eq!(pr.next, LogIndex(6));
    }
}
