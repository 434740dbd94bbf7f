//! Log replication: appends, acknowledgements, commit, heartbeats and snapshot transfer.

use alloc::boxed::Box;

use super::log::AppendOutcome;

/// The fields of an incoming [`MessageBody::AppendEntries`].
pub(super) struct Append {
    pub prev_log_index: LogIndex,
    pub prev_log_term: Term,
    pub entries: Vec<Entry>,
    pub leader_commit: LogIndex,
    pub ctx: u64,
    pub commit_only: bool,
}

/// What [`Raft::send_append`] does for a follower with no new entries to receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Empty {
    /// Send nothing.
    Skip,
    /// Send an empty append that the follower must answer (a probe, or to recover an ack).
    WantReply,
    /// Send an empty append only to carry the commit index.
    CommitOnly,
}
use super::progress::ProgressState;
use super::*;

impl Raft {
    /// Appends entries created by this leader: sends them first, then asks the host to persist
    /// them (the leader may send before its own write; it counts itself once durable).
    pub(super) fn append_as_leader(&mut self, entries: Vec<Entry>) -> LogIndex {
        let first_index = self.log.last_index().next();
        for e in entries {
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_add(e.size_bytes());
            self.log.append(e);
        }
        self.replicate_appended(first_index)
    }

    /// Replicates the entries this leader appended from `first_index` to the end of its log
    /// and asks the host to persist them. Returns the last index.
    pub(super) fn replicate_appended(&mut self, first_index: LogIndex) -> LogIndex {
        let last = self.log.last_index();
        self.broadcast_append(Empty::Skip);
        self.actions.push_back(Action::PersistEntries { first_index, last_index: last });
        // A lone voter commits as soon as its own write is durable; nothing to do until then.
        last
    }

    /// Sends appends to every follower that can take one; `empty` says what to do for
    /// followers with nothing new to receive.
    pub(super) fn broadcast_append(&mut self, empty: Empty) {
        let me = self.cfg.id;
        let mut peers = core::mem::take(&mut self.peers_scratch);
        peers.clear();
        peers.extend(self.progress.keys().copied().filter(|id| *id != me));
        for &to in &peers {
            if self.send_append(to, empty) {
                while self.send_append(to, Empty::Skip) {}
            }
        }
        self.peers_scratch = peers;
    }

    /// Sends one append (or starts a snapshot) to `to` if flow control allows. Returns true if
    /// something was sent.
    pub(super) fn send_append(&mut self, to: NodeId, empty: Empty) -> bool {
        let Some(pr) = self.progress.get(&to) else { return false };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let prev_log_index = next.prev();
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            self.start_snapshot(to);
            return true;
        };
        let entries = self.log.entries_from(next, self.cfg.append_bytes_max);
        if entries.is_empty() && empty == Empty::Skip {
            return false;
        }
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let Some(pr) = self.progress.get_mut(&to) else { return false };
        // A probe must be answered; so must an append sent to recover a lost acknowledgement.
        let commit_only = entries.is_empty() && empty == Empty::CommitOnly && pr.state == ProgressState::Replicate;
        match entries.last() {
            Some(last) => pr.sent_entries(last.index, bytes),
            None if pr.state == ProgressState::Probe => pr.probe_sent = true,
            None => {}
        }
        let leader_commit = self.log.committed;
        let ctx = self.now.as_nanos();
        let body =
            MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, leader_commit, ctx, commit_only };
        self.send(to, body);
        true
    }

    pub(super) fn broadcast_heartbeat(&mut self, now: Instant) {
        let me = self.cfg.id;
        let ctx = now.as_nanos();
        let committed = self.log.committed;
        let mut peers = core::mem::take(&mut self.peers_scratch);
        peers.clear();
        peers.extend(self.progress.keys().copied().filter(|id| *id != me));
        for &to in &peers {
            self.retransmit_if_stalled(to);
            let matched = self.progress.get(&to).map_or(LogIndex(0), |p| p.matched);
            self.send(to, MessageBody::Heartbeat { commit: matched.min(committed), ctx });
        }
        self.peers_scratch = peers;
    }

    /// Unsticks a follower whose last probe or snapshot chunks were lost.
    fn retransmit_if_stalled(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get_mut(&to) else { return };
        match pr.state {
            ProgressState::Probe => pr.probe_sent = false,
            ProgressState::Replicate => {}
            ProgressState::Snapshot => {
                if let Some(s) = pr.snapshot.as_mut() {
                    if s.acked == s.acked_at_last_heartbeat {
                        s.sent = s.acked;
                    }
                    s.acked_at_last_heartbeat = s.acked;
                }
                self.send_snapshot_chunks(to);
            }
        }
    }

    /// Commits the highest index a quorum holds, if it is from this term (§5.4.2).
    pub(super) fn maybe_commit(&mut self) -> bool {
        let progress = &self.progress;
        let quorum = self
            .membership
            .committed_index(|id| progress.get(&id).map_or(LogIndex(0), |p| p.matched), &mut self.scratch);
        if quorum <= self.log.committed {
            return false;
        }
        if self.log.term(quorum) != Some(self.term) && !self.planted(PlantedBug::CommitOldTermByCounting) {
            return false;
        }
        self.log.commit_to(quorum);
        self.apply_committed();
        self.release_reads_awaiting_commit();
        true
    }

    fn accept_leader(&mut self, from: NodeId) {
        let now = self.now;
        if self.role != Role::Follower || self.leader != Some(from) {
            let term = self.term;
            self.become_follower(now, term, Some(from));
        }
        self.last_leader_contact = Some(now);
        self.reset_election_deadline(now);
    }

    pub(super) fn on_append(&mut self, from: NodeId, append: Append) {
        let Append { prev_log_index, prev_log_term, entries, leader_commit, ctx, commit_only } = append;
        if self.role == Role::Leader {
            // Two leaders in one term cannot happen with correct peers: drop it.
            self.stats.dropped_invalid += 1;
            return;
        }
        let term = self.term;
        let terms_valid = entries.first().is_none_or(|e| e.term >= prev_log_term)
            && entries.windows(2).all(|w| w[0].term <= w[1].term)
            && entries.last().is_none_or(|e| e.term <= term)
            && prev_log_term <= term;
        let indexes_valid = prev_log_index.0.saturating_add(entries.len() as u64) <= LogIndex::MAX_VALID.0;
        if !terms_valid || !indexes_valid {
            // No correct leader sends this: its log never has terms decreasing or from the future.
            self.stats.dropped_invalid += 1;
            return;
        }
        self.accept_leader(from);
        if prev_log_index < self.log.committed {
            // Everything up to our commit already matches; say so and let the leader move on.
            let index = self.log.committed;
            self.send(from, MessageBody::AppendEntriesResponse { index, reject: None, ctx });
            return;
        }
        match self.log.try_append(prev_log_index, prev_log_term, entries) {
            AppendOutcome::Mismatch => {
                let (index, term) = self.log.find_conflict_by_term(prev_log_index, prev_log_term);
                let reject = Some(RejectHint { index, term });
                self.send(from, MessageBody::AppendEntriesResponse { index: prev_log_index, reject, ctx });
            }
            AppendOutcome::Invalid => self.stats.dropped_invalid += 1,
            AppendOutcome::Appended { last_new, first_written } => {
                let ack = MessageBody::AppendEntriesResponse { index: last_new, reject: None, ctx };
                let planted = self.planted(PlantedBug::AckBeforePersist);
                if planted {
                    self.send(from, ack.clone());
                }
                if let Some(first_index) = first_written {
                    let last_index = self.log.last_index();
                    self.actions.push_back(Action::PersistEntries { first_index, last_index });
                }
                if self.log.commit_to(leader_commit.min(last_new)) {
                    self.apply_committed();
                }
                // Nothing to acknowledge for a commit-only append that matched.
                let ack_wanted = !commit_only || first_written.is_some();
                if !planted && ack_wanted {
                    self.send(from, ack);
                }
            }
        }
    }

    pub(super) fn on_append_response(&mut self, from: NodeId, index: LogIndex, reject: Option<RejectHint>, ctx: u64) {
        if self.role != Role::Leader || !self.progress.contains_key(&from) || from == self.cfg.id {
            self.stats.dropped_unknown_sender += 1;
            return;
        }
        self.record_ack(from, ctx);
        if index > self.log.last_index() {
            self.stats.dropped_invalid += 1;
            return;
        }
        match reject {
            Some(hint) => self.on_reject(from, index, hint),
            None => self.on_ack(from, index),
        }
    }

    fn on_reject(&mut self, from: NodeId, rejected: LogIndex, hint: RejectHint) {
        // Skip every entry of a term the follower does not have, not one entry at a time.
        let (retry_after, _) = if hint.index.0 > 0 {
            self.log.find_conflict_by_term(hint.index, hint.term)
        } else {
            (LogIndex(0), Term(0))
        };
        let Some(pr) = self.progress.get_mut(&from) else { return };
        if pr.maybe_decrease_to(rejected, retry_after) {
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
            self.send_append(from, Empty::WantReply);
        }
    }

    fn on_ack(&mut self, from: NodeId, index: LogIndex) {
        let Some(pr) = self.progress.get_mut(&from) else { return };
        let was_paused = pr.is_paused();
        if !pr.maybe_update(index) {
            // Nothing new, but a window freed by a duplicate ack may let more through.
            if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
                pr.inflights.free_to(index);
            }
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            ProgressState::Snapshot => {
                if pr.snapshot.is_none_or(|s| index >= s.index) {
                    pr.become_probe();
                }
            }
            ProgressState::Replicate => pr.inflights.free_to(index),
        }
        if self.maybe_commit() {
            self.broadcast_append(Empty::CommitOnly);
        } else {
            // A follower that was paused may have missed the commit index meanwhile: tell it,
            // even with an empty append, then fill its window.
            if was_paused {
                self.send_append(from, Empty::CommitOnly);
            }
            while self.send_append(from, Empty::Skip) {}
        }
        if let Some(tr) = self.transfer {
            if tr.target == from && index == self.log.last_index() {
                self.send_timeout_now(from);
            }
        }
    }

    pub(super) fn on_heartbeat(&mut self, from: NodeId, commit: LogIndex, ctx: u64) {
        if self.role == Role::Leader {
            self.stats.dropped_invalid += 1;
            return;
        }
        self.accept_leader(from);
        if self.log.commit_to(commit.min(self.log.last_index())) {
            self.apply_committed();
        }
        self.send(from, MessageBody::HeartbeatResponse { ctx });
    }

    pub(super) fn on_heartbeat_response(&mut self, from: NodeId, ctx: u64) {
        if self.role != Role::Leader || !self.progress.contains_key(&from) || from == self.cfg.id {
            self.stats.dropped_unknown_sender += 1;
            return;
        }
        self.record_ack(from, ctx);
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else { return };
        if pr.state == ProgressState::Replicate && pr.inflights.is_full() {
            pr.inflights.free_first();
        }
        if pr.matched < last {
            self.send_append(from, Empty::WantReply);
        }
    }

    /// Records that `from` answered a message this leader sent at `ctx`, and releases reads
    /// that this confirmation completes.
    fn record_ack(&mut self, from: NodeId, ctx: u64) {
        let now = self.now.as_nanos();
        if let Some(pr) = self.progress.get_mut(&from) {
            pr.acked_ctx = pr.acked_ctx.max(ctx.min(now));
        }
        self.release_confirmed_reads();
    }

    // ----- snapshots -----

    fn start_snapshot(&mut self, to: NodeId) {
        let index = self.snapshot.meta.index;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.become_snapshot(index);
        }
        self.send_snapshot_chunks(to);
    }

    /// Sends chunks of the current snapshot to `to` up to the in-flight window.
    pub(super) fn send_snapshot_chunks(&mut self, to: NodeId) {
        let chunk = self.cfg.snapshot_chunk_bytes;
        let window = chunk.saturating_mul(self.cfg.snapshot_chunks_inflight_max);
        let size = self.snapshot.data.len() as u64;
        let ctx = self.now.as_nanos();
        let current = self.snapshot.meta.index;
        if let Some(pr) = self.progress.get_mut(&to) {
            // The leader took a newer snapshot mid-transfer: send that one from the start.
            if pr.snapshot.is_some_and(|s| s.index != current) {
                pr.become_snapshot(current);
            }
        }
        loop {
            let Some(pr) = self.progress.get_mut(&to) else { return };
            let Some(s) = pr.snapshot.as_mut() else { return };
            let nothing_in_flight = s.sent == s.acked;
            if !(nothing_in_flight || (s.sent < size && s.sent - s.acked < window)) {
                return;
            }
            let offset = s.sent.min(size);
            let end = offset.saturating_add(chunk).min(size);
            s.sent = end.max(offset);
            let data = self.snapshot.data.slice(offset as usize..end as usize);
            let meta = Box::new(self.snapshot.meta.clone());
            self.send(to, MessageBody::InstallSnapshot { meta, offset, data, ctx });
            if end >= size {
                return;
            }
        }
    }

    pub(super) fn on_snapshot_response(
        &mut self,
        from: NodeId,
        index: LogIndex,
        next_offset: u64,
        done: bool,
        ctx: u64,
    ) {
        if self.role != Role::Leader || !self.progress.contains_key(&from) || from == self.cfg.id {
            self.stats.dropped_unknown_sender += 1;
            return;
        }
        self.record_ack(from, ctx);
        if index > self.log.last_index().max(self.snapshot.meta.index) {
            self.stats.dropped_invalid += 1;
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else { return };
        if done {
            if index > pr.matched || pr.state == ProgressState::Snapshot {
                pr.maybe_update(index);
                pr.become_probe();
                self.send_append(from, Empty::WantReply);
            }
            return;
        }
        let Some(s) = pr.snapshot.as_mut().filter(|s| s.index == index) else { return };
        if next_offset >= s.acked && next_offset <= s.sent {
            s.acked = next_offset;
        } else {
            // The follower holds more (a resumed transfer) or less (it lost its buffer).
            s.acked = next_offset.min(self.snapshot.data.len() as u64);
            s.sent = s.acked;
        }
        self.send_snapshot_chunks(from);
    }

    pub(super) fn on_snapshot_chunk(&mut self, from: NodeId, meta: &SnapshotMeta, offset: u64, data: Bytes, ctx: u64) {
        let well_formed = meta.term <= self.term
            && meta.index <= LogIndex::MAX_VALID
            && (meta.index.0 == 0) == (meta.term.0 == 0)
            && meta.membership.validate().is_ok();
        if self.role == Role::Leader || !well_formed {
            self.stats.dropped_invalid += 1;
            return;
        }
        self.accept_leader(from);
        let index = meta.index;
        if meta.index <= self.log.committed {
            // Everything the snapshot covers is already committed here.
            let size = meta.size_bytes;
            self.send(from, MessageBody::InstallSnapshotResponse { index, next_offset: size, done: true, ctx });
            return;
        }
        if meta.size_bytes > self.cfg.snapshot_bytes_max {
            self.stats.snapshot_chunks_rejected += 1;
            return;
        }
        if self.incoming_snapshot.as_ref().is_some_and(|(m, _)| m != meta) {
            self.incoming_snapshot = None;
        }
        let (_, buf) = self.incoming_snapshot.get_or_insert_with(|| (meta.clone(), Vec::new()));
        let held = buf.len() as u64;
        let fits = offset.saturating_add(data.len() as u64) <= meta.size_bytes;
        if offset == held && fits {
            buf.extend_from_slice(&data);
        } else {
            self.stats.snapshot_chunks_rejected += 1;
        }
        let held = buf.len() as u64;
        if held < meta.size_bytes {
            self.send(from, MessageBody::InstallSnapshotResponse { index, next_offset: held, done: false, ctx });
            return;
        }
        // Complete: the buffer leaves the slot, which held this very `meta`.
        let buf = core::mem::take(buf);
        self.incoming_snapshot = None;
        if crate::fnv1a64(&buf) != meta.digest {
            self.stats.snapshot_chunks_rejected += 1;
            self.send(from, MessageBody::InstallSnapshotResponse { index, next_offset: 0, done: false, ctx });
            return;
        }
        self.install_snapshot(Snapshot { meta: meta.clone(), data: Bytes::from(buf) });
        let size = self.snapshot.meta.size_bytes;
        self.send(from, MessageBody::InstallSnapshotResponse { index, next_offset: size, done: true, ctx });
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) {
        self.stats.snapshots_installed += 1;
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        self.actions.push_back(Action::PersistSnapshot(Box::new(snapshot.clone())));
        self.log.restore(index, term);
        self.membership = snapshot.meta.membership.clone();
        self.snapshot = snapshot;
        self.snapshot_wanted_at = index;
        self.actions.push_back(Action::ApplySnapshot(Box::new(self.snapshot.clone())));
        self.event(Event::MembershipChanged { index, membership: Box::new(self.membership.clone()) });
        // Commit may already be past the snapshot if the suffix was kept.
        self.apply_committed();
    }
}
