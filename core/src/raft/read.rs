//! Linearizable reads: ReadIndex (§6.4 of the Raft dissertation) and leases.
//!
//! A read registered at leader time `t` with index `c` (the commit index then) is safe to serve
//! once a quorum answered a message this leader sent at or after `t`: at that moment no other
//! leader can have committed anything this one does not know. Every leader message carries its
//! send time as `ctx`, and every answer echoes it, so one heartbeat round confirms every read
//! registered before it. A new leader first commits its no-op, so `c` covers all earlier
//! terms' commits.

use super::*;

/// Who asked for a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadOrigin {
    /// This node's host, with its id.
    Local(u64),
    /// A follower, with its id for the request.
    Remote(NodeId, u64),
}

/// A read waiting for a quorum to confirm this leader.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingRead {
    pub origin: ReadOrigin,
    pub index: LogIndex,
    pub registered_at: u64,
}

impl Raft {
    /// Starts a linearizable read. When it is safe, [`Event::ReadReady`] gives the index the
    /// host must have applied before it reads; [`Event::ReadFailed`] means retry.
    ///
    /// On a follower the request is forwarded to the leader.
    pub fn read_index(&mut self, now: Instant, id: u64) -> Result<(), ReadError> {
        self.now = self.now.max(now);
        let result = match self.role {
            Role::Leader => self.leader_read(ReadOrigin::Local(id)),
            _ => match self.leader {
                Some(leader) if self.forwarded_reads.len() < self.cfg.reads_pending_max => {
                    let deadline = self.now.saturating_add(self.cfg.election_timeout_min);
                    self.forwarded_reads.push_back((id, deadline));
                    self.send(leader, MessageBody::ReadIndex { id });
                    Ok(())
                }
                Some(_) => Err(ReadError::TooManyPending),
                None => Err(ReadError::NoLeader),
            },
        };
        self.flush_role_event();
        result
    }

    fn leader_read(&mut self, origin: ReadOrigin) -> Result<(), ReadError> {
        if self.reads.len() + self.reads_awaiting_commit.len() >= self.cfg.reads_pending_max {
            return Err(ReadError::TooManyPending);
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            // Until this term's no-op commits, the commit index may lag earlier leaders'.
            self.reads_awaiting_commit.push_back(origin);
            return Ok(());
        }
        self.register_read(origin);
        Ok(())
    }

    fn register_read(&mut self, origin: ReadOrigin) {
        let index = self.log.committed;
        let now = self.now;
        let m = &self.membership;
        let single_voter = m.voters_outgoing.is_empty() && m.voters.len() == 1 && m.voters[0] == self.cfg.id;
        if single_voter || self.lease_valid(now) {
            self.read_ready(origin, index);
            return;
        }
        let registered_at = now.as_nanos();
        self.reads.push_back(PendingRead { origin, index, registered_at });
        if self.last_read_heartbeat_ctx != registered_at {
            self.last_read_heartbeat_ctx = registered_at;
            self.broadcast_heartbeat(now);
        }
    }

    /// True while a quorum answered a message sent within the lease before `now`.
    fn lease_valid(&mut self, now: Instant) -> bool {
        let Some(lease) = self.cfg.lease_duration() else { return false };
        if self.lease_revoked || self.transfer.is_some() {
            return false;
        }
        self.quorum_acked_ctx() > now.saturating_sub(lease).as_nanos()
    }

    fn read_ready(&mut self, origin: ReadOrigin, index: LogIndex) {
        match origin {
            ReadOrigin::Local(id) => self.event(Event::ReadReady { id, index }),
            ReadOrigin::Remote(to, id) => self.send(to, MessageBody::ReadIndexResponse { id, index: Some(index) }),
        }
    }

    /// Serves reads whose registration a quorum has now confirmed, in order.
    pub(super) fn release_confirmed_reads(&mut self) {
        if self.reads.is_empty() {
            return;
        }
        let confirmed = self.quorum_acked_ctx();
        while let Some(read) = self.reads.front().copied() {
            if read.registered_at > confirmed {
                break;
            }
            self.reads.pop_front();
            self.read_ready(read.origin, read.index);
        }
    }

    /// Registers reads that waited for this term's first commit.
    pub(super) fn release_reads_awaiting_commit(&mut self) {
        if self.reads_awaiting_commit.is_empty() || self.log.term(self.log.committed) != Some(self.term) {
            return;
        }
        for origin in core::mem::take(&mut self.reads_awaiting_commit) {
            self.register_read(origin);
        }
    }

    pub(super) fn on_read_index_request(&mut self, from: NodeId, id: u64) {
        if self.role != Role::Leader || !self.membership.is_member(from) {
            self.send(from, MessageBody::ReadIndexResponse { id, index: None });
            return;
        }
        if self.leader_read(ReadOrigin::Remote(from, id)).is_err() {
            self.send(from, MessageBody::ReadIndexResponse { id, index: None });
        }
    }

    pub(super) fn on_read_index_response(&mut self, from: NodeId, id: u64, index: Option<LogIndex>) {
        let Some(pos) = self.forwarded_reads.iter().position(|(x, _)| *x == id) else {
            self.stats.dropped_unknown_sender += 1;
            return;
        };
        if self.leader != Some(from) {
            self.stats.dropped_unknown_sender += 1;
            return;
        }
        self.forwarded_reads.remove(pos);
        match index {
            Some(index) => self.event(Event::ReadReady { id, index }),
            None => self.event(Event::ReadFailed { id }),
        }
    }
}
