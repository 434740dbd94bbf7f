//! Members, their metadata, and the precedence rule that merges what is heard about them.
//!
//! # Precedence
//! Every claim about a member names its **generation** (one per life of the process: a restart
//! or a renewal after being declared down starts a new one) and its **incarnation** (bumped by
//! the member itself to refute a suspicion or publish new metadata). A claim replaces what is
//! known when it is greater in this total order:
//! 1. a higher generation wins, whatever the states;
//! 2. within one generation, `Left` beats everything, then `Down` beats `Alive` and `Suspect`
//!    at any incarnation: both are final for that generation, so a stale `Alive` can never
//!    resurrect a dead life (no zombies); between two `Down`s or two `Left`s the higher
//!    incarnation wins (only to keep the order total);
//! 3. between `Alive` and `Suspect` of one generation, the higher incarnation wins, and at equal
//!    incarnations `Suspect` beats `Alive`.
//!
//! Because the order is total and merging keeps the greater claim, any order of delivery of the
//! same claims ends in the same view. One exception keeps that true: a live claim that carries no
//! address (`Suspect`) about a member known only from a tombstone without one is ignored, since
//! nobody could probe it; its own `Alive` brings it back.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cmp::Ordering;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wire::{put_str, put_varint, varint_len, Reader, WireError};
use crate::NodeId;

/// A member's transport address (IPv4 or IPv6 socket address).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr(pub SocketAddr);

impl Addr {
    /// An IPv4 address from its four octets and a port.
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> Addr {
        Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port))
    }

    /// `0.0.0.0:0`, used where an address is not known.
    pub const UNSPECIFIED: Addr = Addr::v4(0, 0, 0, 0, 0);
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<SocketAddr> for Addr {
    fn from(a: SocketAddr) -> Self {
        Addr(a)
    }
}

impl From<Addr> for SocketAddr {
    fn from(a: Addr) -> Self {
        a.0
    }
}

#[derive(Serialize, Deserialize)]
enum AddrRepr {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

impl Serialize for Addr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.ip() {
            IpAddr::V4(ip) => AddrRepr::V4(ip.octets(), self.0.port()),
            IpAddr::V6(ip) => AddrRepr::V6(ip.octets(), self.0.port()),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match AddrRepr::deserialize(d)? {
            AddrRepr::V4(o, port) => Addr(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port)),
            AddrRepr::V6(o, port) => Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port)),
        })
    }
}

// Hand-written postcard codecs for the values every gossip update carries. Postcard writes an
// enum as its variant index then its fields, an array as its bytes with no length, a string or
// map as its length then its contents; the tests pin these to postcard's own encoding.

impl Addr {
    /// Appends the postcard encoding of this address.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        match self.0.ip() {
            IpAddr::V4(ip) => {
                out.push(0);
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(1);
                out.extend_from_slice(&ip.octets());
            }
        }
        put_varint(out, u64::from(self.0.port()));
    }

    /// The length of [`Addr::write`]'s output.
    pub(crate) fn encoded_len(&self) -> usize {
        let ip = if self.0.is_ipv4() { 4 } else { 16 };
        1 + ip + varint_len(u64::from(self.0.port()))
    }

    /// Reads an address as postcard decodes one.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Addr, WireError> {
        let ip = match r.varint_u32()? {
            0 => {
                let mut o = [0u8; 4];
                o.copy_from_slice(r.bytes(4)?);
                IpAddr::V4(Ipv4Addr::from(o))
            }
            1 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(r.bytes(16)?);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return Err(WireError::Malformed),
        };
        Ok(Addr(SocketAddr::new(ip, r.varint_u16()?)))
    }
}

impl SharedMeta {
    /// Appends the postcard encoding of the metadata.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let Some(m) = &self.0 else {
            // Three empty strings, weight 0, two empty maps.
            out.extend_from_slice(&[0; 6]);
            return;
        };
        put_str(out, &m.region);
        put_str(out, &m.zone);
        put_str(out, &m.rack);
        put_varint(out, u64::from(m.weight));
        put_varint(out, m.addrs.len() as u64);
        for (k, a) in &m.addrs {
            put_str(out, k);
            a.write(out);
        }
        put_varint(out, m.tags.len() as u64);
        for (k, v) in &m.tags {
            put_str(out, k);
            put_str(out, v);
        }
    }

    /// The length of [`SharedMeta::write`]'s output.
    pub(crate) fn encoded_len(&self) -> usize {
        let Some(m) = &self.0 else { return 6 };
        let s = |s: &String| varint_len(s.len() as u64) + s.len();
        s(&m.region)
            + s(&m.zone)
            + s(&m.rack)
            + varint_len(u64::from(m.weight))
            + varint_len(m.addrs.len() as u64)
            + m.addrs.iter().map(|(k, a)| s(k) + a.encoded_len()).sum::<usize>()
            + varint_len(m.tags.len() as u64)
            + m.tags.iter().map(|(k, v)| s(k) + s(v)).sum::<usize>()
    }

    /// Reads metadata as postcard decodes a [`Meta`] (a repeated map key keeps its last value,
    /// as serde's map decoding does).
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<SharedMeta, WireError> {
        if r.rest().starts_with(&[0; 6]) {
            r.bytes(6)?;
            return Ok(SharedMeta(None));
        }
        let region = r.str()?.into();
        let zone = r.str()?.into();
        let rack = r.str()?.into();
        let weight = r.varint_u32()?;
        let mut addrs = BTreeMap::new();
        for _ in 0..r.varint_usize()? {
            let k = r.str()?.into();
            addrs.insert(k, Addr::read(r)?);
        }
        let mut tags = BTreeMap::new();
        for _ in 0..r.varint_usize()? {
            let k = r.str()?.into();
            tags.insert(k, r.str()?.into());
        }
        Ok(SharedMeta::new(Meta { region, zone, rack, weight, addrs, tags }))
    }
}

/// What a member publishes about itself: placement labels, capacity, other endpoints, tags.
///
/// A member changes it with [`Swim::set_meta`](super::Swim::set_meta), which bumps its
/// incarnation, so one `(generation, incarnation)` always names one metadata value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Meta {
    /// Region label (failure domain, widest).
    pub region: String,
    /// Zone label.
    pub zone: String,
    /// Rack label (failure domain, narrowest).
    pub rack: String,
    /// Relative capacity for placement; 0 means "do not place data here".
    pub weight: u32,
    /// Other endpoints by name (for example `"raft"`, `"client"`).
    pub addrs: BTreeMap<String, Addr>,
    /// Free-form labels.
    pub tags: BTreeMap<String, String>,
}

/// A member's liveness as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Answering probes, or not yet suspected.
    Alive,
    /// Missed a probe round; declared down when its suspicion timer runs out unless it refutes.
    Suspect,
    /// Declared failed. Final for this generation.
    Down,
    /// Left gracefully. Final for this generation.
    Left,
}

impl State {
    /// True for `Down` and `Left`, the states kept only as tombstones.
    pub fn is_terminal(self) -> bool {
        matches!(self, State::Down | State::Left)
    }
}

/// The version of a claim about a member: its generation, incarnation and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version {
    /// One per life of the member's process.
    pub gen: u64,
    /// Bumped by the member to refute a suspicion or to publish new metadata.
    pub inc: u64,
    /// The claimed state.
    pub state: State,
}

impl Version {
    /// Largest generation or incarnation accepted from the network, so a bump never overflows.
    pub const MAX_VALID: u64 = 1 << 62;

    /// Compares two claims under the precedence rule of this module.
    pub fn precedence(&self, other: &Version) -> Ordering {
        self.gen.cmp(&other.gen).then_with(|| {
            let rank = |v: &Version| match v.state {
                State::Left => (2, v.inc, 0),
                State::Down => (1, v.inc, 0),
                State::Suspect => (0, v.inc, 1),
                State::Alive => (0, v.inc, 0),
            };
            rank(self).cmp(&rank(other))
        })
    }

    /// True if this claim replaces `current`.
    pub fn supersedes(&self, current: &Version) -> bool {
        self.precedence(current) == Ordering::Greater
    }
}

/// Everything known about one member.
///
/// The metadata is shared: cloning a `Member` copies a pointer, and a member's records of others
/// point at one value per distinct metadata it has seen (members of one zone share one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The member's id.
    pub id: NodeId,
    /// Where its SWIM traffic goes.
    pub addr: Addr,
    /// The latest claim about it.
    pub version: Version,
    /// What it published about itself.
    pub meta: SharedMeta,
}

/// No metadata: what [`SharedMeta`] without an allocation points at.
static EMPTY_META: Meta = Meta {
    region: String::new(),
    zone: String::new(),
    rack: String::new(),
    weight: 0,
    addrs: BTreeMap::new(),
    tags: BTreeMap::new(),
};

/// A member's metadata, shared between every record and update that carries it, and not
/// allocated at all when empty ([`Meta::default`]).
///
/// Members that publish nothing are common (it is [`Config`](super::Config)'s default), and
/// every `Alive` update decoded carries a value: sharing one static empty value saves an
/// allocation, and its free, per update. Encodes exactly as a [`Meta`].
#[derive(Clone, Default)]
pub struct SharedMeta(Option<Arc<Meta>>);

impl SharedMeta {
    /// Shares `meta`, allocating only if it is not empty.
    pub fn new(meta: Meta) -> SharedMeta {
        if meta == EMPTY_META {
            SharedMeta(None)
        } else {
            SharedMeta(Some(Arc::new(meta)))
        }
    }

    /// True if both are the same allocation, or both empty.
    pub fn ptr_eq(a: &SharedMeta, b: &SharedMeta) -> bool {
        match (&a.0, &b.0) {
            (None, None) => true,
            (Some(x), Some(y)) => Arc::ptr_eq(x, y),
            _ => false,
        }
    }

    /// How many values share this one's allocation (0 when empty: nothing is allocated).
    fn holders(&self) -> usize {
        self.0.as_ref().map_or(0, Arc::strong_count)
    }
}

impl core::ops::Deref for SharedMeta {
    type Target = Meta;

    fn deref(&self) -> &Meta {
        self.0.as_deref().unwrap_or(&EMPTY_META)
    }
}

impl From<Meta> for SharedMeta {
    fn from(meta: Meta) -> SharedMeta {
        SharedMeta::new(meta)
    }
}

impl PartialEq for SharedMeta {
    fn eq(&self, other: &SharedMeta) -> bool {
        SharedMeta::ptr_eq(self, other) || **self == **other
    }
}

impl Eq for SharedMeta {}

impl fmt::Debug for SharedMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Meta::fmt(self, f)
    }
}

impl Serialize for SharedMeta {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Meta::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for SharedMeta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SharedMeta, D::Error> {
        Meta::deserialize(d).map(SharedMeta::new)
    }
}

/// Interns metadata so equal values share one allocation: records of members that publish the
/// same labels (one zone, one rack, no per-member tags) cost a pointer each.
///
/// Values no record points at any more are dropped in sweeps, run each time the pool has
/// doubled since the last one, so interning is amortized O(log n).
#[derive(Default)]
pub(crate) struct MetaPool {
    by_hash: BTreeMap<u64, Vec<SharedMeta>>,
    len: usize,
    sweep_at: usize,
}

impl MetaPool {
    /// The pooled value equal to `meta`, adding it if there is none.
    pub fn intern(&mut self, meta: SharedMeta) -> SharedMeta {
        if meta.0.is_none() {
            return meta;
        }
        let hash = meta_hash(&meta);
        let bucket = self.by_hash.entry(hash).or_default();
        if let Some(m) = bucket.iter().find(|m| **m == meta) {
            return m.clone();
        }
        bucket.push(meta.clone());
        self.len += 1;
        if self.len > self.sweep_at {
            self.sweep();
        }
        meta
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.len
    }

    fn sweep(&mut self) {
        self.by_hash.retain(|_, bucket| {
            bucket.retain(|m| m.holders() > 1);
            !bucket.is_empty()
        });
        self.len = self.by_hash.values().map(Vec::len).sum();
        self.sweep_at = 2 * self.len + 16;
    }
}

/// FNV-1a over the metadata's `Hash` stream (the pool's bucket key; equality decides). Hashing
/// in place, not an encoding, because every update received with metadata is interned.
fn meta_hash(meta: &Meta) -> u64 {
    struct Fnv(u64);
    impl core::hash::Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0 = crate::fnv1a64_extend(self.0, bytes);
        }
    }
    let mut h = Fnv(crate::fnv1a64(&[]));
    core::hash::Hash::hash(meta, &mut h);
    core::hash::Hasher::finish(&h)
}

impl Member {
    /// The member's state.
    pub fn state(&self) -> State {
        self.version.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    fn v(gen: u64, inc: u64, state: State) -> Version {
        Version { gen, inc, state }
    }

    #[test]
    fn newer_generation_beats_any_state() {
        assert!(v(2, 0, State::Alive).supersedes(&v(1, 9, State::Left)));
        assert!(!v(1, 9, State::Left).supersedes(&v(2, 0, State::Alive)));
    }

    #[test]
    fn down_and_left_are_final_within_a_generation() {
        assert!(v(1, 0, State::Down).supersedes(&v(1, 7, State::Alive)));
        assert!(!v(1, 8, State::Alive).supersedes(&v(1, 0, State::Down)));
        assert!(!v(1, 8, State::Suspect).supersedes(&v(1, 0, State::Down)));
        assert!(v(1, 0, State::Left).supersedes(&v(1, 3, State::Down)));
        assert!(!v(1, 9, State::Down).supersedes(&v(1, 0, State::Left)));
    }

    #[test]
    fn suspect_beats_alive_at_equal_incarnation_and_loses_to_a_higher_one() {
        assert!(v(1, 3, State::Suspect).supersedes(&v(1, 3, State::Alive)));
        assert!(!v(1, 3, State::Alive).supersedes(&v(1, 3, State::Suspect)));
        assert!(v(1, 4, State::Alive).supersedes(&v(1, 3, State::Suspect)));
        assert!(!v(1, 2, State::Suspect).supersedes(&v(1, 3, State::Alive)));
    }

    #[test]
    fn equal_metadata_is_shared_and_unused_values_are_swept() {
        let mut pool = MetaPool::default();
        let zone = |z: &str| SharedMeta::new(Meta { zone: z.into(), weight: 1, ..Meta::default() });
        let a = pool.intern(zone("z1"));
        let b = pool.intern(zone("z1"));
        let c = pool.intern(zone("z2"));
        assert!(SharedMeta::ptr_eq(&a, &b), "equal values share one allocation");
        assert!(!SharedMeta::ptr_eq(&a, &c));
        assert_eq!(pool.len(), 2);
        drop(c);
        for i in 0..40 {
            let _ = pool.intern(zone(&format!("t{i}")));
        }
        assert!(pool.len() < 40, "values nobody holds were swept ({} left)", pool.len());
        let again = pool.intern(zone("z1"));
        assert!(SharedMeta::ptr_eq(&a, &again), "a value still held survives sweeps");
    }

    #[test]
    fn empty_metadata_is_shared_without_an_allocation_and_encodes_as_plain() {
        let empty = SharedMeta::new(Meta::default());
        assert_eq!(empty.holders(), 0, "no allocation behind empty metadata");
        assert!(SharedMeta::ptr_eq(&empty, &SharedMeta::default()));
        assert_eq!(postcard::to_allocvec(&empty).unwrap(), postcard::to_allocvec(&Meta::default()).unwrap());
        let decoded: SharedMeta = postcard::from_bytes(&postcard::to_allocvec(&Meta::default()).unwrap()).unwrap();
        assert_eq!(decoded.holders(), 0, "decoding empty metadata allocates nothing");
        let zoned = SharedMeta::new(Meta { zone: "z".into(), ..Meta::default() });
        assert_eq!(zoned.holders(), 1);
        assert_ne!(zoned, empty);
        assert_eq!(zoned, SharedMeta::new(Meta { zone: "z".into(), ..Meta::default() }), "equal by value");
    }

    #[test]
    fn shared_metadata_encodes_like_plain_metadata() {
        let meta = Meta { zone: "z".into(), weight: 2, ..Meta::default() };
        let m = Member {
            id: NodeId(1),
            addr: Addr::v4(1, 2, 3, 4, 5),
            version: v(1, 0, State::Alive),
            meta: SharedMeta::new(meta.clone()),
        };
        let plain = postcard::to_allocvec(&(m.id, m.addr, m.version, &meta)).unwrap();
        assert_eq!(postcard::to_allocvec(&m).unwrap(), plain);
        assert_eq!(postcard::from_bytes::<Member>(&plain).unwrap(), m);
    }

    #[test]
    fn addr_round_trips_both_families() {
        let v4 = Addr::v4(10, 0, 0, 1, 7946);
        let v6 = Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9));
        for a in [v4, v6] {
            let bytes = postcard::to_allocvec(&a).unwrap();
            assert_eq!(postcard::from_bytes::<Addr>(&bytes).unwrap(), a);
        }
        assert_eq!(postcard::to_allocvec(&v4).unwrap().len(), 1 + 4 + 2, "tag, octets, varint port");
    }
}
