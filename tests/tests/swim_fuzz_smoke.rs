//! Short proptest versions of the SWIM cargo-fuzz targets (`decode_swim_packet`,
//! `handle_swim_packets`): both call the same drivers in `quorate_core::swim::testkit`.
//! Arbitrary bytes rarely decode, so the second also feeds well-formed packets with wild fields.

use proptest::prelude::*;
use quorate_core::swim::testkit::{check_decode, drive, CLUSTER, LIMIT};
use quorate_core::swim::{Addr, Body, Digest, Packet, Update};
use quorate_core::{wire, NodeId};

fn wild() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4, Just(u64::MAX), Just(1 << 62), any::<u64>()]
}

fn update() -> impl Strategy<Value = Update> {
    (0u8..4, 0u64..7, wild(), wild(), 0u64..7, any::<u8>()).prop_map(|(k, id, gen, inc, by, port)| {
        let id = NodeId(id);
        match k {
            0 => Update::Alive { id, gen, inc, addr: Addr::v4(10, 1, 0, port, 7946), meta: Default::default() },
            1 => Update::Suspect { id, gen, inc, by: NodeId(by) },
            2 => Update::Down { id, gen, inc },
            _ => Update::Left { id, gen, inc },
        }
    })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<u32>(), 0u64..7).prop_map(|(seq, t)| Body::Ping { seq, target: NodeId(t) }),
        (0u32..64).prop_map(|seq| Body::Ack { seq }),
        (0u32..64).prop_map(|seq| Body::Nack { seq }),
        (any::<u32>(), 0u64..7, any::<u8>()).prop_map(|(seq, t, p)| Body::PingReq {
            seq,
            target: NodeId(t),
            addr: Addr::v4(10, 1, 0, p, 7946)
        }),
        (any::<u32>(), any::<bool>(), any::<bool>(), 0u16..3, 0u16..3, any::<u64>()).prop_map(
            |(seq, reply, join, part, parts, buckets)| Body::PushPull {
                seq,
                reply,
                join,
                part,
                parts,
                buckets,
                members: Vec::new()
            }
        ),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 60..68))
            .prop_map(|(seq, buckets)| Body::Summary { seq, buckets }),
        Just(Body::Gossip),
    ]
}

fn packet() -> impl Strategy<Value = (u64, Packet)> {
    (0u64..7, wild(), body(), proptest::collection::vec(update(), 0..4))
        .prop_map(|(from, gen, body, gossip)| (from, Packet { gen, digest: Digest::default(), body, gossip }))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn swim_fuzz_smoke_decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_decode(&bytes);
    }

    #[test]
    fn swim_fuzz_smoke_arbitrary_input_never_breaks_a_member(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        drive(&bytes);
    }

    #[test]
    fn swim_fuzz_smoke_forged_packets_never_break_a_member(
        packets in proptest::collection::vec((packet(), 0u8..40), 1..24),
    ) {
        let mut data = Vec::new();
        for ((from, p), wait) in packets {
            let Ok(bytes) = wire::encode(CLUSTER, NodeId(from), &p, LIMIT) else { continue };
            check_decode(&bytes[3..]);
            if bytes.len() > 255 {
                continue;
            }
            data.extend_from_slice(&[2, bytes.len() as u8]);
            data.extend_from_slice(&bytes);
            data.extend_from_slice(&[0, wait, 1]);
        }
        drive(&data);
    }
}
