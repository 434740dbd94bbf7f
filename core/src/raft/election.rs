//! Terms, elections, pre-vote, check-quorum, leadership transfer and stepping down.

use super::progress::Progress;
use super::read::ReadOrigin;
use super::*;

impl Raft {
    /// Applies the term rules of §5.1 to an incoming message. Returns false if the message
    /// must be dropped.
    pub(super) fn admit_term(&mut self, from: NodeId, msg: &Message) -> bool {
        let now = self.now;
        if msg.term > Term::MAX_VALID {
            // Terms never get near this; accepting it would wedge the cluster at the top term.
            self.stats.dropped_invalid += 1;
            return false;
        }
        if msg.term > self.term {
            match &msg.body {
                MessageBody::RequestVote { transfer, pre_vote, .. } => {
                    if !transfer && self.in_lease(now) {
                        // A leader was heard recently: do not let this candidate disrupt it.
                        self.stats.ignored_in_lease += 1;
                        return false;
                    }
                    if !pre_vote {
                        self.become_follower(now, msg.term, None);
                    }
                }
                // A granted pre-vote carries the term the candidate will campaign in.
                MessageBody::RequestVoteResponse { pre_vote: true, granted: true } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => {
                    self.become_follower(now, msg.term, Some(from));
                }
                _ => self.become_follower(now, msg.term, None),
            }
            return true;
        }
        if msg.term < self.term {
            self.stats.dropped_stale_term += 1;
            match &msg.body {
                // A deposed leader cut off by pre-vote would never learn the new term from
                // votes; tell it directly so it steps down.
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    self.send(from, MessageBody::HeartbeatResponse { ctx: 0 });
                }
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    self.send(from, MessageBody::RequestVoteResponse { pre_vote: true, granted: false });
                }
                _ => {}
            }
            return false;
        }
        true
    }

    /// True while this follower heard from a leader within the minimum election timeout.
    pub(super) fn in_lease(&self, now: Instant) -> bool {
        if self.role == Role::Leader {
            // A leader is its own lease; check-quorum deposes it if it loses its quorum.
            return self.cfg.check_quorum;
        }
        if now < self.vote_fence_until {
            return true;
        }
        self.cfg.check_quorum
            && self.leader.is_some()
            && self.last_leader_contact.is_some_and(|t| now < t.saturating_add(self.cfg.election_timeout_min))
    }

    pub(super) fn on_request_vote(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_log_index: LogIndex,
        last_log_term: Term,
    ) {
        let can_vote =
            self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none()) || (pre_vote && term > self.term);
        let up_to_date =
            self.log.is_up_to_date(last_log_index, last_log_term) || self.planted(PlantedBug::VoteWithoutUpToDateCheck);
        let granted = can_vote && up_to_date;
        if pre_vote {
            // A granted pre-vote answers in the candidate's future term; a refusal in ours.
            let reply_term = if granted { term } else { self.term };
            self.send_with_term(from, reply_term, MessageBody::RequestVoteResponse { pre_vote: true, granted });
            return;
        }
        if granted {
            self.vote = Some(from);
            self.reset_election_deadline(self.now);
            self.persist_hard_state();
        }
        self.send(from, MessageBody::RequestVoteResponse { pre_vote: false, granted });
    }

    pub(super) fn on_vote_response(&mut self, from: NodeId, pre_vote: bool, granted: bool) {
        let counting = match self.role {
            Role::PreCandidate => pre_vote,
            Role::Candidate => !pre_vote,
            _ => false,
        };
        if !counting || !self.membership.is_voter(from) {
            self.stats.dropped_unknown_sender += 1;
            return;
        }
        self.votes.insert(from, granted);
        match self.membership.vote_result(|id| self.votes.get(&id).copied()) {
            VoteResult::Won if pre_vote => self.campaign(self.now, false, false),
            VoteResult::Won => self.become_leader(self.now),
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(self.now, term, None);
            }
            VoteResult::Pending => {}
        }
    }

    /// Starts a pre-vote round (`pre`) or a real election. `transfer` marks an election the
    /// leader asked for, which voters grant even while they hold a lease.
    pub(super) fn campaign(&mut self, now: Instant, pre: bool, transfer: bool) {
        self.stats.campaigns += 1;
        self.fail_reads();
        self.progress.clear();
        self.votes.clear();
        self.leader = None;
        self.reset_election_deadline(now);
        let vote_term = if pre {
            self.role = Role::PreCandidate;
            self.term.next()
        } else {
            self.role = Role::Candidate;
            self.term = self.term.next();
            self.vote = Some(self.cfg.id);
            self.persist_hard_state();
            self.term
        };
        self.votes.insert(self.cfg.id, true);
        if self.membership.vote_result(|id| self.votes.get(&id).copied()) == VoteResult::Won {
            if pre {
                self.campaign(now, false, transfer);
            } else {
                self.become_leader(now);
            }
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        for to in self.membership.all_voters() {
            if to != self.cfg.id {
                let body = MessageBody::RequestVote { pre_vote: pre, last_log_index, last_log_term, transfer };
                self.send_with_term(to, vote_term, body);
            }
        }
    }

    pub(super) fn become_follower(&mut self, now: Instant, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.persist_hard_state();
        }
        if self.role == Role::Leader {
            self.fail_reads();
        }
        if self.leader != leader {
            self.fail_forwarded_reads();
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.progress.clear();
        self.votes.clear();
        self.transfer = None;
        self.lease_revoked = false;
        self.heartbeat_deadline = Instant::MAX;
        self.check_quorum_deadline = Instant::MAX;
        if leader.is_some() {
            self.last_leader_contact = Some(now);
        }
        self.reset_election_deadline(now);
    }

    pub(super) fn become_leader(&mut self, now: Instant) {
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.votes.clear();
        self.transfer = None;
        self.lease_revoked = false;
        self.progress.clear();
        let next = self.log.last_index().next();
        for id in self.membership.members() {
            let (msgs, bytes) = (self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
            self.progress.get_or_insert_with(id, || Progress::new(next, msgs, bytes));
        }
        let persisted = self.log.persisted;
        if let Some(me) = self.progress.get_mut(&self.cfg.id) {
            me.maybe_update(persisted);
            me.become_replicate();
        }
        self.heartbeat_deadline = now.saturating_add(self.cfg.heartbeat_interval);
        self.check_quorum_deadline = now.saturating_add(self.cfg.election_timeout_min);
        self.uncommitted_bytes = 0;
        // Entries of earlier terms may hold a membership change not yet applied.
        self.pending_conf_index = self.log.last_index();
        self.flush_role_event();
        let noop = Entry { term: self.term, index: next, payload: EntryPayload::Noop };
        self.append_as_leader(alloc::vec![noop]);
    }

    /// Leader timers: heartbeats, check-quorum, transfer deadline.
    pub(super) fn leader_tick(&mut self, now: Instant) {
        if now >= self.heartbeat_deadline {
            self.heartbeat_deadline = now.saturating_add(self.cfg.heartbeat_interval);
            self.broadcast_heartbeat(now);
        }
        if self.cfg.check_quorum && now >= self.check_quorum_deadline {
            self.check_quorum_deadline = now.saturating_add(self.cfg.election_timeout_min);
            if !self.quorum_heard_since(now.saturating_sub(self.cfg.election_timeout_min)) {
                self.stats.check_quorum_step_downs += 1;
                if let Some(tr) = self.transfer.take() {
                    self.event(Event::TransferAborted { target: tr.target });
                }
                let term = self.term;
                self.become_follower(now, term, None);
                return;
            }
        }
        if let Some(tr) = self.transfer {
            if now >= tr.deadline {
                self.transfer = None;
                self.event(Event::TransferAborted { target: tr.target });
                // An automatic leave of a joint membership waits for transfers; do it now.
                self.maybe_auto_leave();
            }
        }
    }

    /// True if a quorum (counting this leader) answered a message sent at or after `since`.
    pub(super) fn quorum_heard_since(&mut self, since: Instant) -> bool {
        self.quorum_acked_ctx() >= since.as_nanos()
    }

    /// The newest send time a quorum of voters has confirmed in this term.
    pub(super) fn quorum_acked_ctx(&mut self) -> u64 {
        let me = self.cfg.id;
        let now = self.now.as_nanos();
        let progress = &self.progress;
        self.membership.quorum_value(
            |id| if id == me { now } else { progress.get(&id).map_or(0, |p| p.acked_ctx) },
            &mut self.scratch,
        )
    }

    pub(super) fn on_timeout_now(&mut self, from: NodeId) {
        if self.leader != Some(from) {
            self.stats.dropped_unknown_sender += 1;
            return;
        }
        if self.membership.is_voter(self.cfg.id) && self.role != Role::Leader {
            self.campaign(self.now, false, true);
        }
    }

    pub(super) fn send_timeout_now(&mut self, target: NodeId) {
        // Voters will now elect the target without waiting out this leader's lease.
        self.lease_revoked = true;
        self.send(target, MessageBody::TimeoutNow);
    }

    /// Called when an applied membership no longer makes this leader a voter: hand over to
    /// the most caught-up voter, if one is ready, and step down.
    pub(super) fn step_down_after_removal(&mut self) {
        self.broadcast_append(replication::Empty::CommitOnly);
        let last = self.log.last_index();
        let me = self.cfg.id;
        let target = self
            .progress
            .iter()
            .filter(|(id, p)| **id != me && self.membership.is_voter(**id) && p.matched == last)
            .map(|(id, _)| *id)
            .next();
        if let Some(target) = target {
            self.send_timeout_now(target);
        }
        let term = self.term;
        self.become_follower(self.now, term, None);
    }

    /// Fails every read this leader was confirming.
    pub(super) fn fail_reads(&mut self) {
        let reads = core::mem::take(&mut self.reads);
        let waiting = core::mem::take(&mut self.reads_awaiting_commit);
        for origin in reads.into_iter().map(|r| r.origin).chain(waiting) {
            match origin {
                ReadOrigin::Local(id) => self.event(Event::ReadFailed { id }),
                ReadOrigin::Remote(from, id) => self.send(from, MessageBody::ReadIndexResponse { id, index: None }),
            }
        }
    }

    /// Fails every read forwarded to a leader that is no longer the leader.
    pub(super) fn fail_forwarded_reads(&mut self) {
        for (id, _) in core::mem::take(&mut self.forwarded_reads) {
            self.event(Event::ReadFailed { id });
        }
    }

    /// Fails forwarded reads whose request or answer was lost (no answer by their deadline).
    pub(super) fn expire_forwarded_reads(&mut self, now: Instant) {
        while let Some(&(id, deadline)) = self.forwarded_reads.front() {
            if deadline > now {
                break;
            }
            self.forwarded_reads.pop_front();
            self.event(Event::ReadFailed { id });
        }
    }
}
