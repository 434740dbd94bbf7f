//! The member table: compact records in a dense vector with a hash index by id, because a member
//! keeps one record for every other member, a simulation of n members holds n² of them, and
//! every gossip update and full-state record received is a lookup.
//!
//! A record is 40 bytes: id, generation, incarnation, a shared pointer to the metadata, an IPv4
//! address inline (IPv6 addresses, rarer, live in a side map), and the state. The index holds
//! 4-byte slot numbers in a `hashbrown` table keyed by a fixed mix of the id, so a lookup costs
//! a control-byte probe, a slot and the record: about three cache lines where a binary search
//! over thousands of records touches a dozen. Iteration is in slot order, which is the order
//! records were inserted with removals filled from the end: a function of this member's inputs
//! only, so outputs stay deterministic, and never the hash order.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::net::SocketAddr;
use hashbrown::HashTable;

use super::member::{Addr, Member, SharedMeta, State, Version};
use crate::NodeId;

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
    pub meta: SharedMeta,
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

/// The index's hash of an id: the splitmix64 finaliser, fixed so that nothing depends on a
/// process-wide seed, and well mixed so sequential ids spread over the table's buckets.
fn hash_id(id: NodeId) -> u64 {
    let mut z = id.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Records by id. See the [module docs](self).
#[derive(Default)]
pub(crate) struct MemberTable {
    /// Every record, densely.
    recs: Vec<Record>,
    /// Slot in `recs` of each id.
    index: HashTable<u32>,
    /// Addresses of records with `v6` set.
    v6: BTreeMap<NodeId, SocketAddr>,
}

impl MemberTable {
    /// Records held.
    pub fn len(&self) -> usize {
        self.recs.len()
    }

    fn slot(&self, id: NodeId) -> Option<usize> {
        let recs = &self.recs;
        self.index.find(hash_id(id), |&s| recs[s as usize].id == id).map(|&s| s as usize)
    }

    /// The slot of `id`'s record, a hint for [`Self::get_hinted`]; `u32::MAX` if it has none.
    pub fn hint_of(&self, id: NodeId) -> u32 {
        self.slot(id).map_or(u32::MAX, |s| s as u32)
    }

    /// The record of `id`, looked for first in slot `hint` (where it was when the hint was
    /// taken; removals move records, so a stale hint costs the usual lookup). Saves the index
    /// probe, a cache miss in a large table, on the probe order's hot path.
    pub fn get_hinted(&self, id: NodeId, hint: u32) -> Option<&Record> {
        match self.recs.get(hint as usize) {
            Some(r) if r.id == id => Some(r),
            _ => self.get(id),
        }
    }

    /// The record of `id`.
    pub fn get(&self, id: NodeId) -> Option<&Record> {
        self.slot(id).map(|s| &self.recs[s])
    }

    /// The record of `id`, to change its claim or metadata (its address: [`Self::set_addr`]).
    pub fn get_mut(&mut self, id: NodeId) -> Option<&mut Record> {
        let s = self.slot(id)?;
        Some(&mut self.recs[s])
    }

    /// True if `id` has a record.
    pub fn contains(&self, id: NodeId) -> bool {
        self.slot(id).is_some()
    }

    /// Adds a record for `id`, replacing any.
    pub fn insert(&mut self, id: NodeId, v: Version, addr: Addr, meta: SharedMeta) {
        let mut rec = Record { id, gen: v.gen, inc: v.inc, meta, ip: [0; 4], port: 0, state: v.state, v6: false };
        if let Some(s) = self.slot(id) {
            rec.v6 = self.recs[s].v6;
            pack(&mut self.v6, &mut rec, addr);
            self.recs[s] = rec;
            return;
        }
        pack(&mut self.v6, &mut rec, addr);
        let Ok(slot) = u32::try_from(self.recs.len()) else { return };
        if self.recs.len() == self.recs.capacity() {
            // Grow by an eighth, not double: n tables of n records leave little unused.
            self.recs.reserve_exact(self.recs.len() / 8 + 8);
        }
        self.recs.push(rec);
        let recs = &self.recs;
        self.index.insert_unique(hash_id(id), slot, |&s| hash_id(recs[s as usize].id));
    }

    /// Removes and returns the record of `id`; the last record moves into its slot.
    pub fn remove(&mut self, id: NodeId) -> Option<Record> {
        let recs = &self.recs;
        let entry = self.index.find_entry(hash_id(id), |&s| recs[s as usize].id == id).ok()?;
        let slot = *entry.get() as usize;
        entry.remove();
        let rec = self.recs.swap_remove(slot);
        if let Some(moved) = self.recs.get(slot) {
            let (moved_id, last) = (moved.id, self.recs.len() as u32);
            if let Some(s) = self.index.find_mut(hash_id(moved_id), |&s| s == last) {
                *s = slot as u32;
            }
        }
        if self.recs.capacity() > self.recs.len() + self.recs.len() / 4 + 16 {
            self.recs.shrink_to(self.recs.len() + self.recs.len() / 8 + 8);
        }
        if rec.v6 {
            self.v6.remove(&id);
        }
        Some(rec)
    }

    /// Every record, in slot order (see the [module docs](self)).
    pub fn iter(&self) -> impl Iterator<Item = &Record> + '_ {
        self.recs.iter()
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
        let Some(s) = self.slot(id) else { return };
        pack(&mut self.v6, &mut self.recs[s], addr);
    }

    /// The public view of `rec`.
    pub fn member(&self, rec: &Record) -> Member {
        Member { id: rec.id, addr: self.addr(rec), version: rec.version(), meta: rec.meta.clone() }
    }

    /// Panics if the index disagrees with the records or the side map with the flags.
    pub fn check(&self) {
        assert_eq!(self.index.len(), self.recs.len(), "member table index miscounted");
        let mut v6 = 0;
        for (s, r) in self.recs.iter().enumerate() {
            assert_eq!(self.slot(r.id), Some(s), "member table index wrong for {}", r.id);
            if r.v6 {
                v6 += 1;
                assert!(self.v6.contains_key(&r.id), "IPv6 address of {} missing", r.id);
            }
        }
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
        t.insert(NodeId(1), v(1), six, SharedMeta::default());
        t.insert(NodeId(2), v(1), Addr::v4(10, 0, 0, 2, 7), SharedMeta::default());
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
        /// The table holds what a `BTreeMap` of the same records holds under any inserts and removes.
        #[test]
        fn the_table_matches_a_btreemap(ops in proptest::collection::vec((any::<bool>(), 0u64..600, 0u64..4), 1..1500)) {
            let mut t = MemberTable::default();
            let mut m = BTreeMap::new();
            // Hints taken part-way through, so removals (which move records) leave many stale.
            let mut hints = Vec::new();
            for (i, (ins, id, gen)) in ops.into_iter().enumerate() {
                let id = NodeId(id);
                if i % 7 == 0 {
                    hints.push((id, t.hint_of(id)));
                }
                if ins {
                    let addr = Addr::v4(10, 0, (id.0 >> 8) as u8, id.0 as u8, gen as u16);
                    t.insert(id, v(gen), addr, SharedMeta::default());
                    m.insert(id, (gen, addr));
                } else {
                    prop_assert_eq!(t.remove(id).map(|r| r.gen), m.remove(&id).map(|(g, _)| g));
                }
            }
            t.check();
            prop_assert_eq!(t.len(), m.len());
            let mut got: Vec<(NodeId, u64, Addr)> = t.iter().map(|r| (r.id, r.gen, t.addr(r))).collect();
            got.sort();
            let want: Vec<(NodeId, u64, Addr)> = m.iter().map(|(id, (g, a))| (*id, *g, *a)).collect();
            prop_assert_eq!(got, want);
            for id in 0..600 {
                prop_assert_eq!(t.get(NodeId(id)).map(|r| r.gen), m.get(&NodeId(id)).map(|(g, _)| *g));
            }
            // A hinted lookup finds exactly what a plain one does, whatever the hint's age.
            for (id, hint) in hints {
                prop_assert_eq!(t.get_hinted(id, hint).map(|r| (r.id, r.gen)), t.get(id).map(|r| (r.id, r.gen)));
            }
        }
    }
}
