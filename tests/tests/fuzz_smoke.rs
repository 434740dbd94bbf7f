//! Short proptest versions of the cargo-fuzz targets in `fuzz/`, so the default `cargo test`
//! exercises the same contracts: the datagram decoder is total and round-trips, and nothing a
//! peer sends makes a Raft node panic or break its invariants.
//!
//! Run: `cargo test -p quorate-tests --release fuzz_smoke`. The `fuzz_smoke_regression_*`
//! tests pin five bugs the fuzzer found in core (all fixed).

use core::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use quorate_core::raft::testkit::Cluster;
use quorate_core::raft::{
    Command, ConfChange, ConfChangeItem, ConfTransition, Config, Entry, EntryPayload, LogIndex, Membership, Message,
    MessageBody, RejectHint, SnapshotMeta, Term,
};
use quorate_core::wire::{self, Envelope, WireError, MAGIC, PROTOCOL_VERSION};
use quorate_core::{fnv1a64, NodeId};

const CLUSTER_ID: u64 = 0x5152_0001;
const MAX_BYTES: usize = 64 << 10;
const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);

// ----- generators -----

/// A number relative to the target node's state (its term, or its last index), so forged
/// messages reach past the term and log-matching checks.
#[derive(Clone, Copy, Debug)]
enum Num {
    Zero,
    Here,
    Below(u8),
    Above(u8),
    Abs(u64),
}

impl Num {
    fn at(self, base: u64) -> u64 {
        match self {
            Num::Zero => 0,
            Num::Here => base,
            Num::Below(d) => base.saturating_sub(u64::from(d)),
            Num::Above(d) => base.saturating_add(u64::from(d)),
            Num::Abs(x) => x,
        }
    }
}

fn num(max_abs: u64) -> impl Strategy<Value = Num> {
    prop_oneof![
        1 => Just(Num::Zero),
        3 => Just(Num::Here),
        2 => (0u8..4).prop_map(Num::Below),
        2 => (0u8..4).prop_map(Num::Above),
        1 => (0..=max_abs).prop_map(Num::Abs),
    ]
}

/// Any sender or member id: the three nodes, the reserved zero, strangers, the extreme.
fn peer() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        6 => (1u64..=3).prop_map(NodeId),
        1 => Just(NodeId::NONE),
        1 => (4u64..8).prop_map(NodeId),
        1 => Just(NodeId(u64::MAX)),
    ]
}

fn ctx() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), any::<u64>()]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..8)
}

fn conf_change(ids: BoxedStrategy<NodeId>) -> impl Strategy<Value = ConfChange> {
    let item = prop_oneof![
        ids.clone().prop_map(ConfChangeItem::AddVoter),
        ids.clone().prop_map(ConfChangeItem::AddLearner),
        ids.prop_map(ConfChangeItem::RemoveNode),
    ];
    let transition = prop_oneof![
        Just(ConfTransition::Auto),
        any::<bool>().prop_map(|auto_leave| ConfTransition::Joint { auto_leave })
    ];
    (proptest::collection::vec(item, 0..3), transition)
        .prop_map(|(changes, transition)| ConfChange { changes, transition })
}

/// A membership a peer might claim. `wild`: raw sets (unsorted, duplicates, id 0).
fn membership(wild: bool) -> BoxedStrategy<Membership> {
    let three = Just(Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]));
    if !wild {
        return three.boxed();
    }
    let set = || proptest::collection::vec(peer(), 0..4);
    prop_oneof![
        three,
        (set(), set(), set(), set(), any::<bool>()).prop_map(
            |(voters, voters_outgoing, learners, learners_next, auto_leave)| {
                Membership { voters, voters_outgoing, learners, learners_next, auto_leave }
            }
        ),
    ]
    .boxed()
}

#[derive(Clone, Debug)]
struct EntryRecipe {
    term: Num,
    /// `None`: the index after the previous entry.
    index: Option<Num>,
    payload: EntryPayload,
}

#[derive(Clone, Debug)]
enum BodyRecipe {
    Vote {
        pre_vote: bool,
        last_index: Num,
        last_term: Num,
        transfer: bool,
    },
    VoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    Append {
        prev_index: Num,
        prev_term: Num,
        entries: Vec<EntryRecipe>,
        commit: Num,
        ctx: u64,
    },
    AppendResponse {
        index: Num,
        reject: Option<(Num, Num)>,
        ctx: u64,
    },
    Heartbeat {
        commit: Num,
        ctx: u64,
    },
    HeartbeatResponse {
        ctx: u64,
    },
    /// `consistent`: size and digest match `data`, sent whole from offset 0.
    Snapshot {
        index: Num,
        term: Num,
        membership: Membership,
        consistent: bool,
        size: u64,
        digest: u64,
        offset: u64,
        data: Vec<u8>,
        ctx: u64,
    },
    SnapshotResponse {
        index: Num,
        next_offset: u64,
        done: bool,
        ctx: u64,
    },
    TimeoutNow,
    ReadIndex {
        id: u64,
    },
    ReadIndexResponse {
        id: u64,
        index: Option<Num>,
    },
}

/// A message described relative to its recipient, resolved when it is sent.
#[derive(Clone, Debug)]
struct Recipe {
    term: Num,
    body: BodyRecipe,
}

/// The recipient's state a recipe is resolved against.
#[derive(Clone, Copy, Debug)]
struct View {
    term: u64,
    last: u64,
}

impl Recipe {
    fn message(&self, v: View) -> Message {
        let t = |n: Num| Term(n.at(v.term));
        let i = |n: Num| LogIndex(n.at(v.last));
        let body = match &self.body {
            BodyRecipe::Vote { pre_vote, last_index, last_term, transfer } => MessageBody::RequestVote {
                pre_vote: *pre_vote,
                last_log_index: i(*last_index),
                last_log_term: t(*last_term),
                transfer: *transfer,
            },
            BodyRecipe::VoteResponse { pre_vote, granted } => {
                MessageBody::RequestVoteResponse { pre_vote: *pre_vote, granted: *granted }
            }
            BodyRecipe::Append { prev_index, prev_term, entries, commit, ctx } => {
                let mut next = i(*prev_index);
                let entries = entries
                    .iter()
                    .map(|e| {
                        let index = e.index.map_or(next.next(), i);
                        next = index;
                        Entry { term: t(e.term), index, payload: e.payload.clone() }
                    })
                    .collect();
                MessageBody::AppendEntries {
                    prev_log_index: i(*prev_index),
                    prev_log_term: t(*prev_term),
                    entries,
                    leader_commit: i(*commit),
                    ctx: *ctx,
                    commit_only: *ctx % 2 == 1,
                }
            }
            BodyRecipe::AppendResponse { index, reject, ctx } => MessageBody::AppendEntriesResponse {
                index: i(*index),
                reject: reject.map(|(ri, rt)| RejectHint { index: i(ri), term: t(rt) }),
                ctx: *ctx,
            },
            BodyRecipe::Heartbeat { commit, ctx } => MessageBody::Heartbeat { commit: i(*commit), ctx: *ctx },
            BodyRecipe::HeartbeatResponse { ctx } => MessageBody::HeartbeatResponse { ctx: *ctx },
            BodyRecipe::Snapshot { index, term, membership, consistent, size, digest, offset, data, ctx } => {
                let (size_bytes, digest, offset) =
                    if *consistent { (data.len() as u64, fnv1a64(data), 0) } else { (*size % 64, *digest, *offset) };
                let meta = SnapshotMeta {
                    index: i(*index),
                    term: t(*term),
                    membership: membership.clone(),
                    size_bytes,
                    digest,
                };
                // `into()`: the message may hold the meta inline or boxed.
                MessageBody::InstallSnapshot { meta: meta.into(), offset, data: Bytes::from(data.clone()), ctx: *ctx }
            }
            BodyRecipe::SnapshotResponse { index, next_offset, done, ctx } => MessageBody::InstallSnapshotResponse {
                index: i(*index),
                next_offset: *next_offset,
                done: *done,
                ctx: *ctx,
            },
            BodyRecipe::TimeoutNow => MessageBody::TimeoutNow,
            BodyRecipe::ReadIndex { id } => MessageBody::ReadIndex { id: *id },
            BodyRecipe::ReadIndexResponse { id, index } => {
                MessageBody::ReadIndexResponse { id: *id, index: index.map(i) }
            }
        };
        Message { term: t(self.term), body }
    }
}

/// Forged messages. `wild`: any value the wire can carry (huge numbers, malformed
/// memberships, membership changes in entries); otherwise bounded so a cluster that saw them
/// can still elect a leader.
fn recipe(wild: bool) -> impl Strategy<Value = Recipe> {
    let max_abs = if wild { u64::MAX } else { 64 };
    let n = move || num(max_abs);
    let payload = if wild {
        let ids = peer().boxed();
        prop_oneof![
            Just(EntryPayload::Noop),
            data().prop_map(|d| EntryPayload::Command(Command::from(d))),
            conf_change(ids).prop_map(|cc| EntryPayload::ConfChange(Box::new(cc))),
        ]
        .boxed()
    } else {
        prop_oneof![Just(EntryPayload::Noop), data().prop_map(|d| EntryPayload::Command(Command::from(d)))].boxed()
    };
    let entry = (n(), proptest::option::weighted(0.2, n()), payload).prop_map(|(term, index, payload)| EntryRecipe {
        term,
        index,
        payload,
    });
    let body = prop_oneof![
        (any::<bool>(), n(), n(), any::<bool>()).prop_map(|(pre_vote, last_index, last_term, transfer)| {
            BodyRecipe::Vote { pre_vote, last_index, last_term, transfer }
        }),
        (any::<bool>(), any::<bool>()).prop_map(|(pre_vote, granted)| BodyRecipe::VoteResponse { pre_vote, granted }),
        (n(), n(), proptest::collection::vec(entry, 0..4), n(), ctx()).prop_map(
            |(prev_index, prev_term, entries, commit, ctx)| BodyRecipe::Append {
                prev_index,
                prev_term,
                entries,
                commit,
                ctx
            }
        ),
        (n(), proptest::option::of((n(), n())), ctx()).prop_map(|(index, reject, ctx)| BodyRecipe::AppendResponse {
            index,
            reject,
            ctx
        }),
        (n(), ctx()).prop_map(|(commit, ctx)| BodyRecipe::Heartbeat { commit, ctx }),
        ctx().prop_map(|ctx| BodyRecipe::HeartbeatResponse { ctx }),
        (
            n(),
            n(),
            membership(wild),
            any::<bool>(),
            any::<u64>(),
            any::<u64>(),
            prop_oneof![Just(0u64), any::<u64>()],
            data(),
            ctx()
        )
            .prop_map(|(index, term, membership, consistent, size, digest, offset, data, ctx)| {
                BodyRecipe::Snapshot { index, term, membership, consistent, size, digest, offset, data, ctx }
            }),
        (n(), any::<u64>(), any::<bool>(), ctx())
            .prop_map(|(index, next_offset, done, ctx)| BodyRecipe::SnapshotResponse { index, next_offset, done, ctx }),
        Just(BodyRecipe::TimeoutNow),
        any::<u64>().prop_map(|id| BodyRecipe::ReadIndex { id }),
        (any::<u64>(), proptest::option::of(n())).prop_map(|(id, index)| BodyRecipe::ReadIndexResponse { id, index }),
    ];
    (n(), body).prop_map(|(term, body)| Recipe { term, body })
}

/// Any message the wire can carry.
fn any_message() -> impl Strategy<Value = Message> {
    (recipe(true), any::<u64>(), any::<u64>()).prop_map(|(r, term, last)| r.message(View { term, last }))
}

#[derive(Clone, Debug)]
enum Op {
    Inject { from: NodeId, to: NodeId, msg: Recipe },
    Deliver(u8),
    DeliverAll,
    DropNext,
    Duplicate,
    Reorder,
    Timer(NodeId),
    Advance(u64),
    Propose(NodeId, Vec<u8>),
    ConfChange(NodeId, ConfChange),
    Transfer(NodeId, NodeId),
    Read(NodeId, u64),
    Persisted(NodeId, Num, Num),
    Snapshot(NodeId, Vec<u8>),
    Crash(NodeId),
    Restart(NodeId),
    Isolate(NodeId),
    Heal,
}

fn node() -> impl Strategy<Value = NodeId> {
    (1u64..=3).prop_map(NodeId)
}

fn op() -> impl Strategy<Value = Op> {
    let members = (1u64..=3).prop_map(NodeId).boxed();
    prop_oneof![
        8 => (peer(), node(), recipe(false)).prop_map(|(from, to, msg)| Op::Inject { from, to, msg }),
        4 => any::<u8>().prop_map(Op::Deliver),
        1 => Just(Op::DeliverAll),
        1 => Just(Op::DropNext),
        1 => Just(Op::Duplicate),
        1 => Just(Op::Reorder),
        3 => node().prop_map(Op::Timer),
        1 => (0u64..300).prop_map(Op::Advance),
        2 => (node(), data()).prop_map(|(n, d)| Op::Propose(n, d)),
        1 => (node(), conf_change(members)).prop_map(|(n, cc)| Op::ConfChange(n, cc)),
        1 => (node(), peer()).prop_map(|(n, t)| Op::Transfer(n, t)),
        1 => (node(), any::<u64>()).prop_map(|(n, id)| Op::Read(n, id)),
        1 => (node(), num(64), num(64)).prop_map(|(n, i, t)| Op::Persisted(n, i, t)),
        1 => (node(), data()).prop_map(|(n, d)| Op::Snapshot(n, d)),
        1 => node().prop_map(Op::Crash),
        1 => node().prop_map(Op::Restart),
        1 => node().prop_map(Op::Isolate),
        1 => Just(Op::Heal),
    ]
}

fn view(c: &Cluster, id: NodeId) -> Option<View> {
    c.nodes.get(&id).map(|r| View { term: r.term().0, last: r.last_index().0 })
}

/// The network never went quiet: some node keeps answering itself into a loop.
#[derive(Debug)]
struct Livelock;

/// `Cluster::deliver_all`, reporting a livelock instead of panicking.
fn deliver_all(c: &mut Cluster) -> Result<(), Livelock> {
    c.try_deliver_all().then_some(()).ok_or(Livelock)
}

/// `Cluster::run_for`, reporting a livelock instead of panicking.
fn run_for(c: &mut Cluster, d: Duration) -> Result<(), Livelock> {
    c.try_run_for(d).then_some(()).ok_or(Livelock)
}

fn apply(c: &mut Cluster, op: &Op) -> Result<(), Livelock> {
    let now = c.now;
    let running = |c: &Cluster, id: NodeId| c.nodes.contains_key(&id);
    match op {
        Op::Inject { from, to, msg } => {
            let Some(v) = view(c, *to) else { return Ok(()) };
            let msg = msg.message(v);
            c.node_mut(*to).handle_message(now, *from, msg);
            c.drain(*to);
        }
        Op::Deliver(n) => {
            for _ in 0..=(n % 8) {
                c.deliver_one();
            }
        }
        Op::DeliverAll => deliver_all(c)?,
        Op::DropNext => {
            c.queue.pop_front();
        }
        Op::Duplicate => {
            if let Some(m) = c.queue.front().cloned() {
                c.queue.push_front(m);
                c.deliver_one();
                c.deliver_one();
            }
        }
        Op::Reorder => {
            if let Some(m) = c.queue.pop_front() {
                c.queue.push_back(m);
            }
        }
        Op::Timer(id) => c.fire_timer(*id),
        Op::Advance(ms) => c.advance(Duration::from_millis(*ms)),
        Op::Propose(id, d) if running(c, *id) => {
            let _ = c.node_mut(*id).propose(now, d.clone());
            c.drain(*id);
        }
        Op::ConfChange(id, cc) if running(c, *id) => {
            let _ = c.node_mut(*id).propose_conf_change(now, cc.clone());
            c.drain(*id);
        }
        Op::Transfer(id, target) if running(c, *id) => {
            let _ = c.node_mut(*id).transfer_leader(now, *target);
            c.drain(*id);
        }
        Op::Read(id, read) if running(c, *id) => {
            let _ = c.node_mut(*id).read_index(now, *read);
            c.drain(*id);
        }
        Op::Persisted(id, index, term) => {
            let Some(v) = view(c, *id) else { return Ok(()) };
            c.node_mut(*id).handle_persisted(now, LogIndex(index.at(v.last)), Term(term.at(v.term)));
            c.drain(*id);
        }
        Op::Snapshot(id, d) if running(c, *id) => {
            let applied = c.node(*id).applied();
            c.node_mut(*id)
                .handle_snapshot(now, applied, Bytes::from(d.clone()))
                .expect("snapshot at the applied index");
            c.drain(*id);
        }
        Op::Crash(id) => c.crash(*id),
        Op::Restart(id) if !running(c, *id) => c.start(*id),
        Op::Isolate(id) => c.isolate(*id),
        Op::Heal => c.heal(),
        _ => {}
    }
    Ok(())
}

/// Decodes `bytes` and, if it decodes, checks that it re-encodes canonically and round-trips.
fn check_decode(bytes: &[u8]) -> Result<Result<Envelope<Message>, WireError>, TestCaseError> {
    let decoded = wire::decode::<Message>(bytes, CLUSTER_ID, MAX_BYTES);
    if let Ok(env) = &decoded {
        prop_assert_eq!(env.cluster_id, CLUSTER_ID);
        let again = wire::encode(CLUSTER_ID, env.from, &env.body, MAX_BYTES).expect("a decoded message re-encodes");
        prop_assert!(again.len() <= bytes.len(), "re-encoding grew from {} to {} bytes", bytes.len(), again.len());
        let back: Envelope<Message> =
            wire::decode(&again, CLUSTER_ID, MAX_BYTES).expect("a re-encoded message decodes");
        prop_assert_eq!(&back, env);
    }
    Ok(decoded)
}

fn check_all(c: &Cluster) {
    for r in c.nodes.values() {
        r.check_invariants();
    }
}

// ----- (a) the decoder: smoke of fuzz target `decode_raft_message` -----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn fuzz_smoke_decode_never_panics_on_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..256)) {
        let raw = check_decode(&tail)?;
        if tail.len() < 3 || tail[..2] != MAGIC {
            prop_assert_eq!(raw, Err(WireError::BadMagic));
        }
        let mut framed = vec![MAGIC[0], MAGIC[1], PROTOCOL_VERSION];
        framed.extend_from_slice(&tail);
        let framed = check_decode(&framed)?;
        prop_assert!(!matches!(framed, Err(WireError::BadMagic | WireError::UnsupportedVersion(_))), "{framed:?}");
    }

    #[test]
    fn fuzz_smoke_any_message_round_trips(msg in any_message(), from in any::<u64>()) {
        let bytes = wire::encode(CLUSTER_ID, NodeId(from), &msg, MAX_BYTES).expect("small messages encode");
        let env = check_decode(&bytes)?.expect("an encoded message decodes");
        prop_assert_eq!(env, Envelope { cluster_id: CLUSTER_ID, from: NodeId(from), body: msg });
        // No strict prefix decodes: a truncated datagram is always rejected.
        for cut in 0..bytes.len() {
            let prefix = wire::decode::<Message>(&bytes[..cut], CLUSTER_ID, MAX_BYTES);
            prop_assert!(prefix.is_err(), "prefix {cut} decoded");
        }
        prop_assert_eq!(
            wire::decode::<Message>(&bytes, CLUSTER_ID ^ 1, MAX_BYTES),
            Err(WireError::WrongCluster { expected: CLUSTER_ID ^ 1, got: CLUSTER_ID })
        );
    }
}

// ----- (b) a cluster under forged input: smoke of fuzz target `step_raft_node` -----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fuzz_smoke_cluster_survives_forged_messages_and_still_elects(
        ops in proptest::collection::vec(op(), 1..48),
    ) {
        let mut c = Cluster::new(3, Cluster::test_config);
        c.elect(N1);
        prop_assert_eq!(c.leader(), Some(N1));
        let livelock = || TestCaseError::fail("livelock: the network never went quiet");
        for op in &ops {
            apply(&mut c, op).map_err(|_| livelock())?;
            check_all(&c);
        }
        // Heal everything; the cluster must settle on a leader.
        c.heal();
        for id in [NodeId(1), NodeId(2), NodeId(3)] {
            if !c.nodes.contains_key(&id) {
                c.start(id);
            }
        }
        deliver_all(&mut c).map_err(|_| livelock())?;
        run_for(&mut c, Duration::from_secs(5)).map_err(|_| livelock())?;
        check_all(&c);
        prop_assert!(c.leader().is_some(), "no leader after healing; roles: {:?}",
            c.nodes.iter().map(|(id, r)| (*id, r.role(), r.term(), r.membership().voters.clone())).collect::<Vec<_>>());
    }
}

// ----- regression tests for core bugs the fuzzer found (all fixed) -----

fn no_prevote(id: NodeId) -> Config {
    let mut cfg = Cluster::test_config(id);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    cfg
}

/// Delivers `body` to n2 as if n1 sent it in n2's current term, then lets n2 campaign.
fn forge_to_n2_then_elect_it(body: impl FnOnce(Term, LogIndex, Term) -> Vec<MessageBody>) {
    let mut c = Cluster::new(3, no_prevote);
    c.elect(N1);
    let now = c.now;
    let r = c.node(N2);
    let (term, last, last_term) = (r.term(), r.last_index(), r.last_term());
    for body in body(term, last, last_term) {
        c.node_mut(N2).handle_message(now, N1, Message { term, body });
        c.drain(N2);
    }
    c.deliver_all();
    c.fire_timer(N2);
    c.deliver_all();
    check_all(&c);
    assert!(c.leader().is_some());
}

fn consistent_snapshot(index: LogIndex, term: Term, membership: Membership) -> MessageBody {
    let meta = SnapshotMeta { index, term, membership, size_bytes: 0, digest: fnv1a64(b"") };
    MessageBody::InstallSnapshot { meta: meta.into(), offset: 0, data: Bytes::new(), ctx: 0 }
}

#[test]
fn fuzz_smoke_regression_1_append_with_decreasing_entry_terms() {
    // n2 holds the leader's committed no-op at i1. A first append adds i2 (uncommitted); the
    // second restates i2 from i1 and adds i3 with an older term. Starting before the last entry
    // avoids the append-after-last path, which does check terms.
    let entry = |index, term| Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Noop };
    forge_to_n2_then_elect_it(|term, last, last_term| {
        assert_eq!((last, last_term), (LogIndex(1), term));
        let append = |entries| MessageBody::AppendEntries {
            prev_log_index: LogIndex(1),
            prev_log_term: term,
            entries,
            leader_commit: LogIndex(0),
            ctx: 0,
            commit_only: false,
        };
        vec![append(vec![entry(2, term.0)]), append(vec![entry(2, term.0), entry(3, 0)])]
    });
}

#[test]
fn fuzz_smoke_regression_2_snapshot_with_malformed_membership() {
    let malformed = Membership { voters: vec![NodeId::NONE], ..Membership::default() };
    forge_to_n2_then_elect_it(|term, last, _| vec![consistent_snapshot(last.next(), term, malformed)]);
}

#[test]
fn fuzz_smoke_regression_3_snapshot_at_the_last_representable_index() {
    let three = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    forge_to_n2_then_elect_it(|term, _, _| vec![consistent_snapshot(LogIndex(u64::MAX), term, three)]);
}

#[test]
fn fuzz_smoke_regression_4_entry_from_a_future_term() {
    forge_to_n2_then_elect_it(|term, last, last_term| {
        vec![MessageBody::AppendEntries {
            prev_log_index: last,
            prev_log_term: last_term,
            entries: vec![Entry { term: Term(term.0 + 5), index: last.next(), payload: EntryPayload::Noop }],
            leader_commit: LogIndex(0),
            ctx: 0,
            commit_only: false,
        }]
    });
}

#[test]
fn fuzz_smoke_regression_5_snapshot_contradicting_the_leader_livelocks_probing() {
    // n2 installs a forged snapshot "from n1" at (last + 1, term - 1) and acknowledges it; n1
    // then writes a different term at that index. n1 probes from n2's (forged) match, n2 rejects,
    // and n1 re-sends the same probe at once, forever (`Progress::maybe_decrease_to` in Probe
    // accepts a rejection at or below `matched`).
    let mut c = Cluster::new(3, Cluster::test_config);
    c.elect(N1);
    let now = c.now;
    let (term, last) = (c.node(N2).term(), c.node(N2).last_index());
    let three = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    let body = consistent_snapshot(last.next(), Term(term.0 - 1), three);
    c.node_mut(N2).handle_message(now, N1, Message { term, body });
    c.drain(N2);
    c.node_mut(N1).propose(now, "x").expect("n1 leads");
    c.drain(N1);
    c.deliver_all();
    check_all(&c);
}
