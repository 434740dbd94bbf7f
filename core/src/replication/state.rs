//! What a replica stores per key, and how two states of one key merge under each conflict
//! mode.
//!
//! A [`KeyState`] is a version vector (every write the state has seen) and a body: the
//! surviving versions (last-write-wins and multi-value modes) or a map of per-field registers
//! (CRDT mode). Replicas always exchange whole key states, never deltas, which keeps every
//! version vector exact (see [`super::version`]). Each mode's merge is a join: commutative,
//! associative and idempotent, so replicas that have seen the same writes hold the same state
//! whatever the order and repetition of deliveries. Property tests at the bottom check it.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::cmp::Ordering;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::version::{Dot, Hlc, VersionVector};

/// The id of a vector entry within a collection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntryId(pub u64);

/// A scalar metadata value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A string.
    Str(String),
}

/// Metadata: field name to scalar, in name order.
pub type Metadata = BTreeMap<String, Scalar>;

/// A vector entry's content.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The embedding.
    pub vector: Vec<f32>,
    /// Scalar metadata.
    pub metadata: Metadata,
}

/// When and by whom a write was made. Ordered by timestamp, then node id (then the actor's
/// life and counter, so the order is total): the last-write-wins order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The hybrid logical clock reading at the coordinator.
    pub ts: Hlc,
    /// The write's dot.
    pub dot: Dot,
}

/// One surviving write of a key; `value: None` is a tombstone (a delete).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// The write's stamp.
    pub stamp: Stamp,
    /// What it wrote; `None` for a delete.
    pub value: Option<Entry>,
}

/// A last-write-wins register inside a [`FieldMap`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Register<T> {
    /// The write that set it.
    pub stamp: Stamp,
    /// The value.
    pub value: T,
}

/// CRDT mode's body: the vector and every metadata field are last-write-wins registers, and a
/// delete is a stamp that hides every register written before it. Concurrent updates of
/// different fields both survive.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FieldMap {
    /// The vector, if one was ever written.
    pub vector: Option<Register<Vec<f32>>>,
    /// Field registers; `None` values are removed fields.
    pub fields: BTreeMap<String, Register<Option<Scalar>>>,
    /// The latest delete of the whole entry.
    pub deleted: Option<Stamp>,
}

/// The body of a key state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Surviving versions in dot order: exactly one under last-write-wins, one per concurrent
    /// write under multi-value.
    Versions(Vec<Version>),
    /// Per-field registers (CRDT mode).
    Fields(FieldMap),
}

/// Everything a replica stores about one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyState {
    /// Every write this state has seen (its causal context).
    pub clock: VersionVector,
    /// What survives of them.
    pub body: Body,
}

/// How concurrent writes of one key are reconciled; chosen per collection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConflictMode {
    /// The write with the highest [`Stamp`] wins (timestamp, then node id).
    LastWriteWins,
    /// Concurrent writes are kept as siblings, surfaced on read, and merged by a resolver.
    MultiValue,
    /// The vector and each metadata field are last-write-wins registers, so concurrent
    /// updates of different fields both survive.
    CrdtMap,
}

/// A write's effect on one key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Store this entry. Under [`ConflictMode::CrdtMap`] its fields are merged into the
    /// existing ones (fields it does not name are kept).
    Put(Entry),
    /// Delete the entry.
    Delete,
    /// Set and remove metadata fields without touching the vector ([`ConflictMode::CrdtMap`]
    /// only).
    Patch {
        /// Fields to set.
        set: Metadata,
        /// Fields to remove.
        remove: Vec<String>,
    },
}

/// What a reader sees of a key.
#[derive(Clone, Debug, PartialEq)]
pub enum Visible {
    /// No entry (never written, or deleted).
    Absent,
    /// One entry.
    One(Entry),
    /// Concurrent writes that differ (multi-value mode), in dot order; `None` is a concurrent
    /// delete.
    Siblings(Vec<Option<Entry>>),
}

/// What a writer passes back to say which versions it has seen (from a read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// The versions seen.
    pub clock: VersionVector,
    /// The latest timestamp among them, so the new write's timestamp is later.
    pub ts: Hlc,
}

/// How a merge settled a conflict, for the change stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// Last-write-wins kept `winner` over the concurrent `loser`.
    LastWriteWins {
        /// The stamp kept.
        winner: Stamp,
        /// The stamp dropped.
        loser: Stamp,
    },
    /// Concurrent versions are kept side by side.
    Siblings {
        /// How many versions survive.
        count: u32,
    },
    /// Concurrent field updates were merged register by register.
    FieldsMerged {
        /// Registers that took the incoming value.
        taken: u32,
    },
}

/// The result of merging an incoming state into a local one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The local state changed.
    pub changed: bool,
    /// The states were concurrent and this is how it was settled.
    pub conflict: Option<Resolution>,
}

/// Why a key state (from the wire or a write) was refused. Nothing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum StateError {
    /// The body does not fit the collection's conflict mode.
    #[error("key state shape does not match the collection's conflict mode")]
    WrongShape,
    /// The version vector is not canonical, or misses a dot the body holds.
    #[error("key state's version vector is not canonical or misses one of its dots")]
    BadClock,
    /// Versions out of order or repeated, or not exactly one under last-write-wins.
    #[error("key state's versions are out of order, repeated, or of the wrong count")]
    BadVersions,
    /// A vector longer than allowed, or a float that is not finite.
    #[error("vector too long or not finite")]
    BadVector,
    /// More siblings or fields than allowed.
    #[error("too many siblings or fields")]
    TooMany,
}

impl KeyState {
    /// The state a write creates on a key with no state.
    pub fn empty(mode: ConflictMode) -> KeyState {
        let body = match mode {
            ConflictMode::CrdtMap => Body::Fields(FieldMap::default()),
            _ => Body::Versions(Vec::new()),
        };
        KeyState { clock: VersionVector::new(), body }
    }

    /// What a reader sees.
    pub fn visible(&self) -> Visible {
        match &self.body {
            Body::Versions(vs) => {
                let Some(first) = vs.first() else { return Visible::Absent };
                if vs.iter().all(|v| v.value == first.value) {
                    return first.value.clone().map_or(Visible::Absent, Visible::One);
                }
                Visible::Siblings(vs.iter().map(|v| v.value.clone()).collect())
            }
            Body::Fields(f) => {
                let deleted = f.deleted;
                let live = |s: Stamp| deleted.is_none_or(|d| s > d);
                match &f.vector {
                    Some(reg) if live(reg.stamp) => {
                        let metadata = f
                            .fields
                            .iter()
                            .filter(|(_, r)| live(r.stamp))
                            .filter_map(|(k, r)| r.value.clone().map(|v| (k.clone(), v)))
                            .collect();
                        Visible::One(Entry { vector: reg.value.clone(), metadata })
                    }
                    _ => Visible::Absent,
                }
            }
        }
    }

    /// The context a writer passes back after reading this state.
    pub fn context(&self) -> Context {
        Context { clock: self.clock.clone(), ts: self.max_ts() }
    }

    /// The latest timestamp of any write the body holds.
    pub fn max_ts(&self) -> Hlc {
        self.stamps().map(|s| s.ts).max().unwrap_or_default()
    }

    /// Every stamp the body holds.
    pub fn stamps(&self) -> impl Iterator<Item = Stamp> + '_ {
        let (versions, fields): (&[Version], Option<&FieldMap>) = match &self.body {
            Body::Versions(vs) => (vs, None),
            Body::Fields(f) => (&[], Some(f)),
        };
        let field_stamps = fields
            .into_iter()
            .flat_map(|f| f.vector.iter().map(|r| r.stamp).chain(f.fields.values().map(|r| r.stamp)).chain(f.deleted));
        versions.iter().map(|v| v.stamp).chain(field_stamps)
    }

    /// True when nothing in the state can ever be visible again: only deletes survive (or, in
    /// multi-value mode, nothing does). Such a state is a tombstone, kept until every replica
    /// has seen it.
    pub fn is_tombstone(&self) -> bool {
        match &self.body {
            Body::Versions(vs) => vs.iter().all(|v| v.value.is_none()),
            Body::Fields(f) => match f.deleted {
                Some(d) => f.vector.as_ref().is_none_or(|r| r.stamp < d) && f.fields.values().all(|r| r.stamp < d),
                None => false,
            },
        }
    }

    /// Number of surviving versions (multi-value siblings), or registers in CRDT mode.
    pub fn width(&self) -> usize {
        match &self.body {
            Body::Versions(vs) => vs.len(),
            Body::Fields(f) => f.fields.len() + usize::from(f.vector.is_some()),
        }
    }

    /// Merges `other` into `self` under `mode`. Both must have `mode`'s shape.
    pub fn merge(&mut self, other: &KeyState, mode: ConflictMode) -> Result<Merged, StateError> {
        self.merge_with(other, mode, true)
    }

    /// [`KeyState::merge`], optionally without last-write-wins' node tiebreak (a planted bug:
    /// equal timestamps then keep whatever was local, so replicas can disagree forever).
    pub(crate) fn merge_with(
        &mut self,
        other: &KeyState,
        mode: ConflictMode,
        tiebreak: bool,
    ) -> Result<Merged, StateError> {
        let conflict_possible = self.clock.compare(&other.clock) == super::version::Causality::Concurrent;
        let (changed, conflict) = match (mode, &mut self.body, &other.body) {
            (ConflictMode::LastWriteWins, Body::Versions(mine), Body::Versions(theirs)) => {
                let (Some(m), Some(t)) = (mine.first(), theirs.first()) else {
                    // An empty side is a fresh state: it takes the other whole.
                    let take = mine.is_empty() && !theirs.is_empty();
                    if take {
                        mine.clone_from(theirs);
                    }
                    let grew = !self.clock.descends(&other.clock);
                    self.clock.merge(&other.clock);
                    return Ok(Merged { changed: take || grew, conflict: None });
                };
                let take = if tiebreak { t.stamp > m.stamp } else { t.stamp.ts > m.stamp.ts };
                let (winner, loser) = if take { (t.stamp, m.stamp) } else { (m.stamp, t.stamp) };
                let conflict =
                    (conflict_possible && winner != loser).then_some(Resolution::LastWriteWins { winner, loser });
                if take {
                    mine.clone_from(theirs);
                }
                (take, conflict)
            }
            (ConflictMode::MultiValue, Body::Versions(mine), Body::Versions(theirs)) => {
                let before = mine.len();
                let my_clock = &self.clock;
                // Keep a local version unless the other side has seen it and dropped it.
                mine.retain(|v| {
                    theirs.iter().any(|t| t.stamp.dot == v.stamp.dot) || !other.clock.contains(v.stamp.dot)
                });
                let kept = mine.len();
                for t in theirs {
                    let known = my_clock.contains(t.stamp.dot);
                    if !known && !mine.iter().any(|v| v.stamp.dot == t.stamp.dot) {
                        mine.push(t.clone());
                    }
                }
                mine.sort_by_key(|v| v.stamp.dot);
                let changed = kept != before || mine.len() != kept;
                let conflict =
                    (conflict_possible && mine.len() > 1).then_some(Resolution::Siblings { count: mine.len() as u32 });
                (changed, conflict)
            }
            (ConflictMode::CrdtMap, Body::Fields(mine), Body::Fields(theirs)) => {
                let mut taken = 0u32;
                taken += u32::from(max_register(&mut mine.vector, &theirs.vector));
                for (name, reg) in &theirs.fields {
                    match mine.fields.get_mut(name) {
                        Some(r) if r.stamp >= reg.stamp => {}
                        Some(r) => {
                            *r = reg.clone();
                            taken += 1;
                        }
                        None => {
                            mine.fields.insert(name.clone(), reg.clone());
                            taken += 1;
                        }
                    }
                }
                if theirs.deleted > mine.deleted {
                    mine.deleted = theirs.deleted;
                    taken += 1;
                }
                let conflict = (conflict_possible && taken > 0).then_some(Resolution::FieldsMerged { taken });
                (taken > 0, conflict)
            }
            _ => return Err(StateError::WrongShape),
        };
        let grew = !self.clock.descends(&other.clock);
        self.clock.merge(&other.clock);
        Ok(Merged { changed: changed || grew, conflict })
    }

    /// Applies a new local write (stamped `stamp`, made after reading `ctx`) on this state, as
    /// the write's coordinator does. The result has seen `ctx` and the new dot; versions the
    /// writer saw are replaced, concurrent ones survive as siblings (multi-value mode).
    pub fn apply_write(&mut self, mode: ConflictMode, op: &Op, ctx: &Context, stamp: Stamp) -> Result<(), StateError> {
        match (mode, &mut self.body) {
            (ConflictMode::LastWriteWins | ConflictMode::MultiValue, Body::Versions(vs)) => {
                let value = match op {
                    Op::Put(e) => Some(e.clone()),
                    Op::Delete => None,
                    Op::Patch { .. } => return Err(StateError::WrongShape),
                };
                let new = Version { stamp, value };
                if mode == ConflictMode::LastWriteWins {
                    if vs.first().is_none_or(|v| v.stamp < stamp) {
                        *vs = alloc::vec![new];
                    }
                } else {
                    vs.retain(|v| !ctx.clock.contains(v.stamp.dot));
                    let at = vs.partition_point(|v| v.stamp.dot < stamp.dot);
                    vs.insert(at, new);
                }
            }
            (ConflictMode::CrdtMap, Body::Fields(f)) => match op {
                Op::Put(e) => {
                    max_register(&mut f.vector, &Some(Register { stamp, value: e.vector.clone() }));
                    for (name, v) in &e.metadata {
                        set_field(f, name, stamp, Some(v.clone()));
                    }
                }
                Op::Delete => f.deleted = f.deleted.max(Some(stamp)),
                Op::Patch { set, remove } => {
                    for (name, v) in set {
                        set_field(f, name, stamp, Some(v.clone()));
                    }
                    for name in remove {
                        set_field(f, name, stamp, None);
                    }
                }
            },
            _ => return Err(StateError::WrongShape),
        }
        self.clock.merge(&ctx.clock);
        self.clock.insert(stamp.dot);
        Ok(())
    }

    /// Checks a state from the wire: shape, canonical order, clock covering every dot, and
    /// the size limits. A state that passes merges without surprises.
    pub fn validate(&self, mode: ConflictMode, vector_len_max: usize, width_max: usize) -> Result<(), StateError> {
        self.clock.validate().map_err(|_| StateError::BadClock)?;
        if self.stamps().any(|s| s.dot.counter == 0 || !self.clock.contains(s.dot)) {
            return Err(StateError::BadClock);
        }
        if self.width() > width_max {
            return Err(StateError::TooMany);
        }
        let vector_ok = |v: &[f32]| v.len() <= vector_len_max && v.iter().all(|x| x.is_finite());
        match (mode, &self.body) {
            (ConflictMode::LastWriteWins | ConflictMode::MultiValue, Body::Versions(vs)) => {
                let sorted = vs.windows(2).all(|w| w[0].stamp.dot < w[1].stamp.dot);
                // Multi-value states may be empty: everything seen was replaced by versions
                // since collected (a tombstone without dots).
                let count_ok = mode == ConflictMode::MultiValue || vs.len() == 1;
                if !sorted || !count_ok {
                    return Err(StateError::BadVersions);
                }
                if !vs.iter().filter_map(|v| v.value.as_ref()).all(|e| vector_ok(&e.vector) && floats_ok(&e.metadata)) {
                    return Err(StateError::BadVector);
                }
            }
            (ConflictMode::CrdtMap, Body::Fields(f)) => {
                if !f.vector.as_ref().is_none_or(|r| vector_ok(&r.value)) {
                    return Err(StateError::BadVector);
                }
                if !f.fields.values().all(|r| r.value.as_ref().is_none_or(scalar_ok)) {
                    return Err(StateError::BadVector);
                }
            }
            _ => return Err(StateError::WrongShape),
        }
        Ok(())
    }
}

/// True if every float in `m` is finite (NaN would make equal states compare unequal).
pub fn floats_ok(m: &Metadata) -> bool {
    m.values().all(scalar_ok)
}

fn scalar_ok(s: &Scalar) -> bool {
    !matches!(s, Scalar::Float(x) if !x.is_finite())
}

fn set_field(f: &mut FieldMap, name: &str, stamp: Stamp, value: Option<Scalar>) {
    match f.fields.get_mut(name) {
        Some(r) if r.stamp >= stamp => {}
        Some(r) => *r = Register { stamp, value },
        None => {
            f.fields.insert(String::from(name), Register { stamp, value });
        }
    }
}

/// Raises `mine` to the later of the two registers; true if it took `theirs`.
fn max_register<T: Clone>(mine: &mut Option<Register<T>>, theirs: &Option<Register<T>>) -> bool {
    match (mine.as_ref(), theirs) {
        (_, None) => false,
        (Some(m), Some(t)) if m.stamp.cmp(&t.stamp) != Ordering::Less => false,
        (_, Some(t)) => {
            *mine = Some(t.clone());
            true
        }
    }
}

/// A 64-bit digest of a key state's canonical encoding: equal states, equal digests, on every
/// platform. Hashes postcard's output as it is produced, without allocating.
pub fn state_digest(state: &KeyState) -> u64 {
    postcard::serialize_with_flavor(state, WordHasher::default()).unwrap_or(0)
}

/// An incremental hash over a byte stream, eight bytes at a time (fixed constants, so every
/// replica computes the same digest).
#[derive(Default)]
struct WordHasher {
    state: u64,
    buf: u64,
    len: u32,
    total: u64,
}

impl WordHasher {
    fn absorb(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

impl postcard::ser_flavors::Flavor for WordHasher {
    type Output = u64;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.buf |= u64::from(data) << (8 * self.len);
        self.len += 1;
        self.total += 1;
        if self.len == 8 {
            self.absorb(self.buf);
            self.buf = 0;
            self.len = 0;
        }
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let mut rest = data;
        while self.len != 0 && !rest.is_empty() {
            self.try_push(rest[0])?;
            rest = &rest[1..];
        }
        let mut chunks = rest.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.absorb(u64::from_le_bytes(w));
        }
        self.total += (rest.len() - chunks.remainder().len()) as u64;
        for &b in chunks.remainder() {
            self.try_push(b)?;
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<u64> {
        let tail = self.buf ^ (u64::from(self.len) << 60);
        self.absorb(tail);
        self.absorb(self.total);
        Ok(mix64(self.state))
    }
}

/// A fixed 64-bit mixing function (the splitmix64 finalizer): a bijection that spreads bits.
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
