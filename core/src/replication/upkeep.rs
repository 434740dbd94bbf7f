//! Background duties: hinted handoff, and collecting tombstones once every replica has seen
//! them.
//!
//! **Hints** name a key and the replica that missed it; what is delivered is the key's state
//! at delivery time, which covers the missed write (and anything since). Hints are bounded
//! and persisted through the host; the oldest is dropped when full, and anti-entropy repairs
//! what it covered.
//!
//! **Tombstones** are tracked with the replicas known to hold exactly this state: itself once
//! stored, the sender of a state equal to it, a replica that acknowledged it, a peer whose
//! hash-tree node covering it matched ours. Once every replica is known to hold it and it is
//! older than `tombstone_grace`, it is collected: removed from the store (and the tree), and
//! remembered for `collected_ttl` with its clock, so a copy still in flight, or a replica that
//! has not collected yet, is recognised as stale instead of bringing the entry back. The
//! grace period covers copies delayed in the network or held by a read; the memory covers
//! the time peers take to collect too.

use alloc::vec::Vec;

use super::message::{Message, Origin};
use super::state::{EntryId, KeyState};
use super::store::key_hash;
use super::{Change, Durable, PlantedBug, Replica};
use crate::time::Instant;
use crate::NodeId;

/// Who is waiting for the acknowledgement of an outgoing request number.
pub(super) enum Owner {
    /// A client write (by ticket).
    Client(u64),
    /// A read (by ticket).
    Read(u64),
    /// A hint delivery to `target`: the keys of each part still unacknowledged.
    Hint {
        /// The replica.
        target: NodeId,
        /// Keys per part.
        parts: Vec<Vec<EntryId>>,
    },
    /// An anti-entropy push.
    Sync {
        /// The peer.
        peer: NodeId,
        /// Its session.
        session: u64,
        /// The request within the session.
        rid: u32,
    },
}

impl Owner {
    /// True if this belongs to `session` with `peer`.
    pub(super) fn is_session(&self, peer: NodeId, session: u64) -> bool {
        matches!(self, Owner::Sync { peer: p, session: s, .. } if *p == peer && *s == session)
    }
}

/// A stored tombstone and the replicas known to hold exactly it.
pub(super) struct Tomb {
    /// When it was stored here in this form.
    pub since: Instant,
    /// Its digest.
    pub digest: u64,
    /// Replicas known to hold it, sorted.
    pub seen: Vec<NodeId>,
}

impl Replica {
    /// Tracks (or stops tracking) `id` after its state changed; `holder` is a replica known to
    /// hold exactly the new state.
    pub(super) fn note_stored(&mut self, now: Instant, id: EntryId, digest: u64, holder: Option<NodeId>) {
        let key = (key_hash(id), id);
        let tomb = self.store.get(id).is_some_and(|s| s.is_tombstone());
        if !tomb {
            self.tombs.remove(&key);
            return;
        }
        let me = self.cfg.id;
        let t = self.tombs.entry(key).or_insert_with(|| Tomb { since: now, digest, seen: Vec::new() });
        if t.digest != digest {
            *t = Tomb { since: now, digest, seen: Vec::new() };
        }
        for n in [Some(me), holder].into_iter().flatten() {
            if let Err(at) = t.seen.binary_search(&n) {
                t.seen.insert(at, n);
            }
        }
    }

    /// `node` holds state `digest` of `id`.
    pub(super) fn mark_seen(&mut self, id: EntryId, digest: u64, node: NodeId) {
        if let Some(t) = self.tombs.get_mut(&(key_hash(id), id)) {
            if t.digest == digest {
                if let Err(at) = t.seen.binary_search(&node) {
                    t.seen.insert(at, node);
                }
            }
        }
    }

    /// `node` holds exactly our states for every key whose hash lies in `lo..=hi`.
    pub(super) fn mark_seen_hashes(&mut self, lo: u64, hi: u64, node: NodeId) {
        let range = (lo, EntryId(0))..=(hi, EntryId(u64::MAX));
        for t in self.tombs.range_mut(range).map(|(_, t)| t) {
            if let Err(at) = t.seen.binary_search(&node) {
                t.seen.insert(at, node);
            }
        }
    }

    /// Forgets the memory of a collected tombstone.
    pub(super) fn forget_collected(&mut self, id: EntryId) {
        if let Some((_, at)) = self.collected.remove(&id) {
            self.collected_order.remove(&(at, id));
        }
    }

    fn remember_collected(&mut self, now: Instant, id: EntryId, state: KeyState) {
        self.forget_collected(id);
        while self.collected.len() >= self.cfg.collected_max {
            let Some((at, old)) = self.collected_order.pop_first() else { break };
            let _ = at;
            self.collected.remove(&old);
        }
        let until = now.saturating_add(self.cfg.collected_ttl);
        self.collected.insert(id, (state, until));
        self.collected_order.insert((until, id));
    }

    /// Collects every tombstone every replica has seen, and expires old memories.
    pub(super) fn collect_garbage(&mut self, now: Instant) {
        while let Some(&(until, id)) = self.collected_order.first() {
            if until > now {
                break;
            }
            self.collected_order.pop_first();
            self.collected.remove(&id);
        }
        let early = self.planted(PlantedBug::TombstoneCollectedEarly);
        let grace = self.cfg.tombstone_grace;
        let replicas = &self.cfg.replicas;
        let ready: Vec<(u64, EntryId)> = self
            .tombs
            .iter()
            .filter(|(_, t)| {
                early
                    || (now.saturating_duration_since(t.since) >= grace
                        && replicas.iter().all(|r| t.seen.binary_search(r).is_ok()))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in ready {
            self.tombs.remove(&key);
            let id = key.1;
            let Some(state) = self.store.remove(id) else { continue };
            self.persist(Durable::Entry { id });
            self.stats.collected += 1;
            self.record(now, Change::Collected { id });
            self.remember_collected(now, id, state);
        }
    }

    /// Remembers that `target` missed `id` (durably), dropping the oldest hint when full.
    pub(super) fn add_hint(&mut self, now: Instant, target: NodeId, id: EntryId) {
        if target == self.cfg.id || self.hints.contains_key(&(target, id)) || !self.peers.contains_key(&target) {
            return;
        }
        if self.hints.len() >= self.cfg.hints_max {
            let oldest = self.hint_times.iter().filter_map(|(t, h)| h.first().map(|&(at, id)| (at, *t, id))).min();
            if let Some((_, t, old)) = oldest {
                self.drop_hint(t, old);
                self.stats.hints_dropped += 1;
            }
        }
        self.hints.insert((target, id), now);
        self.hint_times.entry(target).or_default().insert((now, id));
        self.stats.hints_stored += 1;
        self.persist(Durable::Hint { target, id });
    }

    /// Forgets a hint (durably).
    pub(super) fn drop_hint(&mut self, target: NodeId, id: EntryId) {
        if let Some(at) = self.hints.remove(&(target, id)) {
            if let Some(h) = self.hint_times.get_mut(&target) {
                h.remove(&(at, id));
                if h.is_empty() {
                    self.hint_times.remove(&target);
                }
            }
            self.persist(Durable::HintDone { target, id });
        }
    }

    /// Offers hints to their replicas: a batch to those that answer, one to those that do not
    /// (a probe, so a returning replica is noticed without a flood).
    pub(super) fn retry_hints(&mut self, now: Instant) {
        let targets: Vec<NodeId> = self.hint_times.keys().copied().collect();
        for t in targets {
            self.owners.retain(|_, o| !matches!(o, Owner::Hint { target, .. } if *target == t));
            let answering = self.peers.get(&t).is_some_and(|p| {
                p.awaiting_since.is_none_or(|a| now.saturating_duration_since(a) < self.cfg.down_after)
            });
            let n = if answering { self.cfg.hints_per_retry } else { 1 };
            // Oldest first.
            let ids: Vec<EntryId> = self.hint_times.get(&t).into_iter().flatten().take(n).map(|&(_, id)| id).collect();
            let mut states = Vec::with_capacity(ids.len());
            for id in ids {
                match self.store.get(id) {
                    Some(s) => states.push((id, s.clone())),
                    // Collected: every replica, the target included, had seen its tombstone.
                    None => self.drop_hint(t, id),
                }
            }
            if states.is_empty() {
                continue;
            }
            let req = self.next_req();
            let parts = self.pack(states, |part, states| Message::Write { req, part, origin: Origin::Hint, states });
            let keys = parts.iter().map(|(_, d)| d.iter().map(|(id, _)| *id).collect()).collect();
            self.owners.insert(req, Owner::Hint { target: t, parts: keys });
            for (m, _) in parts {
                self.send(now, t, m);
            }
        }
    }

    pub(super) fn on_hint_ack(&mut self, from: NodeId, req: u64, part: u16) {
        let Some(Owner::Hint { target, parts }) = self.owners.get_mut(&req) else { return };
        if *target != from {
            return;
        }
        let Some(keys) = parts.get_mut(usize::from(part)) else { return };
        let keys = core::mem::take(keys);
        let finished = parts.iter().all(|p| p.is_empty());
        if finished {
            self.owners.remove(&req);
        }
        for id in keys {
            if self.hints.contains_key(&(from, id)) {
                self.stats.hints_delivered += 1;
            }
            self.drop_hint(from, id);
        }
    }
}
