//! Shared drivers for the fuzz targets and their smoke tests (feature `testkit`), so both run
//! exactly the same checks.

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use super::{Action, Addr, Body, Config, Digest, Meta, Packet, Swim, Update};
use crate::machine::Machine;
use crate::wire::{self, Envelope, MAGIC, PROTOCOL_VERSION};
use crate::{Instant, NodeId};

/// The cluster id the drivers use.
pub const CLUSTER: u64 = 0x5357_0001;
/// The packet limit the drivers use.
pub const LIMIT: usize = 1400;

/// Decoding is total, and whatever decodes re-encodes canonically to the same packet.
pub fn check_decode(data: &[u8]) {
    check_one(data);
    let mut framed = Vec::with_capacity(data.len() + 3);
    framed.extend_from_slice(&MAGIC);
    framed.push(PROTOCOL_VERSION);
    framed.extend_from_slice(data);
    check_one(&framed);
}

fn check_one(bytes: &[u8]) {
    let Ok(env) = wire::decode::<Packet>(bytes, CLUSTER, LIMIT) else { return };
    let again = wire::encode(CLUSTER, env.from, &env.body, LIMIT).expect("a decoded packet re-encodes");
    assert!(again.len() <= bytes.len(), "re-encoding grew from {} to {} bytes", bytes.len(), again.len());
    let back: Envelope<Packet> = wire::decode(&again, CLUSTER, LIMIT).expect("a re-encoded packet decodes");
    assert_eq!(back, env, "round trip changed the packet");
}

fn addr(i: u8) -> Addr {
    Addr::v4(10, 1, 0, i, 7946)
}

/// Feeds a member a few real members, then an arbitrary sequence of datagrams and timer
/// firings decoded from `data`. Never panics; invariants hold after every step; every packet
/// it sends fits the limit and decodes.
pub fn drive(data: &[u8]) {
    let mut cfg = Config::lan(NodeId(1), CLUSTER, addr(1));
    cfg.seeds = vec![addr(2)];
    let Ok(mut s) = Swim::new(cfg, 1, 7, Instant::ZERO) else { return };
    let mut now = Instant::ZERO;
    // Three real members, so probes, indirect probes and push-pulls have someone to go to.
    for i in 2..5u8 {
        let u = Update::Alive { id: NodeId(u64::from(i)), gen: 1, inc: 0, addr: addr(i), meta: Meta::default() };
        let p = Packet { gen: 1, digest: Digest::default(), body: Body::Gossip, gossip: vec![u] };
        if let Ok(bytes) = wire::encode(CLUSTER, NodeId(u64::from(i)), &p, LIMIT) {
            let _ = s.handle_packet(now, addr(i), &bytes);
        }
    }
    drain(&mut s);
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 4 {
            0 => {
                let step = rest.first().copied().unwrap_or(1);
                rest = rest.get(1..).unwrap_or(&[]);
                now = now.saturating_add(Duration::from_millis(u64::from(step) * 20));
                s.handle_timeout(now);
            }
            1 => {
                if let Some(t) = s.poll_timeout() {
                    now = now.max(t);
                    s.handle_timeout(now);
                }
            }
            _ => {
                // A datagram: raw (op 2) or behind a valid header (op 3), from a known address.
                let len = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
                let body = rest.get(1..1 + len).unwrap_or(&[]);
                rest = rest.get(1 + len..).unwrap_or(&[]);
                let from = addr(2 + op % 3);
                if op % 4 == 2 {
                    let _ = s.handle_packet(now, from, body);
                } else {
                    let mut framed = vec![MAGIC[0], MAGIC[1], PROTOCOL_VERSION];
                    framed.extend_from_slice(body);
                    let _ = s.handle_packet(now, from, &framed);
                }
            }
        }
        s.check_invariants();
        drain(&mut s);
    }
}

fn drain(s: &mut Swim) {
    while let Some(a) = s.poll_action() {
        if let Action::Send { packet, .. } = a {
            assert!(packet.len() <= LIMIT, "sent a {}-byte packet", packet.len());
            assert!(wire::decode::<Packet>(&packet, CLUSTER, LIMIT).is_ok(), "sent a packet that does not decode");
        }
    }
}
