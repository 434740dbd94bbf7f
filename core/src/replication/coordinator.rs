//! The coordinator's side of writes and reads (any replica coordinates), and the replica's side
//! of taking in states: counting acknowledgements per consistency level, resending within the
//! timeout, hinting what a replica missed, read repair and resolving siblings.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use super::message::{datagram_len, Message, Origin};
use super::state::{state_digest, Body, ConflictMode, Context, EntryId, KeyState, Op, Stamp, StateError, Visible};
use super::upkeep::Owner;
use super::{
    Change, Consistency, Event, PlantedBug, ReadError, ReadResult, Replica, Ticket, WriteError, WriteItem, WriteReceipt,
};
use crate::time::Instant;
use crate::NodeId;

/// A write waiting for acknowledgements.
pub(super) struct PendingWrite {
    req: u64,
    report: bool,
    required: usize,
    /// Replicas whose acknowledgement of every part arrived, this one first.
    acks: Vec<NodeId>,
    /// The datagrams sent to every other replica, with the digests of the states they carry.
    parts: Vec<(Message, Vec<(EntryId, u64)>)>,
    /// Per replica, which parts it acknowledged.
    acked_parts: BTreeMap<NodeId, Vec<bool>>,
    targets: Vec<NodeId>,
    done: bool,
    deadline: Instant,
    resend_at: Instant,
}

impl PendingWrite {
    /// When its timer wants to run.
    pub(super) fn wake(&self) -> Instant {
        self.resend_at.min(self.deadline)
    }

    /// Stops waiting for a removed replica.
    pub(super) fn forget(&mut self, peer: NodeId) {
        self.targets.retain(|t| *t != peer);
        self.acked_parts.remove(&peer);
    }

    fn fully_acked(&self, peer: NodeId) -> bool {
        self.acked_parts.get(&peer).is_some_and(|f| f.iter().all(|x| *x))
    }

    /// Panics if the acknowledgement count is inconsistent.
    pub(super) fn check(&self, replicas: &[NodeId], dedup: bool) {
        for a in &self.acks {
            assert!(replicas.contains(a) || !self.targets.contains(a), "an ack from a stranger was counted");
        }
        if dedup {
            let mut sorted = self.acks.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), self.acks.len(), "an acknowledgement was counted twice");
        }
        assert!(!self.done || self.acks.len() >= self.required || !self.report, "reported done without the acks");
    }
}

/// A read waiting for answers.
pub(super) struct PendingRead {
    req: u64,
    id: EntryId,
    consistency: Consistency,
    required: usize,
    /// Who answered, with the digest of what they hold (`None`: nothing).
    answers: Vec<(NodeId, Option<u64>)>,
    merged: Option<KeyState>,
    targets: Vec<NodeId>,
    done: bool,
    deadline: Instant,
    resend_at: Instant,
}

impl PendingRead {
    /// When its timer wants to run.
    pub(super) fn wake(&self) -> Instant {
        self.resend_at.min(self.deadline)
    }
}

/// What taking in a state did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Absorbed {
    /// The local state changed; its new digest.
    Changed(u64),
    /// Nothing new; the local digest.
    Unchanged(u64),
    /// Older than a tombstone collected here: dropped.
    Stale,
    /// Refused (timestamps too far ahead, or the wrong shape).
    Refused,
}

/// The base a new state of a collected key starts from: the collected clock, so that what the
/// tombstone replaced stays replaced, but not the tombstone itself (CRDT mode keeps the delete
/// stamp, which hides older registers).
pub(super) fn collected_base(mode: ConflictMode, memo: &KeyState) -> KeyState {
    match mode {
        ConflictMode::CrdtMap => memo.clone(),
        _ => KeyState { clock: memo.clock.clone(), body: Body::Versions(Vec::new()) },
    }
}

impl Replica {
    fn validate_op(&self, op: &Op) -> Result<(), WriteError> {
        let vector_ok = |v: &[f32]| v.len() <= self.cfg.vector_len_max && v.iter().all(|x| x.is_finite());
        let ok = match op {
            Op::Put(e) => vector_ok(&e.vector) && super::state::floats_ok(&e.metadata),
            Op::Delete => true,
            Op::Patch { set, .. } => self.cfg.mode == ConflictMode::CrdtMap && super::state::floats_ok(set),
        };
        if ok {
            Ok(())
        } else if matches!(op, Op::Patch { .. }) && self.cfg.mode != ConflictMode::CrdtMap {
            Err(WriteError::Invalid(StateError::WrongShape))
        } else {
            Err(WriteError::Invalid(StateError::BadVector))
        }
    }

    fn pending(&self) -> usize {
        self.writes.len() + self.reads.len()
    }

    /// Stamps, stores and sends a batch; see [`Replica::write_batch`]. `report: false` for the
    /// replica's own writes (resolutions), which produce no `WriteDone`.
    pub(super) fn coordinate_write(
        &mut self,
        now: Instant,
        items: Vec<WriteItem>,
        consistency: Consistency,
        report: bool,
    ) -> Result<WriteReceipt, WriteError> {
        if items.is_empty() {
            return Err(WriteError::EmptyBatch);
        }
        if items.len() > self.cfg.batch_entries_max {
            return Err(WriteError::BatchTooLarge { len: items.len(), max: self.cfg.batch_entries_max });
        }
        if self.pending() >= self.cfg.pending_max {
            return Err(WriteError::TooManyPending);
        }
        for it in &items {
            self.validate_op(&it.op)?;
            if let Some(ctx) = &it.context {
                self.hlc.observe(now, ctx.ts).map_err(WriteError::ContextAhead)?;
            }
        }
        // Stage every new state first, so a refused batch changes nothing.
        let mode = self.cfg.mode;
        let width_max = self.cfg.width_max + usize::from(mode == ConflictMode::CrdtMap);
        let empty_ctx = Context::default();
        let mut staged: Vec<(EntryId, KeyState, Stamp)> = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let base = staged
                .iter()
                .rev()
                .find(|(id, _, _)| *id == it.id)
                .map(|s| s.1.clone())
                .or_else(|| self.store.get(it.id).cloned())
                .or_else(|| self.collected.get(&it.id).map(|(m, _)| collected_base(mode, m)))
                .unwrap_or_else(|| KeyState::empty(mode));
            let dot = super::Dot { actor: self.actor, counter: self.counter + i as u64 + 1 };
            let stamp = Stamp { ts: self.hlc.tick(now), dot };
            let mut st = base;
            st.apply_write(mode, &it.op, it.context.as_ref().unwrap_or(&empty_ctx), stamp)
                .map_err(WriteError::Invalid)?;
            if st.width() > width_max {
                return Err(WriteError::TooWide(it.id));
            }
            let len = postcard::experimental::serialized_size(&st).unwrap_or(usize::MAX);
            if len > self.cfg.state_bytes_max {
                return Err(WriteError::TooLarge { len, max: self.cfg.state_bytes_max });
            }
            staged.push((it.id, st, stamp));
        }
        for _ in 0..staged.len() {
            let _ = self.next_dot();
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let req = self.next_req();
        let mut stamps = Vec::with_capacity(staged.len());
        let me = self.cfg.id;
        for (id, st, stamp) in staged {
            self.stats.writes += 1;
            self.store_state(now, id, st, Origin::Client, me, None, None);
            stamps.push((id, stamp));
        }
        let mut ids: Vec<EntryId> = stamps.iter().map(|(id, _)| *id).collect();
        ids.sort();
        ids.dedup();
        let states: Vec<(EntryId, KeyState)> =
            ids.iter().filter_map(|id| self.store.get(*id).map(|s| (*id, s.clone()))).collect();
        let parts = self.pack(states, |part, states| Message::Write { req, part, origin: Origin::Client, states });
        let targets: Vec<NodeId> = self.cfg.replicas.iter().copied().filter(|r| *r != me).collect();
        for &t in &targets {
            for (m, _) in &parts {
                self.send(now, t, m.clone());
            }
        }
        let required = self.cfg.required(consistency);
        let mut w = PendingWrite {
            req,
            report,
            required,
            acks: vec![me],
            parts,
            acked_parts: BTreeMap::new(),
            targets,
            done: false,
            deadline: now.saturating_add(self.cfg.write_timeout),
            resend_at: now.saturating_add(self.cfg.write_resend_interval),
        };
        if w.acks.len() >= w.required {
            w.done = true;
            if report {
                self.emit(Event::WriteDone { ticket: Ticket(ticket), acked: true, by: w.acks.clone() });
            }
        }
        if !w.targets.is_empty() {
            self.owners.insert(req, Owner::Client(ticket));
            self.writes.insert(ticket, w);
        }
        Ok(WriteReceipt { ticket: Ticket(ticket), stamps })
    }

    /// Packs states into as few datagrams as fit, each with the digests it carries. A state
    /// too large to travel alone is counted and left to nobody (a valid config prevents it).
    pub(super) fn pack(
        &mut self,
        states: Vec<(EntryId, KeyState)>,
        make: impl Fn(u16, Vec<(EntryId, KeyState)>) -> Message,
    ) -> Vec<(Message, Vec<(EntryId, u64)>)> {
        let max = self.cfg.datagram_bytes_max;
        // The states' list length grows from one byte to at most three.
        let base = datagram_len(self.cfg.cluster_id, self.cfg.id, &make(0, Vec::new())) + 2;
        let mut groups: Vec<Vec<(EntryId, KeyState)>> = Vec::new();
        let mut cur: Vec<(EntryId, KeyState)> = Vec::new();
        let mut cur_len = base;
        for (id, st) in states {
            let len = postcard::experimental::serialized_size(&(id, &st)).unwrap_or(usize::MAX / 2);
            if base + len > max {
                self.stats.oversized += 1;
                continue;
            }
            if cur_len + len > max && !cur.is_empty() {
                groups.push(core::mem::take(&mut cur));
                cur_len = base;
            }
            cur_len += len;
            cur.push((id, st));
        }
        if !cur.is_empty() {
            groups.push(cur);
        }
        groups
            .into_iter()
            .enumerate()
            .map(|(i, states)| {
                let digests = states.iter().map(|(id, s)| (*id, state_digest(s))).collect();
                (make(i as u16, states), digests)
            })
            .collect()
    }

    /// Stores a state, tracks it if it is a tombstone, asks for it to be persisted and records
    /// it in the change stream. `incoming` is the digest of what `from` sent, if it sent it;
    /// `known` is the digest of `st` itself, if already computed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn store_state(
        &mut self,
        now: Instant,
        id: EntryId,
        st: KeyState,
        origin: Origin,
        from: NodeId,
        incoming: Option<u64>,
        known: Option<u64>,
    ) -> u64 {
        // Stored again: the memory of a collected tombstone has served its purpose.
        self.forget_collected(id);
        let digest = match known {
            Some(d) => self.store.put_digested(id, st, d),
            None => self.store.put(id, st),
        };
        let holder = if incoming == Some(digest) { Some(from) } else { None };
        self.note_stored(now, id, digest, holder);
        self.persist(super::Durable::Entry { id });
        self.record(now, Change::Applied { id, digest, origin, from });
        digest
    }

    /// Merges a state from `from` into the store.
    pub(super) fn absorb(
        &mut self,
        now: Instant,
        from: NodeId,
        id: EntryId,
        incoming: KeyState,
        origin: Origin,
    ) -> Absorbed {
        if self.hlc.observe(now, incoming.max_ts()).is_err() {
            self.stats.rejected_future += 1;
            return Absorbed::Refused;
        }
        let incoming_digest = state_digest(&incoming);
        let mode = self.cfg.mode;
        let tiebreak = !self.planted(PlantedBug::LwwWithoutNodeTiebreak);
        let (merged, known) = if let Some(local) = self.store.get(id) {
            let mut m = local.clone();
            let local_digest = self.store.digest(id).unwrap_or(0);
            match m.merge_with(&incoming, mode, tiebreak) {
                Err(_) => {
                    self.stats.rejected += 1;
                    return Absorbed::Refused;
                }
                Ok(r) => {
                    if let Some(resolution) = r.conflict {
                        self.stats.conflicts += 1;
                        self.record(now, Change::Conflict { id, resolution });
                    }
                    if !r.changed {
                        self.mark_seen(id, incoming_digest, from);
                        return Absorbed::Unchanged(local_digest);
                    }
                }
            }
            // Most merges end at the incoming state itself: its digest is already known.
            let known = (m == incoming).then_some(incoming_digest);
            (m, known)
        } else if let Some((memo, _)) = self.collected.get(&id) {
            if memo.clock.descends(&incoming.clock) {
                self.stats.stale_dropped += 1;
                return Absorbed::Stale;
            }
            let mut m = collected_base(mode, memo);
            if m.merge_with(&incoming, mode, tiebreak).is_err() {
                self.stats.rejected += 1;
                return Absorbed::Refused;
            }
            self.forget_collected(id);
            (m, None)
        } else {
            (incoming, Some(incoming_digest))
        };
        self.stats.applied += 1;
        Absorbed::Changed(self.store_state(now, id, merged, origin, from, Some(incoming_digest), known))
    }

    /// A replica's side of a write: merge every state, then acknowledge (after the persists).
    pub(super) fn on_write(
        &mut self,
        now: Instant,
        from: NodeId,
        req: u64,
        part: u16,
        origin: Origin,
        states: Vec<(EntryId, KeyState)>,
    ) {
        for (id, st) in states {
            self.absorb(now, from, id, st, origin);
        }
        self.send(now, from, Message::WriteAck { req, part });
    }

    pub(super) fn on_write_ack(&mut self, now: Instant, from: NodeId, req: u64, part: u16) {
        match self.owners.get(&req) {
            Some(Owner::Client(ticket)) => {
                let ticket = *ticket;
                self.client_ack(now, ticket, from, part);
            }
            Some(Owner::Hint { .. }) => self.on_hint_ack(from, req, part),
            Some(Owner::Sync { .. }) => self.on_push_ack(now, from, req),
            Some(Owner::Read(_)) | None => {}
        }
    }

    fn client_ack(&mut self, now: Instant, ticket: u64, from: NodeId, part: u16) {
        let twice = self.planted(PlantedBug::AckCountedTwice);
        let Some(w) = self.writes.get_mut(&ticket) else { return };
        if !w.targets.contains(&from) || usize::from(part) >= w.parts.len() {
            return;
        }
        let n = w.parts.len();
        let flags = w.acked_parts.entry(from).or_insert_with(|| vec![false; n]);
        let was_full = flags.iter().all(|x| *x);
        flags[usize::from(part)] = true;
        let full = flags.iter().all(|x| *x);
        let mut seen = Vec::new();
        if full && (!was_full || twice) {
            if twice || !w.acks.contains(&from) {
                w.acks.push(from);
            }
            seen = w.parts.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        }
        let newly_done = !w.done && w.acks.len() >= w.required;
        if newly_done {
            w.done = true;
        }
        let (report, by) = (w.report, w.acks.clone());
        let all = w.targets.iter().all(|t| w.fully_acked(*t));
        let req = w.req;
        for (id, digest) in seen {
            self.mark_seen(id, digest, from);
        }
        if newly_done && report {
            self.emit(Event::WriteDone { ticket: Ticket(ticket), acked: true, by });
        }
        if all {
            self.writes.remove(&ticket);
            self.owners.remove(&req);
        }
        let _ = now;
    }

    pub(super) fn write_timers(&mut self, now: Instant) {
        let due: Vec<u64> = self.writes.iter().filter(|(_, w)| w.wake() <= now).map(|(t, _)| *t).collect();
        for ticket in due {
            let Some(w) = self.writes.get_mut(&ticket) else { continue };
            if now >= w.deadline {
                let Some(w) = self.writes.remove(&ticket) else { continue };
                self.owners.remove(&w.req);
                if !w.done && w.report {
                    self.emit(Event::WriteDone { ticket: Ticket(ticket), acked: false, by: w.acks.clone() });
                }
                // Whoever did not take every part gets the write later, from a hint.
                for &t in &w.targets {
                    if w.fully_acked(t) {
                        continue;
                    }
                    for (_, digests) in &w.parts {
                        for &(id, _) in digests {
                            self.add_hint(now, t, id);
                        }
                    }
                }
                continue;
            }
            w.resend_at = now.saturating_add(self.cfg.write_resend_interval);
            let mut resend = Vec::new();
            for &t in &w.targets {
                let flags = w.acked_parts.get(&t);
                for (i, (m, _)) in w.parts.iter().enumerate() {
                    if !flags.is_some_and(|f| f[i]) {
                        resend.push((t, m.clone()));
                    }
                }
            }
            for (t, m) in resend {
                self.send(now, t, m);
            }
        }
    }

    /// Starts a read; see [`Replica::get`].
    pub(super) fn coordinate_read(
        &mut self,
        now: Instant,
        id: EntryId,
        consistency: Consistency,
    ) -> Result<Ticket, WriteError> {
        if self.pending() >= self.cfg.pending_max {
            return Err(WriteError::TooManyPending);
        }
        self.stats.reads += 1;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let req = self.next_req();
        let me = self.cfg.id;
        let required = self.cfg.required(consistency);
        let local = self.store.get(id).cloned();
        let targets: Vec<NodeId> =
            if required <= 1 { Vec::new() } else { self.cfg.replicas.iter().copied().filter(|r| *r != me).collect() };
        for &t in &targets {
            self.send(now, t, Message::Read { req, id });
        }
        let r = PendingRead {
            req,
            id,
            consistency,
            required,
            answers: vec![(me, self.store.digest(id))],
            merged: local,
            targets,
            done: false,
            deadline: now.saturating_add(self.cfg.read_timeout),
            resend_at: now.saturating_add(self.cfg.write_resend_interval),
        };
        self.owners.insert(req, Owner::Read(ticket));
        self.reads.insert(ticket, r);
        self.progress_read(now, ticket);
        Ok(Ticket(ticket))
    }

    pub(super) fn on_read_reply(&mut self, now: Instant, from: NodeId, req: u64, id: EntryId, state: Option<KeyState>) {
        let Some(Owner::Read(ticket)) = self.owners.get(&req) else { return };
        let ticket = *ticket;
        if let Some(s) = &state {
            if self.hlc.observe(now, s.max_ts()).is_err() {
                self.stats.rejected_future += 1;
                return;
            }
        }
        let mode = self.cfg.mode;
        let tiebreak = !self.planted(PlantedBug::LwwWithoutNodeTiebreak);
        let Some(r) = self.reads.get_mut(&ticket) else { return };
        if r.id != id || !r.targets.contains(&from) || r.answers.iter().any(|(n, _)| *n == from) {
            return;
        }
        let digest = state.as_ref().map(state_digest);
        if let Some(s) = state {
            match &mut r.merged {
                Some(m) => {
                    if m.merge_with(&s, mode, tiebreak).is_err() {
                        self.stats.rejected += 1;
                        return;
                    }
                }
                None => r.merged = Some(s),
            }
        }
        r.answers.push((from, digest));
        self.progress_read(now, ticket);
    }

    /// Completes a read that has enough answers, and closes one that has them all.
    fn progress_read(&mut self, now: Instant, ticket: u64) {
        let Some(r) = self.reads.get_mut(&ticket) else { return };
        if !r.done && r.answers.len() >= r.required {
            r.done = true;
            let (id, consistency, merged) = (r.id, r.consistency, r.merged.clone());
            let from: Vec<NodeId> = r.answers.iter().map(|(n, _)| *n).collect();
            let resolved = merged.as_ref().and_then(|m| self.resolve(now, id, m, consistency));
            self.emit(Event::ReadDone {
                ticket: Ticket(ticket),
                result: Ok(Box::new(ReadResult { id, state: merged, from, resolved })),
            });
        }
        let complete = self.reads.get(&ticket).is_some_and(|r| r.answers.len() > r.targets.len());
        if complete {
            self.close_read(now, ticket);
        }
    }

    /// Multi-value mode with a resolver: a read that surfaced differing siblings writes their
    /// resolution, with the read's context so it replaces exactly what was seen.
    fn resolve(&mut self, now: Instant, id: EntryId, merged: &KeyState, c: Consistency) -> Option<Stamp> {
        let resolver = self.cfg.resolver?;
        let Visible::Siblings(values) = merged.visible() else { return None };
        let op = resolver(&values).map_or(Op::Delete, Op::Put);
        let item = WriteItem { id, op, context: Some(merged.context()) };
        let receipt = self.coordinate_write(now, vec![item], c, false).ok()?;
        let stamp = receipt.stamps.first()?.1;
        self.stats.resolved += 1;
        self.record(now, Change::Resolved { id, stamp, siblings: values.len() as u32 });
        Some(stamp)
    }

    /// Ends a read and repairs every replica (this one included) whose answer was behind.
    fn close_read(&mut self, now: Instant, ticket: u64) {
        let Some(r) = self.reads.remove(&ticket) else { return };
        self.owners.remove(&r.req);
        let Some(merged) = r.merged else { return };
        let digest = state_digest(&merged);
        let me = self.cfg.id;
        for (node, d) in r.answers {
            if d == Some(digest) {
                continue;
            }
            self.stats.repairs += 1;
            if node == me {
                self.absorb(now, me, r.id, merged.clone(), Origin::Repair);
            } else {
                let msg =
                    Message::Write { req: 0, part: 0, origin: Origin::Repair, states: vec![(r.id, merged.clone())] };
                self.send(now, node, msg);
            }
        }
    }

    pub(super) fn read_timers(&mut self, now: Instant) {
        let due: Vec<u64> = self.reads.iter().filter(|(_, r)| r.wake() <= now).map(|(t, _)| *t).collect();
        for ticket in due {
            let Some(r) = self.reads.get_mut(&ticket) else { continue };
            if now >= r.deadline {
                if !r.done {
                    r.done = true;
                    let answered = r.answers.iter().map(|(n, _)| *n).collect();
                    self.emit(Event::ReadDone { ticket: Ticket(ticket), result: Err(ReadError::Timeout { answered }) });
                }
                self.close_read(now, ticket);
                continue;
            }
            r.resend_at = now.saturating_add(self.cfg.write_resend_interval);
            let (req, id) = (r.req, r.id);
            let missing: Vec<NodeId> =
                r.targets.iter().copied().filter(|t| !r.answers.iter().any(|(n, _)| n == t)).collect();
            for t in missing {
                self.send(now, t, Message::Read { req, id });
            }
        }
    }
}
