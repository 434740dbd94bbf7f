//! Membership: who votes, who learns, and how majorities are counted, including joint consensus.
//!
//! A [`Membership`] is either simple (one voter set) or joint (an incoming and an outgoing voter
//! set, both of which must agree). Changes are [`ConfChange`] values committed through the log and
//! applied with [`Membership::apply`], which is total: an invalid change returns an error and
//! leaves the membership as it was.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::message::LogIndex;
use crate::NodeId;

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChangeItem {
    /// Make the node a voter (promoting it if it is a learner).
    AddVoter(NodeId),
    /// Make the node a learner (demoting it if it is a voter).
    AddLearner(NodeId),
    /// Remove the node entirely.
    RemoveNode(NodeId),
}

/// How a change moves between memberships.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfTransition {
    /// Simple when at most one voter changes, otherwise joint with automatic leave.
    #[default]
    Auto,
    /// Always enter a joint membership; `auto_leave` says whether the leader leaves it by itself.
    Joint {
        /// When true, the leader proposes the leave as soon as the joint membership is applied.
        auto_leave: bool,
    },
}

/// A membership change as carried in the log. No items means "leave the joint membership".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfChange {
    /// The steps, applied in order.
    pub changes: Vec<ConfChangeItem>,
    /// Simple or joint.
    pub transition: ConfTransition,
}

impl ConfChange {
    /// The change that leaves a joint membership.
    pub fn leave_joint() -> Self {
        ConfChange::default()
    }

    /// A one-step change.
    pub fn single(item: ConfChangeItem) -> Self {
        ConfChange { changes: alloc::vec![item], transition: ConfTransition::Auto }
    }
}

/// Why a membership change cannot be applied. The membership is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ConfChangeError {
    /// A joint membership must be left before another change.
    #[error("membership is joint: leave it before making another change")]
    AlreadyJoint,
    /// Leaving was asked while the membership is simple.
    #[error("membership is not joint: there is nothing to leave")]
    NotJoint,
    /// The change would leave no voter.
    #[error("the change leaves no voter")]
    NoVoters,
    /// A simple change may alter at most one voter; use a joint change.
    #[error("a simple change may alter at most one voter; use a joint change")]
    TooManyVoterChanges,
    /// Node id zero is reserved.
    #[error("node id 0 is reserved")]
    ReservedNodeId,
}

/// Why a membership from outside is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum MembershipError {
    /// A set is not sorted and free of duplicates.
    #[error("a member set is not sorted or has duplicates")]
    NotSorted,
    /// Node id zero is reserved.
    #[error("node id 0 is reserved")]
    ReservedNodeId,
    /// A node is a learner and a voter, or a next-learner outside the outgoing voters.
    #[error("a node is both a learner and a voter")]
    Overlap,
    /// `auto_leave` is set on a simple membership.
    #[error("auto_leave is set outside a joint membership")]
    AutoLeaveNotJoint,
}

/// Voters and learners of a Raft group. Every set is sorted and free of duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Voters of the incoming (or only) configuration.
    pub voters: Vec<NodeId>,
    /// Voters of the outgoing configuration; non-empty exactly when joint.
    pub voters_outgoing: Vec<NodeId>,
    /// Non-voting members that receive the log.
    pub learners: Vec<NodeId>,
    /// Outgoing voters that become learners when the joint membership is left.
    pub learners_next: Vec<NodeId>,
    /// Whether the leader leaves the joint membership by itself.
    pub auto_leave: bool,
}

fn insert(set: &mut Vec<NodeId>, id: NodeId) {
    if let Err(pos) = set.binary_search(&id) {
        set.insert(pos, id);
    }
}

fn remove(set: &mut Vec<NodeId>, id: NodeId) {
    if let Ok(pos) = set.binary_search(&id) {
        set.remove(pos);
    }
}

fn contains(set: &[NodeId], id: NodeId) -> bool {
    set.binary_search(&id).is_ok()
}

/// The outcome of counting votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// A quorum granted.
    Won,
    /// A quorum can no longer grant.
    Lost,
    /// Not decided yet.
    Pending,
}

impl Membership {
    /// A simple membership of the given voters.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        let mut m = Membership::default();
        for v in voters {
            insert(&mut m.voters, v);
        }
        m
    }

    /// True while both an incoming and an outgoing voter set must agree.
    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// True if `id` votes in either half.
    pub fn is_voter(&self, id: NodeId) -> bool {
        contains(&self.voters, id) || contains(&self.voters_outgoing, id)
    }

    /// True if `id` is a learner (now or after leaving the joint membership).
    pub fn is_learner(&self, id: NodeId) -> bool {
        contains(&self.learners, id) || contains(&self.learners_next, id)
    }

    /// True if `id` is a voter or a learner.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters and learners, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        let mut all = self.voters.clone();
        for set in [&self.voters_outgoing, &self.learners, &self.learners_next] {
            for &id in set.iter() {
                insert(&mut all, id);
            }
        }
        all
    }

    /// Every voter of either half, sorted.
    pub fn all_voters(&self) -> Vec<NodeId> {
        let mut all = self.voters.clone();
        for &id in &self.voters_outgoing {
            insert(&mut all, id);
        }
        all
    }

    /// The highest index a quorum has reached, given each voter's index.
    ///
    /// `scratch` is reused to avoid allocating on the hot path.
    pub fn committed_index(&self, mut index_of: impl FnMut(NodeId) -> LogIndex, scratch: &mut Vec<u64>) -> LogIndex {
        LogIndex(self.quorum_value(|id| index_of(id).0, scratch))
    }

    /// The largest `v` such that a quorum (of both halves when joint) has `value_of(id) >= v`.
    pub fn quorum_value(&self, mut value_of: impl FnMut(NodeId) -> u64, scratch: &mut Vec<u64>) -> u64 {
        let incoming = majority_value(&self.voters, &mut value_of, scratch);
        if self.voters_outgoing.is_empty() {
            return incoming;
        }
        let outgoing = majority_value(&self.voters_outgoing, &mut value_of, scratch);
        incoming.min(outgoing)
    }

    /// Counts votes: `vote_of` answers `Some(granted)` for voters that replied.
    pub fn vote_result(&self, mut vote_of: impl FnMut(NodeId) -> Option<bool>) -> VoteResult {
        let incoming = majority_vote(&self.voters, &mut vote_of);
        if self.voters_outgoing.is_empty() {
            return incoming;
        }
        let outgoing = majority_vote(&self.voters_outgoing, &mut vote_of);
        match (incoming, outgoing) {
            (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// The membership after `cc`, or why it cannot be applied.
    pub fn apply(&self, cc: &ConfChange) -> Result<Membership, ConfChangeError> {
        if cc.changes.is_empty() {
            return self.leave_joint();
        }
        let mut next = self.clone();
        let joint = match cc.transition {
            ConfTransition::Joint { .. } => true,
            ConfTransition::Auto => self.voter_changes(&cc.changes) > 1,
        };
        if self.is_joint() {
            return Err(ConfChangeError::AlreadyJoint);
        }
        if joint {
            next.voters_outgoing = self.voters.clone();
            next.auto_leave = match cc.transition {
                ConfTransition::Joint { auto_leave } => auto_leave,
                ConfTransition::Auto => true,
            };
        }
        for item in &cc.changes {
            next.apply_item(*item)?;
        }
        if next.voters.is_empty() {
            return Err(ConfChangeError::NoVoters);
        }
        if !joint && symmetric_difference(&self.voters, &next.voters) > 1 {
            return Err(ConfChangeError::TooManyVoterChanges);
        }
        Ok(next)
    }

    fn leave_joint(&self) -> Result<Membership, ConfChangeError> {
        if !self.is_joint() {
            return Err(ConfChangeError::NotJoint);
        }
        let mut next = self.clone();
        for id in core::mem::take(&mut next.learners_next) {
            insert(&mut next.learners, id);
        }
        next.voters_outgoing.clear();
        next.auto_leave = false;
        Ok(next)
    }

    fn apply_item(&mut self, item: ConfChangeItem) -> Result<(), ConfChangeError> {
        match item {
            ConfChangeItem::AddVoter(id) => {
                check_id(id)?;
                remove(&mut self.learners, id);
                remove(&mut self.learners_next, id);
                insert(&mut self.voters, id);
            }
            ConfChangeItem::AddLearner(id) => {
                check_id(id)?;
                remove(&mut self.voters, id);
                if contains(&self.voters_outgoing, id) {
                    insert(&mut self.learners_next, id);
                } else {
                    insert(&mut self.learners, id);
                }
            }
            ConfChangeItem::RemoveNode(id) => {
                check_id(id)?;
                remove(&mut self.voters, id);
                remove(&mut self.learners, id);
                remove(&mut self.learners_next, id);
            }
        }
        Ok(())
    }

    fn voter_changes(&self, items: &[ConfChangeItem]) -> usize {
        let mut scratch = self.clone();
        for item in items {
            // Errors are reported by `apply`; counting only needs the resulting voter set.
            let _ = scratch.apply_item(*item);
        }
        symmetric_difference(&self.voters, &scratch.voters)
    }

    /// Checks what [`Membership::check_invariants`] asserts, as an error: for memberships that
    /// come from outside (a peer's snapshot, the host's bootstrap).
    pub fn validate(&self) -> Result<(), MembershipError> {
        for set in [&self.voters, &self.voters_outgoing, &self.learners, &self.learners_next] {
            if !set.windows(2).all(|w| w[0] < w[1]) {
                return Err(MembershipError::NotSorted);
            }
            if set.contains(&NodeId::NONE) {
                return Err(MembershipError::ReservedNodeId);
            }
        }
        let learners_ok = self.learners.iter().all(|id| !self.is_voter(*id));
        let next_ok =
            self.learners_next.iter().all(|id| contains(&self.voters_outgoing, *id) && !contains(&self.voters, *id));
        if !learners_ok || !next_ok {
            return Err(MembershipError::Overlap);
        }
        if self.auto_leave && !self.is_joint() {
            return Err(MembershipError::AutoLeaveNotJoint);
        }
        Ok(())
    }

    /// Panics if the sets are unsorted, overlap where they must not, or are otherwise malformed.
    pub fn check_invariants(&self) {
        for set in [&self.voters, &self.voters_outgoing, &self.learners, &self.learners_next] {
            assert!(set.windows(2).all(|w| w[0] < w[1]), "membership set not sorted: {set:?}");
            assert!(!set.contains(&NodeId::NONE), "membership holds the reserved id");
        }
        for id in &self.learners {
            assert!(!self.is_voter(*id), "{id} is both learner and voter");
        }
        for id in &self.learners_next {
            assert!(contains(&self.voters_outgoing, *id), "{id} in learners_next but not outgoing");
            assert!(!contains(&self.voters, *id), "{id} in learners_next and incoming voters");
        }
        assert!(self.is_joint() || !self.auto_leave, "auto_leave set outside a joint membership");
    }
}

fn check_id(id: NodeId) -> Result<(), ConfChangeError> {
    if id == NodeId::NONE {
        Err(ConfChangeError::ReservedNodeId)
    } else {
        Ok(())
    }
}

fn symmetric_difference(a: &[NodeId], b: &[NodeId]) -> usize {
    a.iter().filter(|id| !contains(b, **id)).count() + b.iter().filter(|id| !contains(a, **id)).count()
}

fn majority_value(voters: &[NodeId], value_of: &mut impl FnMut(NodeId) -> u64, scratch: &mut Vec<u64>) -> u64 {
    if voters.is_empty() {
        // An empty set agrees to everything, so joint math reduces to the other half.
        return u64::MAX;
    }
    scratch.clear();
    scratch.extend(voters.iter().map(|&id| value_of(id)));
    scratch.sort_unstable_by(|a, b| b.cmp(a));
    scratch[voters.len() / 2]
}

fn majority_vote(voters: &[NodeId], vote_of: &mut impl FnMut(NodeId) -> Option<bool>) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for &id in voters {
        match vote_of(id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if yes >= quorum {
        VoteResult::Won
    } else if yes + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|&x| NodeId(x)).collect()
    }

    #[test]
    fn majority_index_is_the_median_from_the_top() {
        let m = Membership::with_voters(ids(&[1, 2, 3, 4, 5]));
        let mut scratch = Vec::new();
        let idx = m.committed_index(|id| LogIndex(id.0 * 10), &mut scratch);
        assert_eq!(idx, LogIndex(30));
        let even = Membership::with_voters(ids(&[1, 2, 3, 4]));
        assert_eq!(even.committed_index(|id| LogIndex(id.0 * 10), &mut scratch), LogIndex(20));
    }

    #[test]
    fn joint_commit_needs_both_halves() {
        let m = Membership { voters: ids(&[1, 2, 3]), voters_outgoing: ids(&[4, 5, 6]), ..Default::default() };
        let mut scratch = Vec::new();
        let idx = m.committed_index(|id| LogIndex(if id.0 <= 3 { 9 } else { 4 }), &mut scratch);
        assert_eq!(idx, LogIndex(4));
    }

    #[test]
    fn votes_need_both_halves_when_joint() {
        let m = Membership { voters: ids(&[1, 2, 3]), voters_outgoing: ids(&[3, 4, 5]), ..Default::default() };
        assert_eq!(m.vote_result(|id| Some(id.0 <= 3)), VoteResult::Lost);
        assert_eq!(m.vote_result(|id| if id.0 <= 2 { Some(true) } else { None }), VoteResult::Pending);
        assert_eq!(m.vote_result(|id| Some(id.0 != 1 && id.0 != 5)), VoteResult::Won);
    }

    #[test]
    fn simple_change_allows_one_voter() {
        let m = Membership::with_voters(ids(&[1, 2, 3]));
        let added = m.apply(&ConfChange::single(ConfChangeItem::AddVoter(NodeId(4)))).unwrap();
        assert_eq!(added.voters, ids(&[1, 2, 3, 4]));
        assert!(!added.is_joint());
        let explicit_two = ConfChange {
            changes: vec![ConfChangeItem::AddVoter(NodeId(4)), ConfChangeItem::AddVoter(NodeId(5))],
            transition: ConfTransition::Auto,
        };
        let joint = m.apply(&explicit_two).unwrap();
        assert!(joint.is_joint() && joint.auto_leave);
        assert_eq!(joint.voters_outgoing, ids(&[1, 2, 3]));
        let left = joint.apply(&ConfChange::leave_joint()).unwrap();
        assert_eq!(left.voters, ids(&[1, 2, 3, 4, 5]));
        assert!(!left.is_joint());
    }

    #[test]
    fn demoting_an_outgoing_voter_goes_through_learners_next() {
        let m = Membership::with_voters(ids(&[1, 2, 3]));
        let cc = ConfChange {
            changes: vec![ConfChangeItem::AddLearner(NodeId(3)), ConfChangeItem::AddVoter(NodeId(4))],
            transition: ConfTransition::Joint { auto_leave: false },
        };
        let joint = m.apply(&cc).unwrap();
        joint.check_invariants();
        assert_eq!(joint.learners_next, ids(&[3]));
        assert!(joint.is_voter(NodeId(3)), "still votes in the outgoing half");
        let left = joint.apply(&ConfChange::leave_joint()).unwrap();
        left.check_invariants();
        assert_eq!(left.learners, ids(&[3]));
        assert!(!left.is_voter(NodeId(3)));
    }

    #[test]
    fn invalid_changes_are_refused_and_change_nothing() {
        let m = Membership::with_voters(ids(&[1]));
        assert_eq!(m.apply(&ConfChange::single(ConfChangeItem::RemoveNode(NodeId(1)))), Err(ConfChangeError::NoVoters));
        assert_eq!(m.apply(&ConfChange::leave_joint()), Err(ConfChangeError::NotJoint));
        assert_eq!(
            m.apply(&ConfChange::single(ConfChangeItem::AddVoter(NodeId::NONE))),
            Err(ConfChangeError::ReservedNodeId)
        );
        let joint = m
            .apply(&ConfChange {
                changes: vec![ConfChangeItem::AddVoter(NodeId(2))],
                transition: ConfTransition::Joint { auto_leave: false },
            })
            .unwrap();
        assert_eq!(
            joint.apply(&ConfChange::single(ConfChangeItem::AddVoter(NodeId(3)))),
            Err(ConfChangeError::AlreadyJoint)
        );
    }
}
