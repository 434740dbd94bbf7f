//! Anti-entropy: find the keys two replicas disagree on by descending their hash trees, and
//! exchange only those, in bounded batches through the sync throttle.
//!
//! The initiator drives a session; the responder is stateless (every request is answered
//! from its current store), so lost, duplicated or reordered datagrams only cost a resend.
//! A session:
//! 1. asks for the peer's children of the nodes that differ, level by level, starting at the
//!    root (equal roots end the session at once);
//! 2. where a whole subtree is empty on one side, skips the descent and pushes or pulls the
//!    range (this is how an empty replica bootstraps);
//! 3. at the leaves, lists the peer's keys and digests, and compares them with its own;
//! 4. pulls the peer's states of keys that differ, naming its own clock of each: the peer
//!    leaves out the states that clock strictly dominates, and the initiator pushes its own of
//!    those instead; it merges what it got, and pushes back every merged state that differs
//!    from the peer's (and its own states of keys the peer lacks). So a change made on one
//!    side crosses once, whichever side starts the session.
//!
//! Every request is resent (with doubling delay) until answered, or the session is abandoned
//! when it makes no progress for `sync_timeout`; the next session redoes what is left.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use super::coordinator::Absorbed;
use super::merkle::FANOUT;
use super::message::{datagram_len, Message, Origin};
use super::state::{state_digest, EntryId, KeyState};
use super::store::key_hash;
use super::upkeep::Owner;
use super::version::Causality;
use super::{Change, Event, Replica};
use crate::time::Instant;
use crate::NodeId;

/// Keys pulled per request.
const PULL_IDS_MAX: usize = 256;
/// Leaves listed per key-listing request (so a few requests in flight cover many leaves).
const LEAVES_PER_LISTING: usize = 128;
/// Resends of one request before the session is abandoned.
const TRIES_MAX: u32 = 6;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Range {
    first: u32,
    end: u32,
    after: Option<EntryId>,
}

enum Kind {
    Tree {
        level: u8,
        parents: Vec<u32>,
    },
    Keys {
        leaves: Vec<u32>,
        after: Option<EntryId>,
    },
    /// `ids` asked for, `returned` so far: what the peer left out is behind, and is pushed.
    Pull {
        ids: Vec<EntryId>,
        returned: BTreeSet<EntryId>,
        got: Vec<bool>,
    },
    PullRange {
        range: Range,
        got: Vec<bool>,
    },
    Push {
        digests: Vec<(EntryId, u64)>,
    },
}

struct Req {
    msg: Message,
    retry_at: Instant,
    tries: u32,
    kind: Kind,
}

/// One anti-entropy session this replica runs with a peer.
pub(super) struct Session {
    id: u64,
    peer: NodeId,
    give_up_at: Instant,
    diff_since: Option<Instant>,
    next_rid: u32,
    out: BTreeMap<u32, Req>,
    tree: VecDeque<(u8, u32)>,
    keys: VecDeque<(Vec<u32>, Option<EntryId>)>,
    pull_ranges: VecDeque<Range>,
    push_ranges: VecDeque<Range>,
    pull_ids: Vec<EntryId>,
    push_ids: BTreeSet<EntryId>,
    entries: u64,
    bytes_at_start: u64,
}

impl Session {
    /// The session's number.
    pub(super) fn id(&self) -> u64 {
        self.id
    }

    /// When its timers want to run.
    pub(super) fn wake(&self) -> Option<Instant> {
        let retry = self.out.values().map(|r| r.retry_at).min();
        Some(retry.map_or(self.give_up_at, |r| r.min(self.give_up_at)))
    }

    /// States known to differ and not yet pushed or acknowledged.
    pub(super) fn pending_pushes(&self) -> u64 {
        let in_flight: usize =
            self.out.values().map(|r| if let Kind::Push { digests } = &r.kind { digests.len() } else { 0 }).sum();
        (self.push_ids.len() + self.pull_ids.len() + in_flight) as u64
    }

    /// When the first difference was found.
    pub(super) fn diff_since(&self) -> Instant {
        self.diff_since.unwrap_or(self.give_up_at)
    }

    fn idle(&self) -> bool {
        self.out.is_empty()
            && self.tree.is_empty()
            && self.keys.is_empty()
            && self.pull_ranges.is_empty()
            && self.push_ranges.is_empty()
            && self.pull_ids.is_empty()
            && self.push_ids.is_empty()
    }

    fn note_diff(&mut self, now: Instant) {
        self.diff_since.get_or_insert(now);
    }

    /// Panics if the session holds more requests in flight than its window.
    pub(super) fn check(&self, window: usize) {
        assert!(self.out.len() <= window, "sync session over its request window");
        assert!(self.out.keys().all(|rid| *rid < self.next_rid));
        let _ = self.peer;
    }
}

impl Replica {
    /// Starts a session with the next peer in turn that has none running.
    pub(super) fn start_periodic_session(&mut self, now: Instant) {
        let me = self.cfg.id;
        let peers: Vec<NodeId> = self.cfg.replicas.iter().copied().filter(|r| *r != me).collect();
        for i in 0..peers.len() {
            let peer = peers[(self.sync_turn + i) % peers.len()];
            if !self.sessions.contains_key(&peer) {
                self.sync_turn = (self.sync_turn + i + 1) % peers.len();
                self.start_session(now, peer);
                return;
            }
        }
    }

    pub(super) fn start_session(&mut self, now: Instant, peer: NodeId) {
        if self.sessions.contains_key(&peer) || !self.peers.contains_key(&peer) {
            return;
        }
        let id = self.next_session;
        self.next_session = self.next_session.wrapping_add(1);
        let bytes_at_start = self.peers.get(&peer).map_or(0, |p| p.sync_bytes);
        let mut s = Session {
            id,
            peer,
            give_up_at: now.saturating_add(self.cfg.sync_timeout),
            diff_since: None,
            next_rid: 0,
            out: BTreeMap::new(),
            tree: VecDeque::new(),
            keys: VecDeque::new(),
            pull_ranges: VecDeque::new(),
            push_ranges: VecDeque::new(),
            pull_ids: Vec::new(),
            push_ids: BTreeSet::new(),
            entries: 0,
            bytes_at_start,
        };
        s.tree.push_back((0, 0));
        self.stats.sync_sessions += 1;
        self.sessions.insert(peer, s);
        self.pump(now, peer);
    }

    /// Fills the session's request window; ends it when nothing is left to do.
    fn pump(&mut self, now: Instant, peer: NodeId) {
        let Some(mut s) = self.sessions.remove(&peer) else { return };
        while s.out.len() < self.cfg.sync_window {
            let rid = s.next_rid;
            let Some((kind, msg)) = self.next_request(&mut s, rid) else { break };
            s.next_rid += 1;
            self.send_sync(now, peer, msg.clone());
            if let Some(p) = self.peers.get_mut(&peer) {
                p.awaiting_since.get_or_insert(now);
            }
            let retry_at = now.saturating_add(self.cfg.sync_retry_interval);
            s.out.insert(rid, Req { msg, retry_at, tries: 0, kind });
        }
        if s.idle() {
            self.finish_session(now, s, true);
        } else {
            self.sessions.insert(peer, s);
        }
    }

    /// The most parents one tree request may name so that the answer fits a datagram.
    fn tree_parents_max(&self) -> usize {
        ((self.cfg.datagram_bytes_max - 64) / (FANOUT * 10 + 1)).max(1)
    }

    fn next_request(&mut self, s: &mut Session, rid: u32) -> Option<(Kind, Message)> {
        let session = s.id;
        loop {
            if !s.push_ids.is_empty() {
                let ids: Vec<EntryId> = s.push_ids.iter().copied().collect();
                if let Some(r) = self.push_batch(s, rid, ids.into_iter(), |s, id| {
                    s.push_ids.remove(&id);
                }) {
                    return Some(r);
                }
                continue;
            }
            if let Some(range) = s.push_ranges.front().copied() {
                let ids: Vec<EntryId> = self
                    .store
                    .scan_leaves(range.first, range.end, range.after)
                    .map(|(id, _, _)| id)
                    .take(4096)
                    .collect();
                let exhausted = ids.len() < 4096;
                let mut last = None;
                let built = self.push_batch(s, rid, ids.iter().copied(), |_, id| last = Some(id));
                match (built, last) {
                    (Some(r), Some(l)) => {
                        let done_all = exhausted && ids.last() == Some(&l);
                        if done_all {
                            s.push_ranges.pop_front();
                        } else if let Some(front) = s.push_ranges.front_mut() {
                            front.after = Some(l);
                        }
                        return Some(r);
                    }
                    _ => {
                        s.push_ranges.pop_front();
                        continue;
                    }
                }
            }
            if !s.pull_ids.is_empty() {
                // As many as fit one datagram with their clocks (at least one: a clock is
                // bounded by the replica set, far below a datagram).
                let empty = Message::SyncPull { session, rid, ids: Vec::new() };
                let mut len = datagram_len(self.cfg.cluster_id, self.cfg.id, &empty) + 2;
                let mut ids = Vec::new();
                for &id in s.pull_ids.iter().take(PULL_IDS_MAX) {
                    let clock = self.store.get(id).map(|st| st.clock.clone()).unwrap_or_default();
                    let l = postcard::experimental::serialized_size(&(id, &clock)).unwrap_or(usize::MAX / 2);
                    if len + l > self.cfg.datagram_bytes_max && !ids.is_empty() {
                        break;
                    }
                    len += l;
                    ids.push((id, clock));
                }
                s.pull_ids.drain(..ids.len());
                let asked = ids.iter().map(|(id, _)| *id).collect();
                let kind = Kind::Pull { ids: asked, returned: BTreeSet::new(), got: Vec::new() };
                return Some((kind, Message::SyncPull { session, rid, ids }));
            }
            if let Some(range) = s.pull_ranges.pop_front() {
                let msg =
                    Message::SyncPullRange { session, rid, first: range.first, end: range.end, after: range.after };
                return Some((Kind::PullRange { range, got: Vec::new() }, msg));
            }
            if let Some((leaves, after)) = s.keys.pop_front() {
                let msg = Message::SyncKeys { session, rid, leaves: leaves.clone(), after };
                return Some((Kind::Keys { leaves, after }, msg));
            }
            let &(level, _) = s.tree.front()?;
            let mut parents = Vec::new();
            while let Some(&(l, p)) = s.tree.front() {
                if l != level || parents.len() >= self.tree_parents_max() {
                    break;
                }
                parents.push(p);
                s.tree.pop_front();
            }
            let msg = Message::SyncTree { session, rid, root: self.store.root(), level, parents: parents.clone() };
            return Some((Kind::Tree { level, parents }, msg));
        }
    }

    /// One datagram of this replica's states of `ids` (in order), as a sync push; `taken` is
    /// told every id consumed (sent, or gone from the store).
    fn push_batch(
        &mut self,
        s: &mut Session,
        rid: u32,
        ids: impl Iterator<Item = EntryId>,
        mut taken: impl FnMut(&mut Session, EntryId),
    ) -> Option<(Kind, Message)> {
        let req = self.next_req();
        let max = self.cfg.datagram_bytes_max;
        let empty = Message::Write { req, part: 0, origin: Origin::Sync, states: Vec::new() };
        let base = datagram_len(self.cfg.cluster_id, self.cfg.id, &empty) + 2;
        let mut len = base;
        let mut states: Vec<(EntryId, KeyState)> = Vec::new();
        let mut digests = Vec::new();
        for id in ids {
            let Some(st) = self.store.get(id) else {
                taken(s, id);
                continue;
            };
            let l = postcard::experimental::serialized_size(&(id, st)).unwrap_or(usize::MAX / 2);
            if base + l > max {
                self.stats.oversized += 1;
                taken(s, id);
                continue;
            }
            if len + l > max && !states.is_empty() {
                break;
            }
            len += l;
            digests.push((id, self.store.digest(id).unwrap_or(0)));
            states.push((id, st.clone()));
            taken(s, id);
        }
        if states.is_empty() {
            return None;
        }
        self.owners.insert(req, Owner::Sync { peer: s.peer, session: s.id, rid });
        Some((Kind::Push { digests }, Message::Write { req, part: 0, origin: Origin::Sync, states }))
    }

    fn finish_session(&mut self, now: Instant, s: Session, complete: bool) {
        let peer = s.peer;
        self.owners.retain(|_, o| !o.is_session(peer, s.id));
        if complete {
            self.stats.sync_completed += 1;
        }
        let bytes = self.peers.get(&peer).map_or(0, |p| p.sync_bytes).saturating_sub(s.bytes_at_start);
        self.emit(Event::SyncDone { peer, entries: s.entries, bytes, complete });
        self.record(now, Change::Synced { peer, entries: s.entries, bytes, complete });
    }

    /// Resends what is overdue; abandons sessions that made no progress.
    pub(super) fn session_timers(&mut self, now: Instant) {
        let peers: Vec<NodeId> = self.sessions.keys().copied().collect();
        for peer in peers {
            let Some(mut s) = self.sessions.remove(&peer) else { continue };
            if now >= s.give_up_at {
                self.finish_session(now, s, false);
                continue;
            }
            // While the throttle holds datagrams back, the peer has not seen them yet.
            let queued = self.peers.get(&peer).is_some_and(|p| !p.outbox.is_empty());
            let mut resend = Vec::new();
            let mut abandon = false;
            for r in s.out.values_mut() {
                if r.retry_at > now {
                    continue;
                }
                if queued {
                    r.retry_at = now.saturating_add(self.cfg.sync_retry_interval);
                    continue;
                }
                r.tries += 1;
                if r.tries > TRIES_MAX {
                    abandon = true;
                    break;
                }
                let backoff = self.cfg.sync_retry_interval.saturating_mul(1 << r.tries.min(6));
                r.retry_at = now.saturating_add(backoff);
                resend.push(r.msg.clone());
            }
            if abandon {
                self.finish_session(now, s, false);
                continue;
            }
            self.sessions.insert(peer, s);
            for m in resend {
                self.send_sync(now, peer, m);
            }
        }
    }

    /// The stateless responder: answers from the current store.
    pub(super) fn on_sync_request(&mut self, now: Instant, from: NodeId, msg: Message) {
        let max = self.cfg.datagram_bytes_max;
        match msg {
            Message::SyncTree { session, rid, root, level, parents } => {
                let mine = self.store.root();
                let children = if root == mine {
                    // The initiator holds exactly what we hold.
                    self.mark_seen_hashes(0, u64::MAX, from);
                    Vec::new()
                } else {
                    if parents.len() > self.tree_parents_max() {
                        self.stats.rejected += 1;
                        return;
                    }
                    let zero = [0u64; FANOUT];
                    let tree = self.store.tree();
                    parents.iter().flat_map(|p| tree.children(level, *p).unwrap_or(&zero).iter().copied()).collect()
                };
                self.send_sync(now, from, Message::SyncTreeReply { session, rid, root: mine, children });
            }
            Message::SyncKeys { session, rid, leaves, after } => {
                let empty = Message::SyncKeysReply { session, rid, keys: Vec::new(), more: false };
                let mut len = datagram_len(self.cfg.cluster_id, self.cfg.id, &empty) + 2;
                let mut keys = Vec::new();
                let mut more = false;
                for (id, digest) in self.listing(&leaves, after) {
                    let l = postcard::experimental::serialized_size(&(id, digest)).unwrap_or(usize::MAX / 2);
                    if len + l > max {
                        more = true;
                        break;
                    }
                    len += l;
                    keys.push((id, digest));
                }
                self.send_sync(now, from, Message::SyncKeysReply { session, rid, keys, more });
            }
            Message::SyncPull { session, rid, ids } => {
                // A state the initiator's clock strictly dominates is behind: it pushes instead.
                let states: Vec<(EntryId, KeyState)> = ids
                    .iter()
                    .filter_map(|(id, theirs)| self.store.get(*id).map(|s| (*id, s, theirs)))
                    .filter(|(_, s, theirs)| s.clock.compare(theirs) != Causality::Before)
                    .map(|(id, s, _)| (id, s.clone()))
                    .collect();
                let mut parts = self.pack(states, |part, states| Message::SyncStates {
                    session,
                    rid,
                    part,
                    parts: u16::MAX,
                    states,
                    more: false,
                });
                if parts.is_empty() {
                    let msg = Message::SyncStates { session, rid, part: 0, parts: 1, states: Vec::new(), more: false };
                    parts.push((msg, Vec::new()));
                }
                let n = parts.len() as u16;
                for (mut m, _) in parts {
                    if let Message::SyncStates { parts, .. } = &mut m {
                        *parts = n;
                    }
                    self.send_sync(now, from, m);
                }
            }
            Message::SyncPullRange { session, rid, first, end, after } => {
                let empty = Message::SyncStates { session, rid, part: 0, parts: 1, states: Vec::new(), more: false };
                let mut len = datagram_len(self.cfg.cluster_id, self.cfg.id, &empty) + 2;
                let mut states = Vec::new();
                let mut more = false;
                let base = len;
                for (id, st, _) in self.store.scan_leaves(first, end, after) {
                    let l = postcard::experimental::serialized_size(&(id, st)).unwrap_or(usize::MAX / 2);
                    if base + l > max {
                        // Too large to travel at all: skip it rather than stall the range.
                        self.stats.oversized += 1;
                        continue;
                    }
                    if len + l > max {
                        more = true;
                        break;
                    }
                    len += l;
                    states.push((id, st.clone()));
                }
                self.send_sync(now, from, Message::SyncStates { session, rid, part: 0, parts: 1, states, more });
            }
            _ => {}
        }
    }

    /// The initiator's side: what an answer teaches, and what to ask next.
    pub(super) fn on_sync_reply(&mut self, now: Instant, from: NodeId, msg: Message) {
        let (session, rid) = match &msg {
            Message::SyncTreeReply { session, rid, .. }
            | Message::SyncKeysReply { session, rid, .. }
            | Message::SyncStates { session, rid, .. } => (*session, *rid),
            _ => return,
        };
        let Some(mut s) = self.sessions.remove(&from) else { return };
        if s.id != session || !s.out.contains_key(&rid) {
            self.sessions.insert(from, s);
            return;
        }
        let progressed = match msg {
            Message::SyncTreeReply { root, children, .. } => self.on_tree_reply(now, &mut s, rid, root, children),
            Message::SyncKeysReply { keys, more, .. } => self.on_keys_reply(now, &mut s, rid, keys, more),
            Message::SyncStates { part, parts, states, more, .. } => {
                self.on_states(now, &mut s, rid, part, parts, states, more)
            }
            _ => false,
        };
        if progressed {
            s.give_up_at = now.saturating_add(self.cfg.sync_timeout);
        }
        self.sessions.insert(from, s);
        self.pump(now, from);
    }

    fn on_tree_reply(&mut self, now: Instant, s: &mut Session, rid: u32, root: u64, children: Vec<u64>) -> bool {
        let Some(Req { kind: Kind::Tree { level, parents }, .. }) = s.out.get(&rid) else { return false };
        let (level, parents) = (*level, parents.clone());
        if !children.is_empty() && children.len() != parents.len() * FANOUT {
            return false;
        }
        s.out.remove(&rid);
        let peer = s.peer;
        if children.is_empty() {
            if root == self.store.root() {
                self.mark_seen_hashes(0, u64::MAX, peer);
            }
            return true;
        }
        let depth = self.cfg.merkle_depth;
        let child_level = level + 1;
        let mut leaves = Vec::new();
        for (i, &p) in parents.iter().enumerate() {
            let Some(mine) = self.store.tree().children(level, p).map(|c| c.to_vec()) else { continue };
            for j in 0..FANOUT {
                let theirs = children[i * FANOUT + j];
                let c = p * FANOUT as u32 + j as u32;
                let (first, end) = self.store.tree().leaves_below(child_level, c);
                if mine[j] == theirs {
                    let lo = self.store.tree().leaf_bounds(first).0;
                    let hi = self.store.tree().leaf_bounds(end - 1).1;
                    self.mark_seen_hashes(lo, hi, peer);
                    continue;
                }
                s.note_diff(now);
                let range = Range { first, end, after: None };
                if theirs == 0 {
                    s.push_ranges.push_back(range);
                } else if mine[j] == 0 {
                    s.pull_ranges.push_back(range);
                } else if child_level >= depth {
                    leaves.push(first);
                } else {
                    s.tree.push_back((child_level, c));
                }
            }
        }
        for chunk in leaves.chunks(LEAVES_PER_LISTING) {
            s.keys.push_back((chunk.to_vec(), None));
        }
        true
    }

    /// Keys and digests in `leaves` (ascending), in key-hash order, after `after`.
    fn listing<'a>(&'a self, leaves: &'a [u32], after: Option<EntryId>) -> impl Iterator<Item = (EntryId, u64)> + 'a {
        let tree = self.store.tree();
        let start = after.map(|a| tree.leaf_of(key_hash(a)));
        leaves.iter().filter(move |l| start.is_none_or(|s| **l >= s)).flat_map(move |&leaf| {
            let from = if Some(leaf) == start { after } else { None };
            self.store.scan_leaves(leaf, leaf + 1, from).map(|(id, _, d)| (id, d))
        })
    }

    fn on_keys_reply(
        &mut self,
        now: Instant,
        s: &mut Session,
        rid: u32,
        keys: Vec<(EntryId, u64)>,
        more: bool,
    ) -> bool {
        let Some(Req { kind: Kind::Keys { leaves, after }, .. }) = s.out.remove(&rid) else { return false };
        let upto = if more { keys.last().map(|(id, _)| (key_hash(*id), *id)) } else { None };
        let mine: Vec<(EntryId, u64)> =
            self.listing(&leaves, after).take_while(|(id, _)| upto.is_none_or(|u| (key_hash(*id), *id) <= u)).collect();
        let order = |id: EntryId| (key_hash(id), id);
        let (mut i, mut j) = (0, 0);
        let peer = s.peer;
        while i < mine.len() || j < keys.len() {
            let a = mine.get(i).copied();
            let b = keys.get(j).copied();
            match (a, b) {
                (Some((ida, da)), Some((idb, db))) if ida == idb => {
                    if da == db {
                        self.mark_seen(ida, da, peer);
                    } else {
                        s.pull_ids.push(ida);
                    }
                    i += 1;
                    j += 1;
                }
                (Some((ida, _)), Some((idb, _))) if order(ida) < order(idb) => {
                    s.push_ids.insert(ida);
                    i += 1;
                }
                (Some(_), Some((idb, _))) => {
                    s.pull_ids.push(idb);
                    j += 1;
                }
                (Some((ida, _)), None) => {
                    s.push_ids.insert(ida);
                    i += 1;
                }
                (None, Some((idb, _))) => {
                    s.pull_ids.push(idb);
                    j += 1;
                }
                (None, None) => break,
            }
        }
        if !s.push_ids.is_empty() || !s.pull_ids.is_empty() {
            s.note_diff(now);
        }
        if let (true, Some((last, _))) = (more, keys.last()) {
            let from = self.store.tree().leaf_of(key_hash(*last));
            let rest: Vec<u32> = leaves.into_iter().filter(|l| *l >= from).collect();
            s.keys.push_front((rest, Some(*last)));
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn on_states(
        &mut self,
        now: Instant,
        s: &mut Session,
        rid: u32,
        part: u16,
        parts: u16,
        states: Vec<(EntryId, KeyState)>,
        more: bool,
    ) -> bool {
        let Some(req) = s.out.get_mut(&rid) else { return false };
        let (got, range, returned) = match &mut req.kind {
            Kind::Pull { got, returned, .. } => (got, None, Some(returned)),
            Kind::PullRange { range, got } => (got, Some(*range), None),
            _ => return false,
        };
        if got.is_empty() {
            *got = vec![false; usize::from(parts)];
        }
        if got.len() != usize::from(parts) || usize::from(part) >= got.len() || got[usize::from(part)] {
            return false;
        }
        got[usize::from(part)] = true;
        let finished = got.iter().all(|g| *g);
        if let Some(r) = returned {
            r.extend(states.iter().map(|(id, _)| *id));
        }
        let last = states.last().map(|(id, _)| *id);
        let peer = s.peer;
        for (id, st) in states {
            let theirs = state_digest(&st);
            match self.absorb(now, peer, id, st, Origin::Sync) {
                Absorbed::Changed(d) => {
                    s.entries += 1;
                    if d != theirs {
                        s.push_ids.insert(id);
                    }
                }
                Absorbed::Unchanged(d) if d != theirs => {
                    s.push_ids.insert(id);
                }
                _ => {}
            }
        }
        if finished {
            if let Some(Req { kind: Kind::Pull { ids, returned, .. }, .. }) = s.out.remove(&rid) {
                // Left out: the peer's state is behind ours (or gone); ours goes to it.
                for id in ids {
                    if !returned.contains(&id) && self.store.get(id).is_some() {
                        s.push_ids.insert(id);
                    }
                }
            } else if let (Some(range), true, Some(last)) = (range, more, last) {
                s.pull_ranges.push_front(Range { after: Some(last), ..range });
            }
        }
        true
    }

    /// A sync push was acknowledged: the peer holds what we sent.
    pub(super) fn on_push_ack(&mut self, now: Instant, from: NodeId, req: u64) {
        let Some(Owner::Sync { peer, session, rid }) = self.owners.get(&req) else { return };
        let (peer, session, rid) = (*peer, *session, *rid);
        if peer != from {
            return;
        }
        self.owners.remove(&req);
        let Some(mut s) = self.sessions.remove(&peer) else { return };
        if s.id == session {
            if let Some(Req { kind: Kind::Push { digests }, .. }) = s.out.remove(&rid) {
                s.entries += digests.len() as u64;
                for (id, d) in digests {
                    self.mark_seen(id, d, peer);
                }
                s.give_up_at = now.saturating_add(self.cfg.sync_timeout);
            }
        }
        self.sessions.insert(peer, s);
        self.pump(now, peer);
    }
}
