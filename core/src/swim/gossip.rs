//! The piggyback queue: at most one pending update per member, fewest sends first, then newest.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::cmp::Reverse;

use super::message::Update;
use crate::NodeId;

struct Queued {
    update: Update,
    size: usize,
    sends: u32,
    seq: u64,
}

/// Pending gossip. A newer update about a member replaces the older one and starts fresh.
#[derive(Default)]
pub(crate) struct GossipQueue {
    items: BTreeMap<NodeId, Queued>,
    order: BTreeSet<(u32, Reverse<u64>, NodeId)>,
    next_seq: u64,
}

/// The smallest encoded update (a `Down` with one-byte varints); less room than this is full.
const MIN_UPDATE_BYTES: usize = 4;
/// Items examined per packet before giving up on filling it, so large queues cost O(1) per packet.
const SCAN_MAX: usize = 256;

impl GossipQueue {
    /// Queues `update`, replacing any pending update about the same member.
    pub fn push(&mut self, update: Update) {
        let id = update.id();
        self.remove(id);
        let size = postcard::experimental::serialized_size(&update).unwrap_or(usize::MAX);
        self.next_seq += 1;
        let seq = self.next_seq;
        self.order.insert((0, Reverse(seq), id));
        self.items.insert(id, Queued { update, size, sends: 0, seq });
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

    /// The pending update about `id`, if any.
    pub fn get(&self, id: NodeId) -> Option<&Update> {
        self.items.get(&id).map(|q| &q.update)
    }

    /// Takes updates whose encodings fit `budget` bytes, fewest sends first, then newest; each
    /// taken update counts one send and is dropped after `limit` sends. `skip` is left out (it
    /// was already placed first, as the buddy-system warning).
    pub fn take(&mut self, mut budget: usize, limit: u32, skip: Option<NodeId>, out: &mut Vec<Update>) {
        let mut picked = Vec::new();
        for &(sends, seq, id) in self.order.iter().take(SCAN_MAX) {
            if budget < MIN_UPDATE_BYTES {
                break;
            }
            if Some(id) == skip {
                continue;
            }
            if let Some(q) = self.items.get(&id) {
                if q.size <= budget {
                    budget -= q.size;
                    picked.push((sends, seq, id));
                }
            }
        }
        for key in picked {
            let (sends, seq, id) = key;
            self.order.remove(&key);
            let Some(q) = self.items.get_mut(&id) else { continue };
            out.push(q.update.clone());
            q.sends = sends + 1;
            if q.sends >= limit {
                self.items.remove(&id);
            } else {
                self.order.insert((q.sends, seq, id));
            }
        }
    }

    /// Panics if the index and the items disagree.
    pub fn check(&self) {
        assert_eq!(self.items.len(), self.order.len(), "gossip index out of step");
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

    #[test]
    fn newest_and_least_sent_go_first_and_retire_after_the_limit() {
        let mut q = GossipQueue::default();
        q.push(down(1));
        q.push(down(2));
        let mut out = Vec::new();
        q.take(1000, 2, None, &mut out);
        assert_eq!(out, vec![down(2), down(1)]);
        q.push(down(3));
        out.clear();
        q.take(1000, 2, None, &mut out);
        assert_eq!(out, vec![down(3), down(2), down(1)], "fresh update first, then by age");
        assert_eq!(q.len(), 1, "1 and 2 reached the limit");
        q.check();
    }

    #[test]
    fn budget_is_respected_and_replacement_resets_sends() {
        let mut q = GossipQueue::default();
        for i in 1..=100 {
            q.push(down(i));
        }
        let one = postcard::experimental::serialized_size(&down(100)).unwrap();
        let mut out = Vec::new();
        q.take(one * 10, 5, None, &mut out);
        assert_eq!(out.len(), 10);
        q.push(Update::Down { id: NodeId(100), gen: 2, inc: 0 });
        out.clear();
        q.take(one, 5, Some(NodeId(99)), &mut out);
        assert_eq!(out, vec![Update::Down { id: NodeId(100), gen: 2, inc: 0 }]);
        q.check();
    }
}
