//! The member table: compact records in id order, packed densely, because a member keeps one
//! record for every other member and a simulation of n members holds n² of them.
//!
//! A record is 40 bytes: id, generation, incarnation, a shared pointer to the metadata, an IPv4
//! address inline (IPv6 addresses, rarer, live in a side map), and the state. Records sit in
//! sorted chunks of at most [`CHUNK_MAX`], so an insert moves at most one chunk's records and
//! the table wastes a few percent of its memory, where a `BTreeMap` of the same records wastes a
//! third or more in half-full nodes.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::net::SocketAddr;

use super::member::{Addr, Member, Meta, State, Version};
use crate::NodeId;

/// Most records in one chunk; a fuller chunk splits in two.
const CHUNK_MAX: usize = 128;
/// Records a chunk grows by when full (exact growth, so little capacity goes unused).
const CHUNK_GROW: usize = 8;

/// What this member knows about one other member, in 40 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Record {
    /// The member's id.
    pub id: NodeId,
    /// Its generation.
    pub gen: u64,
    /// Its incarnation.
    pub inc: u64,
    /// Its metadata, shared with every other record (and update) that carries an equal value.
    pub meta: Arc<Meta>,
    ip: [u8; 4],
    port: u16,
    /// Its state.
    pub state: State,
    /// The address is IPv6 and kept in the table's side map.
    v6: bool,
}

impl Record {
    /// The latest claim about the member.
    pub fn version(&self) -> Version {
        Version { gen: self.gen, inc: self.inc, state: self.state }
    }

    /// Replaces the claim.
    pub fn set_version(&mut self, v: Version) {
        self.gen = v.gen;
        self.inc = v.inc;
        self.state = v.state;
    }

    /// True unless Down or Left.
    pub fn is_live(&self) -> bool {
        !self.state.is_terminal()
    }
}

/// Records by id. See the [module docs](self).
#[derive(Default)]
pub(crate) struct MemberTable {
    /// Non-empty sorted chunks; every id in a chunk is below every id in the next.
    chunks: Vec<Vec<Record>>,
    len: usize,
    /// Addresses of records with `v6` set.
    v6: BTreeMap<NodeId, SocketAddr>,
}

impl MemberTable {
    /// Records held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The chunk that holds `id`, or would.
    fn chunk_of(&self, id: NodeId) -> usize {
        self.chunks.partition_point(|c| c[0].id <= id).saturating_sub(1)
    }

    fn find(&self, id: NodeId) -> Option<(usize, usize)> {
        let c = self.chunk_of(id);
        let pos = self.chunks.get(c)?.binary_search_by_key(&id, |r| r.id).ok()?;
        Some((c, pos))
    }

    /// The record of `id`.
    pub fn get(&self, id: NodeId) -> Option<&Record> {
        let (c, pos) = self.find(id)?;
        Some(&self.chunks[c][pos])
    }

    /// The record of `id`, to change its claim or metadata (its address: [`Self::set_addr`]).
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Record> {
        let (c, pos) = self.find(id)?;
        Some(&mut self.chunks[c][pos])
    }

    /// True if `id` has a record.
    pub fn contains(&self, id: NodeId) -> bool {
        self.find(id).is_some()
    }

    /// Adds a record for `id`, replacing any.
    pub fn insert(&mut self, id: NodeId, v: Version, addr: Addr, meta: Arc<Meta>) {
        let mut rec = Record { id, gen: v.gen, inc: v.inc, meta, ip: [0; 4], port: 0, state: v.state, v6: false };
        if let Some(old) = self.get(id) {
            rec.v6 = old.v6;
        }
        pack(&mut self.v6, &mut rec, addr);
        let c = self.chunk_of(id);
        let Some(chunk) = self.chunks.get_mut(c) else {
            self.chunks.push(alloc::vec![rec]);
            self.len += 1;
            return;
        };
        match chunk.binary_search_by_key(&id, |r| r.id) {
            Ok(pos) => chunk[pos] = rec,
            Err(pos) => {
                if chunk.len() == chunk.capacity() {
                    chunk.reserve_exact(CHUNK_GROW);
                }
                chunk.insert(pos, rec);
                self.len += 1;
                if chunk.len() > CHUNK_MAX {
                    let mut right = chunk.split_off(chunk.len() / 2);
                    right.reserve_exact(CHUNK_GROW);
                    chunk.shrink_to(chunk.len() + CHUNK_GROW);
                    self.chunks.insert(c + 1, right);
                }
            }
        }
    }

    /// Removes and returns the record of `id`.
    pub fn remove(&mut self, id: NodeId) -> Option<Record> {
        let (c, pos) = self.find(id)?;
        let chunk = &mut self.chunks[c];
        let rec = chunk.remove(pos);
        if chunk.is_empty() {
            self.chunks.remove(c);
        } else if chunk.capacity() > chunk.len() + 2 * CHUNK_GROW {
            chunk.shrink_to(chunk.len() + CHUNK_GROW);
        }
        self.len -= 1;
        if rec.v6 {
            self.v6.remove(&id);
        }
        Some(rec)
    }

    /// Every record, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Record> + '_ {
        self.chunks.iter().flatten()
    }

    /// The address of `rec`.
    pub fn addr(&self, rec: &Record) -> Addr {
        if rec.v6 {
            return self.v6.get(&rec.id).map_or(Addr::UNSPECIFIED, |a| Addr(*a));
        }
        let [a, b, c, d] = rec.ip;
        Addr::v4(a, b, c, d, rec.port)
    }

    /// The address of `id`, if it has a record.
    pub fn addr_of(&self, id: NodeId) -> Option<Addr> {
        self.get(id).map(|r| self.addr(r))
    }

    /// Changes the address of `id`'s record.
    pub fn set_addr(&mut self, id: NodeId, addr: Addr) {
        let Some((c, pos)) = self.find(id) else { return };
        pack(&mut self.v6, &mut self.chunks[c][pos], addr);
    }

    /// The public view of `rec`.
    pub fn member(&self, rec: &Record) -> Member {
        Member { id: rec.id, addr: self.addr(rec), version: rec.version(), meta: rec.meta.clone() }
    }

    /// Panics if the chunks are out of order, empty, or miscounted, or the side map disagrees.
    pub fn check(&self) {
        let mut last: Option<NodeId> = None;
        let mut n = 0;
        let mut v6 = 0;
        for c in &self.chunks {
            assert!(!c.is_empty() && c.len() <= CHUNK_MAX, "member table chunk of {} records", c.len());
            for r in c {
                assert!(last.is_none_or(|l| l < r.id), "member table out of order at {}", r.id);
                last = Some(r.id);
                n += 1;
                if r.v6 {
                    v6 += 1;
                    assert!(self.v6.contains_key(&r.id), "IPv6 address of {} missing", r.id);
                }
            }
        }
        assert_eq!(n, self.len, "member table miscounted");
        assert_eq!(v6, self.v6.len(), "IPv6 side map out of step");
    }
}

/// Stores `addr` in `rec`, inline when IPv4, else in the side map `v6`.
fn pack(v6: &mut BTreeMap<NodeId, SocketAddr>, rec: &mut Record, addr: Addr) {
    match addr.0 {
        SocketAddr::V4(a) => {
            if rec.v6 {
                v6.remove(&rec.id);
            }
            rec.ip = a.ip().octets();
            rec.port = a.port();
            rec.v6 = false;
        }
        SocketAddr::V6(_) => {
            v6.insert(rec.id, addr.0);
            rec.ip = [0; 4];
            rec.port = 0;
            rec.v6 = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::{IpAddr, Ipv6Addr};
    use proptest::prelude::*;

    fn v(gen: u64) -> Version {
        Version { gen, inc: 0, state: State::Alive }
    }

    #[test]
    fn a_record_is_forty_bytes() {
        assert_eq!(core::mem::size_of::<Record>(), 40);
    }

    #[test]
    fn ipv6_addresses_live_in_the_side_map_and_leave_with_the_record() {
        let mut t = MemberTable::default();
        let six = Addr(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 9));
        t.insert(NodeId(1), v(1), six, Arc::default());
        t.insert(NodeId(2), v(1), Addr::v4(10, 0, 0, 2, 7), Arc::default());
        assert_eq!(t.addr_of(NodeId(1)), Some(six));
        assert_eq!(t.addr_of(NodeId(2)), Some(Addr::v4(10, 0, 0, 2, 7)));
        t.set_addr(NodeId(1), Addr::v4(10, 0, 0, 1, 7));
        assert_eq!(t.addr_of(NodeId(1)), Some(Addr::v4(10, 0, 0, 1, 7)));
        t.set_addr(NodeId(2), six);
        t.check();
        assert!(t.remove(NodeId(2)).is_some());
        t.check();
        assert_eq!(t.v6.len(), 0);
    }

    proptest! {
        /// The table behaves as a `BTreeMap` of the same records under any inserts and removes.
        #[test]
        fn the_table_matches_a_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u64..600, 0u64..4), 1..1500)) {
            let mut t = MemberTable::default();
            let mut m = BTreeMap::new();
            for (ins, id, gen) in ops {
                let id = NodeId(id);
                if ins {
                    let addr = Addr::v4(10, 0, (id.0 >> 8) as u8, id.0 as u8, gen as u16);
                    t.insert(id, v(gen), addr, Arc::default());
                    m.insert(id, (gen, addr));
                } else {
                    prop_assert_eq!(t.remove(id).map(|r| r.gen), m.remove(&id).map(|(g, _)| g));
                }
            }
            t.check();
            prop_assert_eq!(t.len(), m.len());
            let got: Vec<(NodeId, u64, Addr)> = t.iter().map(|r| (r.id, r.gen, t.addr(r))).collect();
            let want: Vec<(NodeId, u64, Addr)> = m.iter().map(|(id, (g, a))| (*id, *g, *a)).collect();
            prop_assert_eq!(got, want);
            for id in 0..600 {
                prop_assert_eq!(t.get(NodeId(id)).map(|r| r.gen), m.get(&NodeId(id)).map(|(g, _)| *g));
            }
        }
    }
}
