//! The piggyback queue: at most one pending update per member, fewest sends first, then newest.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::cmp::Reverse;

use super::message::Update;
use crate::NodeId;

struct Queued {
    /// Who made the claim (for a suspicion: the suspecter, each one a confirmation).
    by: NodeId,
    /// The update's encoded size when queued (the update itself is rebuilt from the member's
    /// record when sent; every change to a record queues it again or drops it).
    size: usize,
    sends: u32,
    seq: u64,
}

/// Pending gossip: which members have news, not the news itself, so a queue as long as the
/// cluster costs a few dozen bytes per entry. A newer update about a member replaces the older
/// one and starts fresh. At most `max` entries; past that the most-sent, oldest one is dropped
/// (anti-entropy repairs what gossip drops), never this member's own.
pub(crate) struct GossipQueue {
    items: BTreeMap<NodeId, Queued>,
    order: BTreeSet<(u32, Reverse<u64>, NodeId)>,
    next_seq: u64,
    max: usize,
    own: NodeId,
    dropped: u64,
}

/// The smallest encoded update (a `Down` with one-byte varints); less room than this is full.
const MIN_UPDATE_BYTES: usize = 4;
/// Items examined per packet before giving up on filling it, so large queues cost O(1) per packet.
const SCAN_MAX: usize = 256;
/// Updates in a row too large for what is left before the packet counts as full: the queue
/// holds updates of a few sizes, so a run of misses means the rest of the scan would miss too.
const MISSES_MAX: usize = 8;

impl GossipQueue {
    /// An empty queue of at most `max` entries that never drops updates about `own`.
    pub fn new(max: usize, own: NodeId) -> GossipQueue {
        GossipQueue { items: BTreeMap::new(), order: BTreeSet::new(), next_seq: 0, max: max.max(1), own, dropped: 0 }
    }

    /// Queues `update`, replacing any pending update about the same member.
    pub fn push(&mut self, update: &Update) {
        self.push_sent(update, 0);
    }

    /// Queues `update` as if already sent `sends` times: it goes after news and retires sooner.
    pub fn push_sent(&mut self, update: &Update, sends: u32) {
        let id = update.id();
        self.remove(id);
        let size = update.encoded_len();
        let by = match update {
            Update::Suspect { by, .. } => *by,
            _ => NodeId::NONE,
        };
        self.next_seq += 1;
        let seq = self.next_seq;
        self.order.insert((sends, Reverse(seq), id));
        self.items.insert(id, Queued { by, size, sends, seq });
        while self.items.len() > self.max {
            let Some(&victim) = self.order.iter().rev().find(|(_, _, v)| *v != self.own) else { break };
            self.order.remove(&victim);
            self.items.remove(&victim.2);
            self.dropped += 1;
        }
    }

    /// Drops the pending update about `id`.
    pub fn remove(&mut self, id: NodeId) {
        if let Some(q) = self.items.remove(&id) {
            self.order.remove(&(q.sends, Reverse(q.seq), id));
        }
    }

    /// Pending updates.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Updates dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// True if an update about `id` is pending.
    pub fn contains(&self, id: NodeId) -> bool {
        self.items.contains_key(&id)
    }

    /// Every pending `(member, claimant, queued size)`, for invariant checks.
    pub fn pending(&self) -> impl Iterator<Item = (NodeId, NodeId, usize)> + '_ {
        self.items.iter().map(|(id, q)| (*id, q.by, q.size))
    }

    /// Takes updates whose encodings fit `budget` bytes, fewest sends first, then newest; each
    /// taken update counts one send and is dropped after `limit` sends. Members in `skip` are
    /// left out (updates about them were already placed first, as warnings or corrections). `current(id, by)` rebuilds the
    /// update about `id` from what is known now.
    pub fn take(
        &mut self,
        mut budget: usize,
        limit: u32,
        skip: &[NodeId],
        out: &mut Vec<Update>,
        current: impl Fn(NodeId, NodeId) -> Option<Update>,
    ) {
        let mut picked = Vec::new();
        let mut misses = 0;
        for &(sends, seq, id) in self.order.iter().take(SCAN_MAX) {
            if budget < MIN_UPDATE_BYTES || misses == MISSES_MAX {
                break;
            }
            if skip.contains(&id) {
                continue;
            }
            if let Some(q) = self.items.get(&id) {
                if q.size <= budget {
                    budget -= q.size;
                    picked.push((sends, seq, id));
                    misses = 0;
                } else {
                    misses += 1;
                }
            }
        }
        for key in picked {
            let (sends, seq, id) = key;
            self.order.remove(&key);
            let Some(q) = self.items.get_mut(&id) else { continue };
            let Some(update) = current(id, q.by) else {
                self.items.remove(&id);
                continue;
            };
            out.push(update);
            q.sends = sends + 1;
            if q.sends >= limit {
                self.items.remove(&id);
            } else {
                self.order.insert((q.sends, seq, id));
            }
        }
    }

    /// Panics if the index and the items disagree or the queue is over its bound.
    pub fn check(&self) {
        assert_eq!(self.items.len(), self.order.len(), "gossip index out of step");
        assert!(
            self.items.len() <= self.max || self.items.keys().all(|id| *id == self.own),
            "gossip queue over its bound"
        );
        for (sends, Reverse(seq), id) in &self.order {
            let q = &self.items[id];
            assert_eq!((q.sends, q.seq), (*sends, *seq), "gossip index out of step for {id}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn down(id: u64) -> Update {
        Update::Down { id: NodeId(id), gen: 1, inc: 0 }
    }

    /// What the queue's owner knows: the latest update pushed about each member.
    struct Known(BTreeMap<NodeId, Update>);

    impl Known {
        fn push(&mut self, q: &mut GossipQueue, u: Update) {
            q.push(&u);
            self.0.insert(u.id(), u);
        }

        fn take(&self, q: &mut GossipQueue, budget: usize, limit: u32, skip: &[NodeId], out: &mut Vec<Update>) {
            q.take(budget, limit, skip, out, |id, _| self.0.get(&id).cloned());
        }
    }

    #[test]
    fn newest_and_least_sent_go_first_and_retire_after_the_limit() {
        let mut q = GossipQueue::new(100, NodeId(99));
        let mut k = Known(BTreeMap::new());
        k.push(&mut q, down(1));
        k.push(&mut q, down(2));
        let mut out = Vec::new();
        k.take(&mut q, 1000, 2, &[], &mut out);
        assert_eq!(out, vec![down(2), down(1)]);
        k.push(&mut q, down(3));
        out.clear();
        k.take(&mut q, 1000, 2, &[], &mut out);
        assert_eq!(out, vec![down(3), down(2), down(1)], "fresh update first, then by age");
        assert_eq!(q.len(), 1, "1 and 2 reached the limit");
        q.check();
    }

    #[test]
    fn budget_is_respected_and_replacement_resets_sends() {
        let mut q = GossipQueue::new(1000, NodeId(1000));
        let mut k = Known(BTreeMap::new());
        for i in 1..=100 {
            k.push(&mut q, down(i));
        }
        let one = postcard::experimental::serialized_size(&down(100)).unwrap();
        let mut out = Vec::new();
        k.take(&mut q, one * 10, 5, &[], &mut out);
        assert_eq!(out.len(), 10);
        k.push(&mut q, Update::Down { id: NodeId(100), gen: 2, inc: 0 });
        out.clear();
        k.take(&mut q, one, 5, &[NodeId(99)], &mut out);
        assert_eq!(out, vec![Update::Down { id: NodeId(100), gen: 2, inc: 0 }]);
        q.check();
    }

    #[test]
    fn a_full_queue_drops_its_most_sent_oldest_entry_but_never_its_own() {
        let mut q = GossipQueue::new(3, NodeId(1));
        let mut k = Known(BTreeMap::new());
        k.push(&mut q, down(1));
        k.push(&mut q, down(2));
        let mut out = Vec::new();
        k.take(&mut q, 1000, 9, &[], &mut out);
        k.push(&mut q, down(3));
        k.push(&mut q, down(4));
        assert_eq!(q.len(), 3);
        assert_eq!(q.dropped(), 1);
        assert!(q.contains(NodeId(1)), "the owner's own update stays although it was sent and is oldest");
        assert!(!q.contains(NodeId(2)), "the most-sent, oldest other entry went");
        assert!(q.contains(NodeId(3)) && q.contains(NodeId(4)));
        q.check();
    }

    #[test]
    fn updates_are_rebuilt_from_what_is_known_when_sent() {
        let mut q = GossipQueue::new(10, NodeId(9));
        q.push(&Update::Suspect { id: NodeId(2), gen: 1, inc: 0, by: NodeId(7) });
        let mut out = Vec::new();
        q.take(1000, 3, &[], &mut out, |id, by| Some(Update::Suspect { id, gen: 1, inc: 0, by }));
        assert_eq!(out, vec![Update::Suspect { id: NodeId(2), gen: 1, inc: 0, by: NodeId(7) }], "the claimant is kept");
        out.clear();
        q.take(1000, 3, &[], &mut out, |_, _| None);
        assert!(out.is_empty() && q.len() == 0, "an entry whose member is gone is dropped");
    }
}
