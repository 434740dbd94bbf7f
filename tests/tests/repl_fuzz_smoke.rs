//! Short proptest versions of the replication cargo-fuzz targets (`decode_replication_message`,
//! `handle_replication_messages`): both call the same drivers in
//! `quorate_core::replication::testkit`. Arbitrary bytes rarely decode, so the last test also
//! feeds well-formed messages with wild fields: forged states, stale and unknown sessions,
//! out-of-range tree levels, leaves and parts.

use proptest::prelude::*;
use quorate_core::replication::state::{Body, FieldMap, Register, Version};
use quorate_core::replication::testkit::{check_decode, drive};
use quorate_core::replication::{
    Actor, Dot, Entry, EntryId, Hlc, KeyState, Message, Metadata, Origin, Stamp, VersionVector,
};
use quorate_core::NodeId;

fn wild() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4, Just(u64::MAX), Just(1 << 40), any::<u64>()]
}

fn stamp() -> impl Strategy<Value = Stamp> {
    (0u64..4, 0u32..3, wild(), 0u64..20_000, 0u32..3).prop_map(|(node, life, counter, wall_ms, logical)| Stamp {
        ts: Hlc { wall_ms, logical },
        dot: Dot { actor: Actor { node: NodeId(node), life }, counter },
    })
}

fn state() -> impl Strategy<Value = KeyState> {
    let clock = proptest::collection::vec((0u64..4, 0u32..3, wild()), 0..4).prop_map(|v| {
        VersionVector::from_pairs(v.into_iter().map(|(n, l, c)| (Actor { node: NodeId(n), life: l }, c)))
    });
    let version =
        (stamp(), any::<bool>(), proptest::collection::vec(-2.0f32..2.0, 0..3)).prop_map(|(stamp, live, vector)| {
            Version { stamp, value: live.then(|| Entry { vector, metadata: Metadata::new() }) }
        });
    let versions = proptest::collection::vec(version, 0..3).prop_map(Body::Versions);
    let fields = (proptest::option::of(stamp()), proptest::option::of(stamp())).prop_map(|(v, d)| {
        Body::Fields(FieldMap {
            vector: v.map(|stamp| Register { stamp, value: vec![1.0] }),
            fields: Default::default(),
            deleted: d,
        })
    });
    (clock, prop_oneof![versions, fields]).prop_map(|(clock, body)| KeyState { clock, body })
}

fn states() -> impl Strategy<Value = Vec<(EntryId, KeyState)>> {
    proptest::collection::vec((0u64..8, state()), 0..2)
        .prop_map(|v| v.into_iter().map(|(k, s)| (EntryId(k), s)).collect::<Vec<_>>())
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (wild(), 0u16..3, 0u8..4, states()).prop_map(|(req, part, o, states)| {
            let origin = [Origin::Client, Origin::Repair, Origin::Hint, Origin::Sync][usize::from(o)];
            Message::Write { req, part, origin, states }
        }),
        (wild(), 0u16..3).prop_map(|(req, part)| Message::WriteAck { req, part }),
        (wild(), 0u64..8).prop_map(|(req, id)| Message::Read { req, id: EntryId(id) }),
        (wild(), 0u64..8, proptest::option::of(state())).prop_map(|(req, id, state)| Message::ReadReply {
            req,
            id: EntryId(id),
            state
        }),
        (wild(), 0u32..4, wild(), 0u8..3, proptest::collection::vec(0u32..40, 0..3))
            .prop_map(|(session, rid, root, level, parents)| Message::SyncTree { session, rid, root, level, parents }),
        (wild(), 0u32..4, wild(), proptest::collection::vec(wild(), 0..20))
            .prop_map(|(session, rid, root, children)| Message::SyncTreeReply { session, rid, root, children }),
        (wild(), 0u32..4, proptest::collection::vec(0u32..20, 0..4), proptest::option::of(0u64..8)).prop_map(
            |(session, rid, leaves, after)| Message::SyncKeys { session, rid, leaves, after: after.map(EntryId) }
        ),
        (wild(), 0u32..4, proptest::collection::vec((0u64..8, wild()), 0..4), any::<bool>()).prop_map(
            |(session, rid, keys, more)| Message::SyncKeysReply {
                session,
                rid,
                keys: keys.into_iter().map(|(k, d)| (EntryId(k), d)).collect(),
                more
            }
        ),
        (wild(), 0u32..4, proptest::collection::vec((0u64..8, state()), 0..4)).prop_map(|(session, rid, ids)| {
            // The clock of a (possibly forged) state: canonical or not, dominating or not.
            Message::SyncPull { session, rid, ids: ids.into_iter().map(|(k, s)| (EntryId(k), s.clock)).collect() }
        }),
        (wild(), 0u32..4, 0u32..20, 0u32..20, proptest::option::of(0u64..8)).prop_map(
            |(session, rid, first, end, after)| Message::SyncPullRange {
                session,
                rid,
                first,
                end,
                after: after.map(EntryId)
            }
        ),
        (wild(), 0u32..4, 0u16..3, 0u16..3, states(), any::<bool>()).prop_map(
            |(session, rid, part, parts, states, more)| {
                Message::SyncStates { session, rid, part, parts, states, more }
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replication_fuzz_smoke_decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_decode(&bytes);
    }

    #[test]
    fn replication_fuzz_smoke_arbitrary_input_never_breaks_a_replica(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        drive(&bytes);
    }

    #[test]
    fn replication_fuzz_smoke_forged_messages_never_break_a_replica(
        mode in 0u8..3,
        steps in proptest::collection::vec((message(), 0u8..3, 0u8..3, 0u8..8), 1..16),
    ) {
        let mut data = vec![mode];
        for (msg, to, from, extra) in steps {
            let Ok(body) = postcard::to_allocvec(&msg) else { continue };
            let mut framed = vec![b'Q', b'R', 1];
            framed.extend_from_slice(&postcard::to_allocvec(&(0x5245_504cu64, NodeId(u64::from(from) + 1))).unwrap());
            framed.extend_from_slice(&body);
            check_decode(&framed[3..]);
            if body.len() > 255 {
                continue;
            }
            // op 7: a datagram behind a valid header, from replica `from` to replica `to`.
            data.extend_from_slice(&[7, to | (from << 2), body.len() as u8]);
            data.extend_from_slice(&body);
            // Then a client write or a little time, so real traffic mixes with the forgeries.
            data.extend_from_slice(&[[0, 2, 3, 1, 0, 3, 2, 0][usize::from(extra)], extra.wrapping_mul(37)]);
        }
        drive(&data);
    }
}
