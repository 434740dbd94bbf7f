//! Datagrams on the wire: authentication with the cluster key, and splitting of large messages.
//!
//! # Layout
//! Every datagram is `kind (1 byte) ‖ body ‖ tag (16 bytes)`, where the tag is the first 16
//! bytes of keyed BLAKE3 of `kind ‖ body` under the 32-byte cluster key. A datagram whose tag
//! does not match is dropped and counted before anything looks at its body, so nothing a
//! stranger sends reaches the core.
//!
//! Bodies are the core's own envelopes (magic, version, cluster id, sender, postcard message):
//! SWIM packets as the SWIM machine encodes them, Raft messages, client requests and responses
//! (one per datagram, or several packed into a batch that fits one datagram).
//! A body too large for one datagram goes as [`Kind::Fragment`] pieces:
//! `inner kind ‖ message id (u64 LE) ‖ piece index (u16 LE) ‖ piece count (u16 LE) ‖ bytes`,
//! each piece authenticated on its own, reassembled in bounded buffers that expire.
//!
//! # Replays
//! An authentic datagram replayed by an attacker (or duplicated by the network) is harmless:
//! every protocol on top tolerates duplicates by design (Raft by terms and indexes, SWIM by
//! incarnations and sequence numbers, client requests by client sessions, which apply a
//! request at most once). So the transport does not spend state on replay windows.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use quorate_core::Instant;

/// Bytes of the authentication tag at the end of every datagram.
pub const TAG_BYTES: usize = 16;
/// Bytes of the kind prefix.
pub const KIND_BYTES: usize = 1;
/// Bytes of a fragment's header after the kind.
pub const FRAGMENT_HEADER_BYTES: usize = 1 + 8 + 2 + 2;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kind {
    /// A SWIM packet.
    Swim = 1,
    /// A Raft message.
    Raft = 2,
    /// A client request.
    ClientRequest = 3,
    /// A response to a client.
    ClientResponse = 4,
    /// One piece of a larger body.
    Fragment = 5,
    /// Several client requests ([`crate::protocol::Batch`]); never larger than one datagram.
    ClientRequestBatch = 6,
    /// Several responses to one client address ([`crate::protocol::Batch`]); never larger than
    /// one datagram.
    ClientResponseBatch = 7,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Swim,
            2 => Kind::Raft,
            3 => Kind::ClientRequest,
            4 => Kind::ClientResponse,
            5 => Kind::Fragment,
            6 => Kind::ClientRequestBatch,
            7 => Kind::ClientResponseBatch,
            _ => return None,
        })
    }
}

/// The shared secret of a cluster: every datagram is authenticated with it.
#[derive(Clone)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read the cluster key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error("cluster key file {path}: expected 64 hexadecimal digits (32 bytes); create one with `quorate keygen`")]
    Format {
        /// The file.
        path: String,
    },
}

impl ClusterKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> ClusterKey {
        ClusterKey(bytes)
    }

    /// Parses 64 hex digits (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Option<ClusterKey> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(ClusterKey(key))
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a key file written by `quorate keygen`.
    pub fn load(path: &str) -> Result<ClusterKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.into(), source })?;
        ClusterKey::from_hex(&text).ok_or_else(|| KeyError::Format { path: path.into() })
    }

    fn tag(&self, kind: u8, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&[kind]);
        h.update(body);
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&h.finalize().as_bytes()[..TAG_BYTES]);
        tag
    }
}

/// Why a datagram was dropped before reaching the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DropReason {
    /// Shorter than a kind and a tag, or longer than the datagram limit.
    BadLength,
    /// The tag did not verify under the cluster key.
    BadTag,
    /// An unknown kind byte (authentic: a newer peer?).
    UnknownKind,
    /// A fragment with an impossible header or a piece that does not fit its message.
    BadFragment,
    /// A partial message was evicted to respect the reassembly bounds, or it expired.
    ReassemblyDropped,
    /// The body did not decode, or named another cluster.
    Malformed,
    /// The body named another cluster id.
    WrongCluster,
    /// The body decoded but the core refused it.
    Refused,
}

impl DropReason {
    /// Every reason, for metrics.
    pub const ALL: [DropReason; 8] = [
        DropReason::BadLength,
        DropReason::BadTag,
        DropReason::UnknownKind,
        DropReason::BadFragment,
        DropReason::ReassemblyDropped,
        DropReason::Malformed,
        DropReason::WrongCluster,
        DropReason::Refused,
    ];

    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::BadLength => "bad_length",
            DropReason::BadTag => "bad_tag",
            DropReason::UnknownKind => "unknown_kind",
            DropReason::BadFragment => "bad_fragment",
            DropReason::ReassemblyDropped => "reassembly_dropped",
            DropReason::Malformed => "malformed",
            DropReason::WrongCluster => "wrong_cluster",
            DropReason::Refused => "refused",
        }
    }
}

/// Limits of the transport. Validated by the node's config.
#[derive(Clone, Debug)]
pub struct TransportLimits {
    /// Largest datagram sent or accepted, in bytes (kind and tag included); fragments are cut
    /// to it.
    pub datagram_bytes_max: usize,
    /// Largest unfragmented [`Kind::Raft`] datagram accepted (at least `datagram_bytes_max`);
    /// a sender uses it where the path carries it ([`Transport::seal_within`]).
    pub raft_datagram_bytes_max: usize,
    /// Largest reassembled body, in bytes.
    pub message_bytes_max: usize,
    /// Most partial messages held at once.
    pub partial_max: usize,
    /// Most bytes held in partial messages at once.
    pub partial_bytes_max: usize,
    /// A partial message not completed within this time is dropped (its sender retransmits).
    pub reassembly_timeout: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            datagram_bytes_max: 1400,
            raft_datagram_bytes_max: 1400,
            message_bytes_max: 8 << 20,
            partial_max: 256,
            partial_bytes_max: 64 << 20,
            reassembly_timeout: Duration::from_secs(2),
        }
    }
}

impl TransportLimits {
    /// The largest body that fits in one datagram.
    pub fn body_bytes_max(&self) -> usize {
        self.datagram_bytes_max.saturating_sub(KIND_BYTES + TAG_BYTES)
    }

    fn piece_bytes_max(&self) -> usize {
        self.body_bytes_max().saturating_sub(FRAGMENT_HEADER_BYTES)
    }
}

/// Counters of what the transport sent, received and dropped.
#[derive(Clone, Debug, Default)]
pub struct TransportStats {
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Datagrams received (accepted or not).
    pub datagrams_received: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Bodies split into fragments.
    pub messages_fragmented: u64,
    /// Bodies reassembled from fragments.
    pub messages_reassembled: u64,
    /// Drops by reason.
    pub dropped: BTreeMap<DropReason, u64>,
}

impl TransportStats {
    /// Counts one drop.
    pub fn drop(&mut self, reason: DropReason) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// Drops counted for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(&reason).copied().unwrap_or(0)
    }
}

struct Partial {
    kind: Kind,
    count: u16,
    pieces: Vec<Option<Vec<u8>>>,
    held: usize,
    bytes: usize,
    deadline: Instant,
}

/// Seals bodies into datagrams and opens datagrams into bodies, for one socket.
pub struct Transport {
    key: ClusterKey,
    limits: TransportLimits,
    next_message_id: u64,
    partials: BTreeMap<(SocketAddr, u64), Partial>,
    /// Partial messages in arrival order, for eviction and expiry.
    partial_order: VecDeque<(SocketAddr, u64)>,
    partial_bytes: usize,
    stats: TransportStats,
}

impl Transport {
    /// A transport with `key` and `limits`; `message_id_seed` starts the fragment ids (a
    /// restarted node must not reuse the ids peers may still hold pieces of).
    pub fn new(key: ClusterKey, limits: TransportLimits, message_id_seed: u64) -> Transport {
        Transport {
            key,
            limits,
            next_message_id: message_id_seed,
            partials: BTreeMap::new(),
            partial_order: VecDeque::new(),
            partial_bytes: 0,
            stats: TransportStats::default(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &TransportLimits {
        &self.limits
    }

    /// Counters.
    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    /// Counts one datagram handed to the socket.
    pub fn count_sent(&mut self, bytes: usize) {
        self.stats.datagrams_sent += 1;
        self.stats.bytes_sent += bytes as u64;
    }

    /// Counts `datagrams` sealed here and sent elsewhere (by the storage thread), `bytes` in all.
    pub fn count_sent_many(&mut self, datagrams: u64, bytes: u64) {
        self.stats.datagrams_sent += datagrams;
        self.stats.bytes_sent += bytes;
    }

    /// Counts a drop found after opening (a body the core could not use).
    pub fn count_drop(&mut self, reason: DropReason) {
        self.stats.drop(reason);
    }

    /// Seals `body` of `kind` into one datagram, or into fragments if it does not fit.
    /// Returns `None` if the body is larger than the message limit.
    pub fn seal(&mut self, kind: Kind, body: &[u8]) -> Option<Vec<Vec<u8>>> {
        self.seal_within(kind, body, self.limits.datagram_bytes_max)
    }

    /// Like [`Transport::seal`], but `body` goes as one datagram if that datagram is at most
    /// `datagram_max` bytes (clamped to what a receiver accepts for `kind`); fragments are
    /// still cut to the usual limit.
    pub fn seal_within(&mut self, kind: Kind, body: &[u8], datagram_max: usize) -> Option<Vec<Vec<u8>>> {
        let whole = datagram_max.min(self.accepted_bytes_max(kind as u8)).max(self.limits.datagram_bytes_max);
        if body.len() <= whole.saturating_sub(KIND_BYTES + TAG_BYTES) {
            return Some(vec![self.seal_one(kind as u8, &[body])]);
        }
        let piece = self.limits.piece_bytes_max().max(1);
        let count = body.len().div_ceil(piece);
        if body.len() > self.limits.message_bytes_max || count > usize::from(u16::MAX) {
            return None;
        }
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1);
        self.stats.messages_fragmented += 1;
        let count16 = count as u16;
        let datagrams = body
            .chunks(piece)
            .enumerate()
            .map(|(i, bytes)| {
                let mut header = [0u8; FRAGMENT_HEADER_BYTES];
                header[0] = kind as u8;
                header[1..9].copy_from_slice(&id.to_le_bytes());
                header[9..11].copy_from_slice(&(i as u16).to_le_bytes());
                header[11..13].copy_from_slice(&count16.to_le_bytes());
                self.seal_one(Kind::Fragment as u8, &[&header, bytes])
            })
            .collect();
        Some(datagrams)
    }

    /// The longest datagram accepted whose first byte is `kind` (not yet authenticated: only
    /// a bound, the tag is checked next).
    fn accepted_bytes_max(&self, kind: u8) -> usize {
        if kind == Kind::Raft as u8 {
            self.limits.raft_datagram_bytes_max.max(self.limits.datagram_bytes_max)
        } else {
            self.limits.datagram_bytes_max
        }
    }

    fn seal_one(&self, kind: u8, parts: &[&[u8]]) -> Vec<u8> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut out = Vec::with_capacity(KIND_BYTES + len + TAG_BYTES);
        out.push(kind);
        for p in parts {
            out.extend_from_slice(p);
        }
        let tag = self.key.tag(kind, &out[KIND_BYTES..]);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens one datagram from `from`. Returns a complete body, `Ok(None)` for a fragment that
    /// did not complete a message yet, or the reason it was dropped (already counted).
    pub fn open(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<Option<(Kind, Vec<u8>)>, DropReason> {
        self.stats.datagrams_received += 1;
        self.stats.bytes_received += datagram.len() as u64;
        self.expire(now);
        let result = self.open_inner(now, from, datagram);
        if let Err(reason) = result {
            self.stats.drop(reason);
        }
        result
    }

    fn open_inner(&mut self, now: Instant, from: SocketAddr, d: &[u8]) -> Result<Option<(Kind, Vec<u8>)>, DropReason> {
        if d.len() < KIND_BYTES + TAG_BYTES || d.len() > self.accepted_bytes_max(d[0]) {
            return Err(DropReason::BadLength);
        }
        let (signed, tag) = d.split_at(d.len() - TAG_BYTES);
        let expected = self.key.tag(signed[0], &signed[KIND_BYTES..]);
        // Constant time: how many tag bytes match must not show in timing.
        let diff = expected.iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(DropReason::BadTag);
        }
        let kind = Kind::from_byte(signed[0]).ok_or(DropReason::UnknownKind)?;
        let body = &signed[KIND_BYTES..];
        if kind != Kind::Fragment {
            return Ok(Some((kind, body.to_vec())));
        }
        self.insert_piece(now, from, body)
    }

    fn insert_piece(
        &mut self,
        now: Instant,
        from: SocketAddr,
        body: &[u8],
    ) -> Result<Option<(Kind, Vec<u8>)>, DropReason> {
        if body.len() < FRAGMENT_HEADER_BYTES {
            return Err(DropReason::BadFragment);
        }
        let inner = Kind::from_byte(body[0]).filter(|k| *k != Kind::Fragment).ok_or(DropReason::BadFragment)?;
        let id = u64::from_le_bytes(body[1..9].try_into().map_err(|_| DropReason::BadFragment)?);
        let index = u16::from_le_bytes([body[9], body[10]]);
        let count = u16::from_le_bytes([body[11], body[12]]);
        let bytes = &body[FRAGMENT_HEADER_BYTES..];
        let piece = self.limits.piece_bytes_max();
        // Only the last piece may be short; none may be empty or past the message limit.
        let fits = count >= 2
            && index < count
            && !bytes.is_empty()
            && bytes.len() <= piece
            && (index + 1 == count || bytes.len() == piece)
            && usize::from(count - 1) * piece < self.limits.message_bytes_max;
        if !fits {
            return Err(DropReason::BadFragment);
        }
        let key = (from, id);
        if !self.partials.contains_key(&key) {
            while self.partials.len() >= self.limits.partial_max
                || self.partial_bytes + bytes.len() > self.limits.partial_bytes_max
            {
                if !self.evict_oldest() {
                    break;
                }
            }
            let deadline = now.saturating_add(self.limits.reassembly_timeout);
            let partial =
                Partial { kind: inner, count, pieces: vec![None; usize::from(count)], held: 0, bytes: 0, deadline };
            self.partials.insert(key, partial);
            self.partial_order.push_back(key);
        }
        let Some(p) = self.partials.get_mut(&key) else { return Err(DropReason::ReassemblyDropped) };
        if p.count != count || p.kind != inner {
            return Err(DropReason::BadFragment);
        }
        let slot = &mut p.pieces[usize::from(index)];
        if slot.is_some() {
            return Ok(None); // A duplicate piece.
        }
        *slot = Some(bytes.to_vec());
        p.held += 1;
        p.bytes += bytes.len();
        self.partial_bytes += bytes.len();
        if p.held < usize::from(p.count) {
            return Ok(None);
        }
        let Some(done) = self.partials.remove(&key) else { return Ok(None) };
        self.partial_bytes -= done.bytes;
        self.partial_order.retain(|k| *k != key);
        self.stats.messages_reassembled += 1;
        let mut out = Vec::with_capacity(done.bytes);
        for piece in done.pieces.into_iter().flatten() {
            out.extend_from_slice(&piece);
        }
        Ok(Some((done.kind, out)))
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some(key) = self.partial_order.pop_front() {
            if let Some(p) = self.partials.remove(&key) {
                self.partial_bytes -= p.bytes;
                self.stats.drop(DropReason::ReassemblyDropped);
                return true;
            }
        }
        false
    }

    /// Drops partial messages past their deadline.
    pub fn expire(&mut self, now: Instant) {
        while let Some(key) = self.partial_order.front().copied() {
            match self.partials.get(&key) {
                Some(p) if p.deadline > now => break,
                Some(_) => {
                    self.partial_order.pop_front();
                    if let Some(p) = self.partials.remove(&key) {
                        self.partial_bytes -= p.bytes;
                        self.stats.drop(DropReason::ReassemblyDropped);
                    }
                }
                None => {
                    self.partial_order.pop_front();
                }
            }
        }
    }

    /// When the oldest partial message expires, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.partial_order.iter().find_map(|k| self.partials.get(k)).map(|p| p.deadline)
    }

    /// Partial messages held.
    pub fn partials(&self) -> usize {
        self.partials.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> ClusterKey {
        ClusterKey::from_bytes([b; 32])
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn transport(b: u8) -> Transport {
        Transport::new(key(b), TransportLimits::default(), 1)
    }

    #[test]
    fn small_bodies_go_in_one_datagram_and_open_back() {
        let (mut a, mut b) = (transport(7), transport(7));
        let d = a.seal(Kind::Raft, b"hello").unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].len(), 1 + 5 + TAG_BYTES);
        assert_eq!(b.open(Instant::ZERO, addr(1), &d[0]), Ok(Some((Kind::Raft, b"hello".to_vec()))));
    }

    #[test]
    fn raft_bodies_go_whole_where_the_path_carries_them_and_only_raft_may_be_large() {
        let limits = TransportLimits { raft_datagram_bytes_max: 9000, ..TransportLimits::default() };
        let (mut a, mut b) = (Transport::new(key(7), limits.clone(), 1), Transport::new(key(7), limits, 2));
        let body = vec![5u8; 8000];
        let d = a.seal_within(Kind::Raft, &body, 65_000).unwrap();
        assert_eq!(d.len(), 1, "one datagram, clamped to what a receiver accepts");
        assert_eq!(b.open(Instant::ZERO, addr(1), &d[0]), Ok(Some((Kind::Raft, body.clone()))));
        // Past the Raft limit, or toward a path that carries less: the usual fragments.
        let big = vec![6u8; 9000];
        let pieces = a.seal_within(Kind::Raft, &big, 65_000).unwrap();
        assert!(pieces.len() > 1 && pieces.iter().all(|p| p.len() <= 1400));
        assert_eq!(a.seal_within(Kind::Raft, &body, 1472).unwrap().len(), 8000usize.div_ceil(1400 - 17 - 13));
        // Other kinds never go past the datagram limit, and a receiver refuses them larger.
        assert!(a.seal_within(Kind::Swim, &body, 65_000).unwrap().len() > 1);
        let mut forged = d[0].clone();
        forged[0] = Kind::Swim as u8;
        assert_eq!(b.open(Instant::ZERO, addr(1), &forged), Err(DropReason::BadLength));
        // A receiver with the default limits refuses the large Raft datagram.
        assert_eq!(transport(7).open(Instant::ZERO, addr(1), &d[0]), Err(DropReason::BadLength));
    }

    #[test]
    fn a_wrong_key_or_any_flipped_bit_is_dropped() {
        let mut a = transport(7);
        let d = a.seal(Kind::Swim, b"payload").unwrap().remove(0);
        let mut other = transport(8);
        assert_eq!(other.open(Instant::ZERO, addr(1), &d), Err(DropReason::BadTag));
        let mut b = transport(7);
        for bit in 0..d.len() * 8 {
            let mut flipped = d.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(b.open(Instant::ZERO, addr(1), &flipped), Err(DropReason::BadTag), "bit {bit}");
        }
        assert_eq!(b.stats().dropped(DropReason::BadTag), d.len() as u64 * 8);
    }

    #[test]
    fn large_bodies_are_split_and_reassembled_in_any_order_with_duplicates() {
        let (mut a, mut b) = (transport(1), transport(1));
        let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut d = a.seal(Kind::Raft, &body).unwrap();
        assert!(d.len() > 1 && d.iter().all(|x| x.len() <= 1400));
        d.reverse();
        let dup = d[3].clone();
        d.insert(5, dup);
        let mut out = None;
        for x in &d {
            if let Some(done) = b.open(Instant::ZERO, addr(9), x).unwrap() {
                assert!(out.is_none(), "completed twice");
                out = Some(done);
            }
        }
        assert_eq!(out, Some((Kind::Raft, body)));
        assert_eq!(b.partials(), 0);
    }

    #[test]
    fn a_lost_piece_expires_and_frees_its_buffer() {
        let (mut a, mut b) = (transport(1), transport(1));
        let body = vec![5u8; 5000];
        let d = a.seal(Kind::ClientResponse, &body).unwrap();
        for x in &d[1..] {
            assert_eq!(b.open(Instant::ZERO, addr(2), x), Ok(None));
        }
        assert_eq!(b.partials(), 1);
        let later = Instant::ZERO.saturating_add(Duration::from_secs(3));
        assert!(b.poll_timeout().is_some_and(|t| t <= later));
        b.expire(later);
        assert_eq!(b.partials(), 0);
        assert_eq!(b.stats().dropped(DropReason::ReassemblyDropped), 1);
        // The retransmitted message (a new id) still gets through.
        let again = a.seal(Kind::ClientResponse, &body).unwrap();
        let done = again.iter().filter_map(|x| b.open(later, addr(2), x).unwrap()).next();
        assert_eq!(done, Some((Kind::ClientResponse, body)));
    }

    #[test]
    fn partial_messages_are_bounded() {
        let limits = TransportLimits { partial_max: 4, ..TransportLimits::default() };
        let mut a = Transport::new(key(1), limits.clone(), 1);
        let mut b = Transport::new(key(1), limits, 1);
        for _ in 0..10 {
            let d = a.seal(Kind::Raft, &[1u8; 3000]).unwrap();
            let _ = b.open(Instant::ZERO, addr(3), &d[0]);
        }
        assert_eq!(b.partials(), 4);
        assert_eq!(b.stats().dropped(DropReason::ReassemblyDropped), 6);
    }

    #[test]
    fn too_large_bodies_are_refused_at_the_sender() {
        let limits = TransportLimits { message_bytes_max: 4096, ..TransportLimits::default() };
        let mut a = Transport::new(key(1), limits, 1);
        assert!(a.seal(Kind::Raft, &[0u8; 5000]).is_none());
    }

    #[test]
    fn key_hex_round_trips_and_rejects_garbage() {
        let k = key(0xab);
        assert_eq!(ClusterKey::from_hex(&k.to_hex()).unwrap().0, k.0);
        assert!(ClusterKey::from_hex("abc").is_none());
        assert!(ClusterKey::from_hex(&"zz".repeat(32)).is_none());
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut b = transport(1);
            let _ = b.open(Instant::ZERO, addr(1), &bytes);
        }

        #[test]
        fn forged_authentic_fragments_never_panic_or_exceed_bounds(
            pieces in proptest::collection::vec((any::<u8>(), 0u64..4, any::<u16>(), any::<u16>(), 0usize..1400), 0..64)
        ) {
            // Pieces sealed with the right key but arbitrary headers (a buggy or hostile member).
            let limits = TransportLimits { partial_max: 8, ..TransportLimits::default() };
            let a = Transport::new(key(1), limits.clone(), 1);
            let mut b = Transport::new(key(1), limits, 1);
            for (inner, id, index, count, len) in pieces {
                let mut header = [0u8; FRAGMENT_HEADER_BYTES];
                header[0] = inner % 6;
                header[1..9].copy_from_slice(&id.to_le_bytes());
                header[9..11].copy_from_slice(&index.to_le_bytes());
                header[11..13].copy_from_slice(&count.to_le_bytes());
                let body = vec![0u8; len.min(1400 - KIND_BYTES - TAG_BYTES - FRAGMENT_HEADER_BYTES)];
                let d = a.seal_one(Kind::Fragment as u8, &[&header, &body]);
                let _ = b.open(Instant::ZERO, addr(1), &d);
                prop_assert!(b.partials() <= 8);
            }
        }
    }
}
