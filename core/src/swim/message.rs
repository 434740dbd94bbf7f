//! SWIM packets: one datagram each, inside the [`wire`](crate::wire) envelope.

use alloc::vec::Vec;
use serde::{Deserialize, Serialize};

use super::member::{Addr, Member, SharedMeta, State, Version};
use crate::wire::{put_varint, varint_len, Envelope, HeadWriter, Reader, WireError};
use crate::{fnv1a64, NodeId};

/// A gossip update: one claim about one member, piggybacked on any packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// The member is alive at this incarnation, with this address and metadata.
    Alive {
        /// The member.
        id: NodeId,
        /// Its generation.
        gen: u64,
        /// Its incarnation.
        inc: u64,
        /// Its SWIM address.
        addr: Addr,
        /// Its metadata.
        meta: SharedMeta,
    },
    /// `by` suspects the member at this incarnation.
    Suspect {
        /// The member.
        id: NodeId,
        /// Its generation.
        gen: u64,
        /// Its incarnation.
        inc: u64,
        /// Who suspects it (each distinct suspecter confirms the suspicion).
        by: NodeId,
    },
    /// The member was declared down.
    Down {
        /// The member.
        id: NodeId,
        /// Its generation.
        gen: u64,
        /// Its incarnation.
        inc: u64,
    },
    /// The member left gracefully.
    Left {
        /// The member.
        id: NodeId,
        /// Its generation.
        gen: u64,
        /// Its incarnation.
        inc: u64,
    },
}

impl Update {
    /// The member the update is about.
    pub fn id(&self) -> NodeId {
        match self {
            Update::Alive { id, .. }
            | Update::Suspect { id, .. }
            | Update::Down { id, .. }
            | Update::Left { id, .. } => *id,
        }
    }

    /// The claim's version.
    pub fn version(&self) -> Version {
        let (gen, inc, state) = match self {
            Update::Alive { gen, inc, .. } => (*gen, *inc, State::Alive),
            Update::Suspect { gen, inc, .. } => (*gen, *inc, State::Suspect),
            Update::Down { gen, inc, .. } => (*gen, *inc, State::Down),
            Update::Left { gen, inc, .. } => (*gen, *inc, State::Left),
        };
        Version { gen, inc, state }
    }

    /// The update that states what `m` records.
    pub fn of(m: &Member, by: NodeId) -> Update {
        let (id, gen, inc) = (m.id, m.version.gen, m.version.inc);
        match m.version.state {
            State::Alive => Update::Alive { id, gen, inc, addr: m.addr, meta: m.meta.clone() },
            State::Suspect => Update::Suspect { id, gen, inc, by },
            State::Down => Update::Down { id, gen, inc },
            State::Left => Update::Left { id, gen, inc },
        }
    }
}

impl Update {
    /// Appends this update's postcard encoding, written by hand.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let (variant, id, gen, inc) = match self {
            Update::Alive { id, gen, inc, .. } => (0, id, gen, inc),
            Update::Suspect { id, gen, inc, .. } => (1, id, gen, inc),
            Update::Down { id, gen, inc } => (2, id, gen, inc),
            Update::Left { id, gen, inc } => (3, id, gen, inc),
        };
        out.push(variant);
        put_varint(out, id.0);
        put_varint(out, *gen);
        put_varint(out, *inc);
        match self {
            Update::Alive { addr, meta, .. } => {
                addr.write(out);
                meta.write(out);
            }
            Update::Suspect { by, .. } => put_varint(out, by.0),
            Update::Down { .. } | Update::Left { .. } => {}
        }
    }

    /// The length of [`Update::write`]'s output, without writing it.
    pub(crate) fn encoded_len(&self) -> usize {
        let v = self.version();
        let tail = match self {
            Update::Alive { addr, meta, .. } => addr.encoded_len() + meta.encoded_len(),
            Update::Suspect { by, .. } => varint_len(by.0),
            Update::Down { .. } | Update::Left { .. } => 0,
        };
        1 + varint_len(self.id().0) + varint_len(v.gen) + varint_len(v.inc) + tail
    }

    /// Reads an update as postcard decodes one.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Update, WireError> {
        let variant = r.varint_u32()?;
        if variant > 3 {
            return Err(WireError::Malformed);
        }
        let (id, gen, inc) = (NodeId(r.varint_u64()?), r.varint_u64()?, r.varint_u64()?);
        Ok(match variant {
            0 => Update::Alive { id, gen, inc, addr: Addr::read(r)?, meta: SharedMeta::read(r)? },
            1 => Update::Suspect { id, gen, inc, by: NodeId(r.varint_u64()?) },
            2 => Update::Down { id, gen, inc },
            _ => Update::Left { id, gen, inc },
        })
    }
}

/// A compact fingerprint of a view: how many members are alive or suspect, and a hash of their
/// ids, generations and incarnations. Two members whose digests keep differing exchange full
/// state, which repairs whatever gossip failed to deliver (a lost refutation, say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// Alive and suspect members, this one included.
    pub live: u32,
    /// XOR over those members of a hash of `(id, generation, incarnation)`.
    pub hash: u32,
}

impl Digest {
    /// The digest of a view whose live members (this one included) are `(id, gen, inc)`.
    pub fn of(live: impl IntoIterator<Item = (NodeId, u64, u64)>) -> Digest {
        live.into_iter().fold(Digest::default(), |d, (id, gen, inc)| Digest {
            live: d.live.saturating_add(1),
            hash: d.hash ^ member_hash(id, gen, inc),
        })
    }
}

/// The hash a live member contributes to a [`Digest`]: FNV-1a of `id`, `gen` and `inc`, folded
/// to 32 bits.
pub fn member_hash(id: NodeId, gen: u64, inc: u64) -> u32 {
    let mut buf = [0u8; 24];
    buf[..8].copy_from_slice(&id.0.to_le_bytes());
    buf[8..16].copy_from_slice(&gen.to_le_bytes());
    buf[16..].copy_from_slice(&inc.to_le_bytes());
    let h = fnv1a64(&buf);
    (h ^ (h >> 32)) as u32
}

/// How many sync buckets a view is split into for [`Body::Summary`]: 64, so a set of buckets
/// is one `u64` and a summary (about 5 bytes a bucket) fits any allowed packet.
pub const SYNC_BUCKETS: usize = 64;

/// The sync bucket of member `id`: the top six bits of a fixed mix of the id, so buckets are
/// even whatever the ids (sequential ones included).
pub fn sync_bucket(id: NodeId) -> usize {
    let mut z = id.0 ^ 0x5157_494d_5359_4e43;
    z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
    z = (z ^ (z >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    ((z ^ (z >> 33)) >> 58) as usize
}

/// True if `id`'s sync bucket is in the set `buckets`.
pub fn in_buckets(buckets: u64, id: NodeId) -> bool {
    buckets & (1 << sync_bucket(id)) != 0
}

/// What a packet asks or answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A direct probe; answered by `Ack` with the same `seq`.
    Ping {
        /// Matches the answer to the probe.
        seq: u32,
        /// The member the prober thinks it is probing.
        target: NodeId,
    },
    /// The answer to a `Ping`, possibly forwarded by an indirect prober.
    Ack {
        /// The probe answered.
        seq: u32,
    },
    /// Asks the receiver to probe `target` and forward its ack (Lifeguard: or send a nack).
    PingReq {
        /// The requester's probe.
        seq: u32,
        /// The member to probe.
        target: NodeId,
        /// Where it listens.
        addr: Addr,
    },
    /// An indirect prober did not hear from the target in time (Lifeguard).
    Nack {
        /// The requester's probe.
        seq: u32,
    },
    /// Asks the receiver to repair the sync buckets whose hashes differ from its own: it starts
    /// a [`Body::PushPull`] limited to those buckets, so two views that differ in a few
    /// members exchange a few buckets' records, not the whole membership.
    Summary {
        /// Identifies the request.
        seq: u32,
        /// For each of the [`SYNC_BUCKETS`] buckets, the XOR of [`member_hash`] over the
        /// sender's alive and suspect members in it (the sender included).
        buckets: Vec<u32>,
    },
    /// One chunk of a state exchange. A request is answered with the responder's state for the
    /// same buckets.
    PushPull {
        /// Identifies the exchange.
        seq: u32,
        /// True for the answer, false for the request.
        reply: bool,
        /// True when the requester is joining.
        join: bool,
        /// This chunk's number.
        part: u16,
        /// How many chunks the exchange has.
        parts: u16,
        /// The [sync buckets](sync_bucket) exchanged, one bit each; `u64::MAX` is the whole
        /// state (joins, periodic exchanges).
        buckets: u64,
        /// Members in this chunk; each stands alone, so lost chunks lose only their members.
        members: Vec<Member>,
    },
    /// Gossip only.
    Gossip,
}

/// The kinds of [`Body`], for counting traffic by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// [`Body::Ping`].
    Ping,
    /// [`Body::Ack`].
    Ack,
    /// [`Body::PingReq`].
    PingReq,
    /// [`Body::Nack`].
    Nack,
    /// [`Body::PushPull`].
    PushPull,
    /// [`Body::Gossip`].
    Gossip,
    /// [`Body::Summary`].
    Summary,
}

impl Kind {
    /// How many kinds there are.
    pub const COUNT: usize = 7;
    /// Every kind, in index order.
    pub const ALL: [Kind; Kind::COUNT] =
        [Kind::Ping, Kind::Ack, Kind::PingReq, Kind::Nack, Kind::PushPull, Kind::Gossip, Kind::Summary];

    /// A short lowercase name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ping => "ping",
            Kind::Ack => "ack",
            Kind::PingReq => "ping_req",
            Kind::Nack => "nack",
            Kind::PushPull => "push_pull",
            Kind::Gossip => "gossip",
            Kind::Summary => "summary",
        }
    }
}

impl Body {
    /// This body's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Ping { .. } => Kind::Ping,
            Body::Ack { .. } => Kind::Ack,
            Body::PingReq { .. } => Kind::PingReq,
            Body::Nack { .. } => Kind::Nack,
            Body::PushPull { .. } => Kind::PushPull,
            Body::Gossip => Kind::Gossip,
            Body::Summary { .. } => Kind::Summary,
        }
    }
}

/// One SWIM datagram's body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packet {
    /// The sender's generation.
    pub gen: u64,
    /// The sender's view digest.
    pub digest: Digest,
    /// The request or answer.
    pub body: Body,
    /// Piggybacked updates, newest first.
    pub gossip: Vec<Update>,
}

/// A [`Packet`] without its trailing gossip: what a [`SeqWriter`](crate::wire::SeqWriter) writes
/// before the sender appends the updates that fit the packet limit.
#[derive(Serialize)]
pub(crate) struct PacketHead<'a> {
    /// As [`Packet::gen`].
    pub gen: u64,
    /// As [`Packet::digest`].
    pub digest: Digest,
    /// As [`Packet::body`].
    pub body: &'a Body,
}

// Postcard writes an enum's variant as its index in declaration order.
const PING: u32 = 0;
const ACK: u32 = 1;
const NACK: u32 = 3;
const GOSSIP: u32 = 6;

impl PacketHead<'_> {
    /// Writes the head as postcard would, by hand for the bodies every probe round sends
    /// (ping, ack, nack, gossip) and through postcard for the rest.
    pub(crate) fn write(&self, w: &mut HeadWriter) -> Result<(), WireError> {
        w.varint(self.gen);
        w.varint(u64::from(self.digest.live));
        w.varint(u64::from(self.digest.hash));
        match *self.body {
            Body::Ping { seq, target } => {
                w.varint(u64::from(PING));
                w.varint(u64::from(seq));
                w.varint(target.0);
            }
            Body::Ack { seq } => {
                w.varint(u64::from(ACK));
                w.varint(u64::from(seq));
            }
            Body::Nack { seq } => {
                w.varint(u64::from(NACK));
                w.varint(u64::from(seq));
            }
            Body::Gossip => w.varint(u64::from(GOSSIP)),
            ref other => w.value(other)?,
        }
        Ok(())
    }
}

/// Decodes a SWIM datagram for `cluster_id`: the same result as
/// [`wire::decode::<Packet>`](crate::wire::decode) for every input, with the fields of the packets
/// every probe round carries (the envelope, ping, ack, nack, gossip, the updates) read by
/// hand and the rest by postcard.
pub fn decode_packet(bytes: &[u8], cluster_id: u64, max_bytes: usize) -> Result<Envelope<Packet>, WireError> {
    let (got, from, mut r) = Reader::open(bytes, max_bytes)?;
    let gen = r.varint_u64()?;
    let digest = Digest { live: r.varint_u32()?, hash: r.varint_u32()? };
    let at_body = r;
    let body = match r.varint_u32()? {
        PING => Body::Ping { seq: r.varint_u32()?, target: NodeId(r.varint_u64()?) },
        ACK => Body::Ack { seq: r.varint_u32()? },
        NACK => Body::Nack { seq: r.varint_u32()? },
        GOSSIP => Body::Gossip,
        _ => {
            r = at_body;
            r.value::<Body>()?
        }
    };
    let n = r.varint_usize()?;
    // Every update takes at least four bytes, so the input bounds the allocation.
    let mut gossip = Vec::with_capacity(n.min(r.rest().len() / 4));
    for _ in 0..n {
        gossip.push(Update::read(&mut r)?);
    }
    r.finish(got, cluster_id)?;
    Ok(Envelope { cluster_id, from, body: Packet { gen, digest, body, gossip } })
}

impl Packet {
    /// Checks what postcard cannot: counters in range and chunk numbers consistent.
    pub fn validate(&self) -> bool {
        let ok = |v: Version| v.gen <= Version::MAX_VALID && v.inc <= Version::MAX_VALID;
        if self.gen > Version::MAX_VALID || !self.gossip.iter().all(|u| ok(u.version())) {
            return false;
        }
        match &self.body {
            Body::PushPull { part, parts, members, buckets, .. } => {
                part < parts
                    && *buckets != 0
                    && members.iter().all(|m| ok(m.version) && m.id != NodeId::NONE && in_buckets(*buckets, m.id))
            }
            Body::Summary { buckets, .. } => buckets.len() == SYNC_BUCKETS,
            _ => true,
        }
    }
}
