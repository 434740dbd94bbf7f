//! The seeded network and event queue every simulation shares.
//!
//! Time is virtual nanoseconds. Events with equal times leave the queue in the order they
//! were scheduled, so a run depends only on its seed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use quorate_core::NodeId;
use rand_chacha::ChaCha8Rng;
use rand_core::RngCore;

/// A queue of events ordered by time, then by scheduling order.
pub struct Scheduler<E> {
    heap: BinaryHeap<Reverse<(u64, u64, Slot)>>,
    slots: Vec<Option<E>>,
    free: Vec<usize>,
    seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Slot(usize);

impl<E> Default for Scheduler<E> {
    fn default() -> Self {
        Scheduler { heap: BinaryHeap::new(), slots: Vec::new(), free: Vec::new(), seq: 0 }
    }
}

impl<E> Scheduler<E> {
    /// Schedules `event` at virtual time `at`.
    pub fn at(&mut self, at: u64, event: E) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(event);
                i
            }
            None => {
                self.slots.push(Some(event));
                self.slots.len() - 1
            }
        };
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, Slot(slot))));
    }

    /// The time of the next event.
    pub fn peek_time(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Removes and returns the next event with its time.
    pub fn pop(&mut self) -> Option<(u64, E)> {
        let Reverse((t, _, Slot(i))) = self.heap.pop()?;
        self.free.push(i);
        self.slots[i].take().map(|e| (t, e))
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True if no event waits.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// A uniform draw in `[lo, hi]` from `rng`.
pub fn uniform(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return lo;
    }
    lo + rng.next_u64() % (hi - lo + 1)
}

/// True with probability `p`.
pub fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    if p <= 0.0 {
        return false;
    }
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
}

/// Per-link behaviour: delay, loss, duplication and cut links (partitions).
#[derive(Clone, Debug)]
pub struct LinkModel {
    /// Smallest one-way delay in nanoseconds.
    pub delay_min_ns: u64,
    /// Largest one-way delay; spread between the two reorders packets.
    pub delay_max_ns: u64,
    /// Probability a packet is lost.
    pub loss: f64,
    /// Probability a packet is delivered twice.
    pub duplicate: f64,
    /// Links cut in the direction `(from, to)`.
    pub cut: BTreeSet<(NodeId, NodeId)>,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel { delay_min_ns: 1_000_000, delay_max_ns: 10_000_000, loss: 0.0, duplicate: 0.0, cut: BTreeSet::new() }
    }
}

impl LinkModel {
    /// Delivery times for one packet sent at `now` (none if lost or cut, two if duplicated).
    pub fn deliveries(&self, rng: &mut ChaCha8Rng, now: u64, from: NodeId, to: NodeId) -> Vec<u64> {
        if self.cut.contains(&(from, to)) || chance(rng, self.loss) {
            return Vec::new();
        }
        let mut out = vec![now + uniform(rng, self.delay_min_ns, self.delay_max_ns)];
        if chance(rng, self.duplicate) {
            out.push(now + uniform(rng, self.delay_min_ns, self.delay_max_ns * 2));
        }
        out
    }

    /// Cuts every link between the two groups, both ways.
    pub fn split(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Cuts only `from -> to` for every pair (a one-way partition).
    pub fn cut_one_way(&mut self, from: &[NodeId], to: &[NodeId]) {
        for &x in from {
            for &y in to {
                self.cut.insert((x, y));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn scheduler_is_fifo_at_equal_times() {
        let mut s = Scheduler::default();
        s.at(5, "b");
        s.at(1, "a");
        s.at(5, "c");
        let order: Vec<_> = std::iter::from_fn(|| s.pop()).collect();
        assert_eq!(order, vec![(1, "a"), (5, "b"), (5, "c")]);
    }

    #[test]
    fn cut_links_deliver_nothing_and_loss_is_seeded() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut m = LinkModel::default();
        m.split(&[NodeId(1)], &[NodeId(2)]);
        assert!(m.deliveries(&mut rng, 0, NodeId(1), NodeId(2)).is_empty());
        assert!(m.deliveries(&mut rng, 0, NodeId(2), NodeId(1)).is_empty());
        m.heal();
        m.loss = 0.5;
        let count = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..1000).filter(|_| !m.deliveries(&mut rng, 0, NodeId(1), NodeId(2)).is_empty()).count()
        };
        assert_eq!(count(9), count(9));
        assert!((400..600).contains(&count(9)));
    }
}
