//! Unit tests of each conflict mode, and property tests that every merge is a join and that
//! the joined state is exactly what the mode promises for any history of writes and syncs.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use proptest::prelude::*;

use super::*;
use crate::replication::version::{Actor, HlcClock};
use crate::time::Instant;
use crate::NodeId;

fn actor(n: u64) -> Actor {
    Actor { node: NodeId(n), life: 1 }
}

fn stamp(wall_ms: u64, node: u64, counter: u64) -> Stamp {
    Stamp { ts: Hlc { wall_ms, logical: 0 }, dot: Dot { actor: actor(node), counter } }
}

fn entry(x: f32) -> Entry {
    Entry { vector: vec![x, 0.5], metadata: Metadata::new() }
}

fn written(mode: ConflictMode, op: Op, ctx: &Context, s: Stamp) -> KeyState {
    let mut st = KeyState::empty(mode);
    st.apply_write(mode, &op, ctx, s).unwrap();
    st
}

#[test]
fn lww_keeps_the_later_stamp_and_breaks_ties_by_node() {
    let m = ConflictMode::LastWriteWins;
    let a = written(m, Op::Put(entry(1.0)), &Context::default(), stamp(10, 1, 1));
    let b = written(m, Op::Put(entry(2.0)), &Context::default(), stamp(10, 2, 1));
    let mut ab = a.clone();
    let merged = ab.merge(&b, m).unwrap();
    assert!(merged.changed);
    assert_eq!(merged.conflict, Some(Resolution::LastWriteWins { winner: stamp(10, 2, 1), loser: stamp(10, 1, 1) }));
    let mut ba = b.clone();
    assert!(!ba.merge(&a, m).unwrap().changed || ba == ab);
    assert_eq!(ab, ba, "equal timestamps: node 2 wins on both sides");
    assert_eq!(ab.visible(), Visible::One(entry(2.0)));
}

#[test]
fn lww_without_the_node_tiebreak_diverges() {
    let m = ConflictMode::LastWriteWins;
    let a = written(m, Op::Put(entry(1.0)), &Context::default(), stamp(10, 1, 1));
    let b = written(m, Op::Put(entry(2.0)), &Context::default(), stamp(10, 2, 1));
    let mut ab = a.clone();
    ab.merge_with(&b, m, false).unwrap();
    let mut ba = b.clone();
    ba.merge_with(&a, m, false).unwrap();
    assert_ne!(ab.visible(), ba.visible(), "the planted bug keeps whichever was local");
}

#[test]
fn multi_value_keeps_concurrent_writes_and_replaces_seen_ones() {
    let m = ConflictMode::MultiValue;
    let a = written(m, Op::Put(entry(1.0)), &Context::default(), stamp(10, 1, 1));
    let b = written(m, Op::Put(entry(2.0)), &Context::default(), stamp(11, 2, 1));
    let mut both = a.clone();
    let r = both.merge(&b, m).unwrap();
    assert_eq!(r.conflict, Some(Resolution::Siblings { count: 2 }));
    assert_eq!(both.visible(), Visible::Siblings(vec![Some(entry(1.0)), Some(entry(2.0))]));
    // A write that read both replaces both.
    let mut resolved = both.clone();
    resolved.apply_write(m, &Op::Put(entry(3.0)), &both.context(), stamp(12, 3, 1)).unwrap();
    assert_eq!(resolved.visible(), Visible::One(entry(3.0)));
    // Merging the stale siblings back changes nothing.
    let mut again = resolved.clone();
    assert!(!again.merge(&a, m).unwrap().changed);
    assert!(!again.merge(&both, m).unwrap().changed);
    assert_eq!(again, resolved);
    // A concurrent delete is surfaced as a sibling; two deletes are simply absent.
    let d = written(m, Op::Delete, &Context::default(), stamp(13, 4, 1));
    let mut with_delete = resolved.clone();
    with_delete.merge(&d, m).unwrap();
    assert_eq!(with_delete.visible(), Visible::Siblings(vec![Some(entry(3.0)), None]));
    assert!(!with_delete.is_tombstone());
    let mut two_deletes = d.clone();
    two_deletes.merge(&written(m, Op::Delete, &Context::default(), stamp(13, 5, 1)), m).unwrap();
    assert_eq!(two_deletes.visible(), Visible::Absent);
    assert!(two_deletes.is_tombstone());
}

#[test]
fn crdt_map_merges_concurrent_fields_and_deletes_hide_older_ones() {
    let m = ConflictMode::CrdtMap;
    let mut color = Metadata::new();
    color.insert("color".to_string(), Scalar::Str("red".to_string()));
    let mut size = Metadata::new();
    size.insert("size".to_string(), Scalar::Int(3));
    let a =
        written(m, Op::Put(Entry { vector: vec![1.0], metadata: color.clone() }), &Context::default(), stamp(10, 1, 1));
    let b = written(m, Op::Patch { set: size.clone(), remove: Vec::new() }, &Context::default(), stamp(11, 2, 1));
    let mut ab = a.clone();
    let r = ab.merge(&b, m).unwrap();
    assert!(matches!(r.conflict, Some(Resolution::FieldsMerged { taken: 1 })));
    let mut both = color.clone();
    both.extend(size.clone());
    assert_eq!(ab.visible(), Visible::One(Entry { vector: vec![1.0], metadata: both }));
    // Removing a field, then deleting the entry.
    let mut removed = ab.clone();
    removed
        .apply_write(
            m,
            &Op::Patch { set: Metadata::new(), remove: vec!["color".to_string()] },
            &ab.context(),
            stamp(12, 1, 2),
        )
        .unwrap();
    assert_eq!(removed.visible(), Visible::One(Entry { vector: vec![1.0], metadata: size.clone() }));
    let mut deleted = removed.clone();
    deleted.apply_write(m, &Op::Delete, &removed.context(), stamp(13, 2, 2)).unwrap();
    assert_eq!(deleted.visible(), Visible::Absent);
    assert!(deleted.is_tombstone());
    // A put after the delete brings the entry back with only what it wrote.
    let mut back = deleted.clone();
    back.apply_write(
        m,
        &Op::Put(Entry { vector: vec![2.0], metadata: Metadata::new() }),
        &deleted.context(),
        stamp(14, 3, 1),
    )
    .unwrap();
    assert_eq!(back.visible(), Visible::One(Entry { vector: vec![2.0], metadata: Metadata::new() }));
    assert!(!back.is_tombstone());
}

#[test]
fn patches_need_crdt_mode_and_shapes_must_match() {
    let lww = ConflictMode::LastWriteWins;
    let mut st = KeyState::empty(lww);
    let patch = Op::Patch { set: Metadata::new(), remove: Vec::new() };
    assert_eq!(st.apply_write(lww, &patch, &Context::default(), stamp(1, 1, 1)), Err(StateError::WrongShape));
    let crdt = written(ConflictMode::CrdtMap, Op::Delete, &Context::default(), stamp(1, 1, 1));
    assert_eq!(st.merge(&crdt, lww), Err(StateError::WrongShape));
}

#[test]
fn validation_rejects_what_a_replica_would_never_produce() {
    let m = ConflictMode::MultiValue;
    let good = written(m, Op::Put(entry(1.0)), &Context::default(), stamp(1, 1, 1));
    assert_eq!(good.validate(m, 8, 4), Ok(()));
    assert_eq!(good.validate(ConflictMode::CrdtMap, 8, 4), Err(StateError::WrongShape));
    assert_eq!(good.validate(m, 1, 4), Err(StateError::BadVector));
    let mut unseen = good.clone();
    unseen.clock = VersionVector::new();
    assert_eq!(unseen.validate(m, 8, 4), Err(StateError::BadClock));
    let mut nan = good.clone();
    if let Body::Versions(vs) = &mut nan.body {
        vs[0].value = Some(Entry { vector: vec![f32::NAN], metadata: Metadata::new() });
    }
    assert_eq!(nan.validate(m, 8, 4), Err(StateError::BadVector));
    let mut twice = good.clone();
    if let Body::Versions(vs) = &mut twice.body {
        vs.push(vs[0].clone());
    }
    assert_eq!(twice.validate(m, 8, 4), Err(StateError::BadVersions));
    assert_eq!(twice.validate(m, 8, 1), Err(StateError::TooMany));
    let lww = ConflictMode::LastWriteWins;
    assert_eq!(KeyState::empty(lww).validate(lww, 8, 4), Err(StateError::BadVersions));
    let empty = KeyState::empty(m);
    assert_eq!(empty.validate(m, 8, 4), Ok(()), "a multi-value state may have replaced everything it saw");
    assert!(empty.is_tombstone() && empty.visible() == Visible::Absent);
}

#[test]
fn digests_tell_states_apart_and_agree_on_equal_ones() {
    let m = ConflictMode::MultiValue;
    let a = written(m, Op::Put(entry(1.0)), &Context::default(), stamp(1, 1, 1));
    let b = written(m, Op::Put(entry(1.5)), &Context::default(), stamp(1, 1, 1));
    assert_eq!(state_digest(&a), state_digest(&a.clone()));
    assert_ne!(state_digest(&a), state_digest(&b));
    let mut c = a.clone();
    c.clock.insert(Dot { actor: actor(9), counter: 1 });
    assert_ne!(state_digest(&a), state_digest(&c), "the clock is part of the state");
}

// ----- histories: every merge is a join, and the join is what each mode promises -----

#[derive(Clone, Debug)]
enum Step {
    Write { replica: usize, op: u8, with_ctx: bool, field: u8, value: u8, wait_ms: u8 },
    Sync { from: usize, to: usize },
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (0usize..3, 0u8..6, any::<bool>(), 0u8..3, any::<u8>(), 0u8..3).prop_map(
            |(replica, op, with_ctx, field, value, wait_ms)| Step::Write {
                replica,
                op,
                with_ctx,
                field,
                value,
                wait_ms
            }
        ),
        (0usize..3, 0usize..3).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    proptest::collection::vec(step, 1..40)
}

struct Written {
    stamp: Stamp,
    ctx: VersionVector,
    op: Op,
}

/// Runs a history on three replicas of one key; returns every state seen along the way, the
/// three final states, and every write made.
fn run(mode: ConflictMode, steps: &[Step]) -> (Vec<KeyState>, Vec<KeyState>, Vec<Written>) {
    let mut states: Vec<KeyState> = (0..3).map(|_| KeyState::empty(mode)).collect();
    let mut clocks: Vec<HlcClock> = (0..3).map(|_| HlcClock::new(u64::MAX)).collect();
    let mut counters = [0u64; 3];
    let mut now_ms = 0u64;
    let mut seen = Vec::new();
    let mut writes = Vec::new();
    for step in steps {
        match *step {
            Step::Write { replica, op, with_ctx, field, value, wait_ms } => {
                now_ms += u64::from(wait_ms);
                let op = match (mode, op) {
                    (_, 0) => Op::Delete,
                    (ConflictMode::CrdtMap, 1) => {
                        let mut set = Metadata::new();
                        set.insert(alloc::format!("f{field}"), Scalar::Int(i64::from(value)));
                        Op::Patch { set, remove: vec![alloc::format!("f{}", (field + 1) % 3)] }
                    }
                    _ => {
                        let mut metadata = Metadata::new();
                        metadata.insert(alloc::format!("f{field}"), Scalar::Int(i64::from(value)));
                        Op::Put(Entry { vector: vec![f32::from(value)], metadata })
                    }
                };
                let ctx = if with_ctx { states[replica].context() } else { Context::default() };
                let _ = clocks[replica].observe(Instant::ZERO, ctx.ts);
                let ts = clocks[replica].tick(Instant::from_nanos(now_ms * 1_000_000));
                counters[replica] += 1;
                let s = Stamp { ts, dot: Dot { actor: actor(replica as u64 + 1), counter: counters[replica] } };
                states[replica].apply_write(mode, &op, &ctx, s).unwrap();
                writes.push(Written { stamp: s, ctx: ctx.clock, op });
                seen.push(states[replica].clone());
            }
            Step::Sync { from, to } => {
                let incoming = states[from].clone();
                let _ = clocks[to].observe(Instant::ZERO, incoming.max_ts());
                let empty = incoming.clock.is_empty();
                if !empty {
                    states[to].merge(&incoming, mode).unwrap();
                }
                seen.push(states[to].clone());
            }
        }
    }
    (seen, states, writes)
}

fn join(mode: ConflictMode, a: &KeyState, b: &KeyState) -> KeyState {
    if a.clock.is_empty() {
        return b.clone();
    }
    let mut j = a.clone();
    if !b.clock.is_empty() {
        j.merge(b, mode).unwrap();
    }
    j
}

fn modes() -> impl Strategy<Value = ConflictMode> {
    prop_oneof![Just(ConflictMode::LastWriteWins), Just(ConflictMode::MultiValue), Just(ConflictMode::CrdtMap)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn merge_is_commutative_associative_and_idempotent(
        mode in modes(),
        steps in steps(),
        picks in proptest::collection::vec(any::<proptest::sample::Index>(), 3),
    ) {
        let (seen, _, _) = run(mode, &steps);
        let pick = |i: usize| seen[picks[i].index(seen.len())].clone();
        let (a, b, c) = (pick(0), pick(1), pick(2));
        prop_assert_eq!(join(mode, &a, &b), join(mode, &b, &a));
        prop_assert_eq!(join(mode, &join(mode, &a, &b), &c), join(mode, &a, &join(mode, &b, &c)));
        prop_assert_eq!(join(mode, &a, &a), a.clone());
        let mut twice = join(mode, &a, &b);
        let again = if b.clock.is_empty() { Merged { changed: false, conflict: None } } else { twice.merge(&b, mode).unwrap() };
        prop_assert!(!again.changed, "merging what was merged changes nothing");
        prop_assert_eq!(state_digest(&join(mode, &a, &b)), state_digest(&join(mode, &b, &a)));
    }

    #[test]
    fn the_join_of_all_replicas_is_what_the_mode_promises(mode in modes(), steps in steps()) {
        let (_, finals, writes) = run(mode, &steps);
        let all = join(mode, &join(mode, &finals[0], &finals[1]), &finals[2]);
        if writes.is_empty() {
            return Ok(());
        }
        for w in &writes {
            prop_assert!(all.clock.contains(w.stamp.dot), "every write is seen by the join");
        }
        match (mode, &all.body) {
            (ConflictMode::MultiValue, Body::Versions(vs)) => {
                // Survivors are exactly the writes no later writer had seen: nothing is lost
                // silently, nothing replaced survives.
                let expected: BTreeSet<Dot> = writes
                    .iter()
                    .filter(|w| !writes.iter().any(|o| o.ctx.contains(w.stamp.dot)))
                    .map(|w| w.stamp.dot)
                    .collect();
                let got: BTreeSet<Dot> = vs.iter().map(|v| v.stamp.dot).collect();
                prop_assert_eq!(got, expected);
            }
            (ConflictMode::LastWriteWins, Body::Versions(vs)) => {
                let max = writes.iter().map(|w| w.stamp).max();
                prop_assert_eq!(vs.len(), 1);
                prop_assert_eq!(Some(vs[0].stamp), max);
            }
            (ConflictMode::CrdtMap, Body::Fields(f)) => {
                let deleted = writes.iter().filter(|w| w.op == Op::Delete).map(|w| w.stamp).max();
                prop_assert_eq!(f.deleted, deleted);
                let vector = writes.iter().filter(|w| matches!(w.op, Op::Put(_))).map(|w| w.stamp).max();
                prop_assert_eq!(f.vector.as_ref().map(|r| r.stamp), vector);
                let mut fields: BTreeMap<String, Stamp> = BTreeMap::new();
                for w in &writes {
                    let names: Vec<String> = match &w.op {
                        Op::Put(e) => e.metadata.keys().cloned().collect(),
                        Op::Patch { set, remove } => set.keys().cloned().chain(remove.iter().cloned()).collect(),
                        Op::Delete => Vec::new(),
                    };
                    for n in names {
                        let e = fields.entry(n).or_insert(w.stamp);
                        *e = (*e).max(w.stamp);
                    }
                }
                let got: BTreeMap<String, Stamp> = f.fields.iter().map(|(k, r)| (k.clone(), r.stamp)).collect();
                prop_assert_eq!(got, fields, "no field is lost to a concurrent update");
            }
            _ => prop_assert!(false, "shape changed"),
        }
        for s in &finals {
            if !s.clock.is_empty() {
                prop_assert_eq!(s.validate(mode, 8, 64), Ok(()));
            }
        }
    }
}
