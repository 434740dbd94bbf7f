//! The target map: where every shard's replicas and primary should be, given the nodes.
//!
//! The computation is exact and sticky rather than hashed:
//! 1. **Fair shares.** Each shard wants `r = min(rf, eligible nodes)` replicas with at most
//!    `m = ceil(r / domains)` in one failure domain (one per domain when there are enough).
//!    Replicas are shared out to domains by weight, but no domain can hold more than `m` of
//!    each shard, so shares are water-filled under those caps: when one zone is small, it still
//!    holds a replica of every shard and the big zones share the rest. Inside a domain, nodes
//!    share by weight (at most one replica per shard per node). That gives each node a
//!    fractional *fair share*; its integer *quota* is the share rounded down or up, and the
//!    round-ups go first to nodes that already hold more, so quotas follow the current map.
//! 2. **Keep.** Every current replica on an eligible node stays unless it breaks a rule: a
//!    domain over its cap, a shard over its `r`, or a node over its quota (then the node gives
//!    up the shards for which it has the lowest rendezvous score, a stable choice).
//! 3. **Fill.** Missing replicas go, shard by shard, to the domain furthest below its share
//!    among those the shard may still use, and there to the node furthest below its quota.
//! 4. **Repair.** If a fill had to overload a node (a dead end), replicas move from
//!    overloaded nodes to underloaded ones where the rules allow.
//! 5. **Primaries.** One per shard, among its replicas, shared by weight the same way, and a
//!    current primary stays while its node is within its primary quota.
//!
//! Because quotas are exact, balance is within one replica of the fair share, and because
//! everything that obeys the rules is kept, the replicas that move are only those a balanced
//! map must move. [`TargetReport`] says how well each of those held, and what could not be met
//! (too few nodes for the replication factor, too few domains to spread), in plain fields.
//!
//! Same inputs, same target: nodes are visited by id, shards by id, ties break on ids or
//! rendezvous scores, and floating-point steps are done in one fixed order.

use alloc::collections::BTreeSet;
use alloc::vec;
use alloc::vec::Vec;
use core::cmp::Reverse;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::map::{DomainLevel, NodeState, ReplicaState, ShardId, ShardMap, Topology};
use super::plan::Move;
use crate::hash::{key_hash_u64, mix64, node_salt};
use crate::NodeId;

/// How placement spreads replicas and how fast it may move them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementConfig {
    /// The failure-domain level whose domains a shard's replicas must not share.
    pub spread: DomainLevel,
    /// Most moves copying *to* one node at once (in flight plus newly planned).
    pub moves_in_per_node_max: u32,
    /// Most moves copying *from* one node at once.
    pub moves_out_per_node_max: u32,
    /// Most moves one plan may start.
    pub moves_per_plan_max: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            spread: DomainLevel::Zone,
            moves_in_per_node_max: 2,
            moves_out_per_node_max: 2,
            moves_per_plan_max: 4096,
        }
    }
}

/// A configuration field out of range. The error names the field.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PlacementConfigError {
    /// A limit that must be at least 1 was 0.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

impl PlacementConfig {
    /// Checks every limit; call once before planning.
    pub fn validate(&self) -> Result<(), PlacementConfigError> {
        if self.moves_in_per_node_max == 0 {
            return Err(PlacementConfigError::Zero("moves_in_per_node_max"));
        }
        if self.moves_out_per_node_max == 0 {
            return Err(PlacementConfigError::Zero("moves_out_per_node_max"));
        }
        if self.moves_per_plan_max == 0 {
            return Err(PlacementConfigError::Zero("moves_per_plan_max"));
        }
        Ok(())
    }
}

/// Where one shard should be.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSet {
    /// The shard.
    pub shard: ShardId,
    /// Its replicas' nodes, sorted.
    pub replicas: Vec<NodeId>,
    /// Its primary, one of `replicas` (none only when `replicas` is empty).
    pub primary: Option<NodeId>,
}

/// Fewer failure domains than a shard's replicas: they cannot all be apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainShortfall {
    /// The spread level.
    pub level: DomainLevel,
    /// Eligible domains at that level.
    pub domains: usize,
    /// The largest replica count a shard wants.
    pub replicas: usize,
    /// So at most this many replicas of a shard share a domain.
    pub per_domain_max: usize,
}

/// One node's part of the target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// The node.
    pub node: NodeId,
    /// Replicas it holds in the target.
    pub replicas: u32,
    /// Its integer quota.
    pub quota: u32,
    /// Its fair share of replicas by weight under the failure-domain caps.
    pub fair: f64,
    /// Primaries it holds in the target.
    pub primaries: u32,
    /// Its fair share of primaries.
    pub primary_fair: f64,
}

/// How the target turned out, and what it could not do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// Shards placed (all collections).
    pub shards: usize,
    /// Replicas in the target.
    pub replicas: usize,
    /// Active nodes: the only ones that receive replicas.
    pub eligible_nodes: usize,
    /// Distinct failure domains among them at the spread level.
    pub domains: usize,
    /// Shards that get fewer replicas than their replication factor: too few eligible nodes.
    pub under_replicated: usize,
    /// Shards with no readable replica on a node that is up: lost until a node comes back.
    /// They keep their map entry and take no share.
    pub unavailable: usize,
    /// Set when some shard cannot have all its replicas in distinct domains.
    pub domain_shortfall: Option<DomainShortfall>,
    /// Shards with more replicas in one domain than `per_domain_max` allows. Only a dead end
    /// the repair step could not undo leaves one; zero in every case the tests know.
    pub domain_violations: usize,
    /// Nodes above their quota (same remark).
    pub overloaded_nodes: usize,
    /// The fullest node's replicas over its fair share (1.0 is perfect; within one replica).
    pub max_over_mean: f64,
    /// The fullest node's replicas over its plain weight share, ignoring failure domains:
    /// above `max_over_mean` when the domains themselves are unequal.
    pub max_over_weight: f64,
    /// The node with the most primaries over its fair share of primaries.
    pub primary_max_over_mean: f64,
    /// A lower bound on the replica copies of any target in which every shard has its
    /// replicas within the spread rule and every eligible node holds its fair share rounded
    /// down or up: the largest of what nodes below their share must receive, what shards must
    /// re-create (lost, on draining nodes, or over a domain's cap), what nodes above their share
    /// must shed, and what domains cannot keep because shards that have no other way to spread
    /// need their room. The planner's copies over this is its movement overhead.
    pub copies_lower_bound: usize,
    /// Replica copies this target needs: replicas on nodes that do not hold them now.
    pub copies: usize,
    /// Per eligible node, in id order.
    pub loads: Vec<NodeLoad>,
}

/// The target map and its report.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// One entry per shard, in shard order.
    pub sets: Vec<TargetSet>,
    /// How it turned out.
    pub report: TargetReport,
}

/// The replicas a shard will have once in-flight moves finish: every replica except those
/// `Leaving` and the sources of moves in flight, whose targets are already listed.
pub(crate) fn intended(set: &super::map::ReplicaSet, shard: ShardId, in_flight: &[Move]) -> Vec<NodeId> {
    set.replicas
        .iter()
        .filter(|r| r.state != ReplicaState::Leaving)
        .filter(|r| !in_flight.iter().any(|m| m.shard == shard && m.from == Some(r.node)))
        .map(|r| r.node)
        .chain(in_flight.iter().filter(|m| m.shard == shard).map(|m| m.to))
        .fold(Vec::new(), |mut v, n| {
            if !v.contains(&n) {
                v.push(n);
            }
            v
        })
}

/// The hash a shard's rendezvous scores start from.
pub(crate) fn shard_hash(s: ShardId) -> u64 {
    key_hash_u64((u64::from(s.collection.0) << 32) | u64::from(s.index))
}

/// A score in `[0, 1)` of `node` for a shard: the stable preference order among equals.
fn preference(shard_h: u64, salt: u64) -> u64 {
    mix64(shard_h ^ salt)
}

/// How many of the best domains and nodes a fill weighs by preference.
const TIE_WIDTH: usize = 4;

struct Shard {
    id: ShardId,
    hash: u64,
    r: usize,
    m: usize,
}

/// Computes the target map. See the [module docs](crate::placement::target) for the method.
pub fn compute_target(topology: &Topology, map: &ShardMap, cfg: &PlacementConfig, in_flight: &[Move]) -> Target {
    // ----- eligible nodes and their domains -----
    let eligible: Vec<&super::map::Node> = topology.nodes().iter().filter(|n| n.state == NodeState::Active).collect();
    let n = eligible.len();
    let ids: Vec<NodeId> = eligible.iter().map(|x| x.id).collect();
    let salt: Vec<u64> = ids.iter().map(|&id| node_salt(id)).collect();
    let weight: Vec<f64> = eligible.iter().map(|x| f64::from(x.weight)).collect();
    let mut keys: Vec<(u32, u32, u32, u64)> = eligible.iter().map(|x| x.domain(cfg.spread)).collect();
    keys.sort_unstable();
    keys.dedup();
    let domains = keys.len();
    let dom: Vec<usize> =
        eligible.iter().map(|x| keys.binary_search(&x.domain(cfg.spread)).unwrap_or_default()).collect();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); domains];
    for (i, &d) in dom.iter().enumerate() {
        members[d].push(i);
    }
    let index_of = |id: NodeId| ids.binary_search(&id).ok();
    let sizes: Vec<usize> = members.iter().map(Vec::len).collect();

    // ----- shards and their current (intended) replicas on eligible nodes -----
    let mut shards = Vec::with_capacity(map.shard_count());
    let mut current: Vec<Vec<usize>> = Vec::with_capacity(map.shard_count());
    let mut current_primary: Vec<Option<usize>> = Vec::with_capacity(map.shard_count());
    let mut under_replicated = 0;
    let mut widest = 0usize;
    let mut unavailable = 0;
    let mut lost: Vec<bool> = Vec::with_capacity(map.shard_count());
    for (id, rf, set) in map.shards() {
        // A shard whose every replica is on a failed node has nothing to copy from: it keeps
        // its map entry, takes no share, and is reported.
        let is_lost = !set.replicas.is_empty() && set.readable_up(topology) == 0;
        unavailable += usize::from(is_lost);
        lost.push(is_lost);
        let r = if is_lost { 0 } else { usize::from(rf).min(n) };
        under_replicated += usize::from(!is_lost && r < usize::from(rf));
        let m = per_domain_max(r, &sizes);
        widest = widest.max(r);
        shards.push(Shard { id, hash: shard_hash(id), r, m });
        let cur: Vec<usize> = intended(set, id, in_flight).into_iter().filter_map(index_of).collect();
        current_primary.push(set.primary.and_then(index_of).filter(|p| cur.contains(p)));
        current.push(cur);
    }
    let s_count = shards.len();
    let mut cur_load = vec![0u32; n];
    for cur in &current {
        for &i in cur {
            cur_load[i] += 1;
        }
    }

    // ----- fair shares and quotas -----
    let total: u64 = shards.iter().map(|s| s.r as u64).sum();
    let mut per_m = [0u64; super::map::RF_MAX as usize + 1];
    for s in &shards {
        per_m[s.m] += 1;
    }
    let dom_cap: Vec<f64> = members
        .iter()
        .map(|mem| per_m.iter().enumerate().map(|(m, &c)| c * (m.min(mem.len()) as u64)).sum::<u64>() as f64)
        .collect();
    let dom_weight: Vec<f64> = members.iter().map(|mem| mem.iter().map(|&i| weight[i]).sum()).collect();
    // What each domain must hold at least: a shard whose other domains cannot take all its
    // replicas must put the rest here (rf 3 over 3 zones: one in every zone, however small).
    let mut dom_floor = vec![0f64; domains];
    for s in &shards {
        let room: usize = sizes.iter().map(|&c| c.min(s.m)).sum();
        for d in 0..domains {
            dom_floor[d] += s.r.saturating_sub(room - sizes[d].min(s.m)) as f64;
        }
    }
    let dom_fair = water_fill_bounded(total as f64, &dom_weight, &dom_floor, &dom_cap);
    let dom_cur: Vec<u32> = members.iter().map(|mem| mem.iter().map(|&i| cur_load[i]).sum()).collect();
    let dom_quota = round_sticky(&dom_fair, &dom_cur, total, &dom_cap);
    let mut fair = vec![0f64; n];
    let mut quota = vec![0u32; n];
    // A node holds at most one replica of each shard that is placed at all.
    let node_cap = shards.iter().filter(|s| s.r > 0).count() as f64;
    for (d, mem) in members.iter().enumerate() {
        let w: Vec<f64> = mem.iter().map(|&i| weight[i]).collect();
        let caps = vec![node_cap; mem.len()];
        let f = water_fill(dom_fair[d], &w, &caps);
        let cur: Vec<u32> = mem.iter().map(|&i| cur_load[i]).collect();
        let q = round_sticky(&f, &cur, u64::from(dom_quota[d]), &caps);
        for (k, &i) in mem.iter().enumerate() {
            fair[i] = f[k];
            quota[i] = q[k];
        }
    }

    // ----- keep what obeys the rules -----
    // A shard with more replicas than its rules allow keeps those on the nodes with the most
    // quota left so far, so the replicas it gives up come from nodes that must shrink anyway.
    let mut kept: Vec<Vec<usize>> = Vec::with_capacity(s_count);
    let mut load = vec![0u32; n];
    for (s, cur) in shards.iter().zip(&current) {
        let mut keep: Vec<usize> = Vec::with_capacity(s.r);
        let fits_all = cur.len() <= s.r && {
            let mut ds: Vec<usize> = cur.iter().map(|&i| dom[i]).collect();
            ds.sort_unstable();
            ds.windows(s.m.max(1) + 1).all(|w| w[0] != w[s.m.max(1)]) || s.m == 0
        };
        if fits_all && s.m > 0 {
            keep.extend_from_slice(cur);
        } else {
            let mut order = cur.clone();
            order.sort_by_key(|&i| {
                (Reverse(i64::from(quota[i]) - i64::from(load[i])), Reverse(preference(s.hash, salt[i])), i)
            });
            for i in order {
                if keep.len() < s.r && keep.iter().filter(|&&k| dom[k] == dom[i]).count() < s.m {
                    keep.push(i);
                }
            }
        }
        for &i in &keep {
            load[i] += 1;
        }
        kept.push(keep);
    }
    // ----- fill: emptiest shards first -----
    let mut node_heap: Vec<BTreeSet<(Reverse<i64>, usize)>> = vec![BTreeSet::new(); domains];
    let deficit = |i: usize, load: &[u32]| i64::from(quota[i]) - i64::from(load[i]);
    for i in 0..n {
        if deficit(i, &load) > 0 {
            node_heap[dom[i]].insert((Reverse(deficit(i, &load)), i));
        }
    }
    let mut dom_need: Vec<i64> = (0..domains)
        .map(|d| i64::from(dom_quota[d]) - members[d].iter().map(|&i| i64::from(load[i])).sum::<i64>())
        .collect();
    let mut dom_heap: BTreeSet<(Reverse<i64>, usize)> =
        (0..domains).filter(|&d| !node_heap[d].is_empty()).map(|d| (Reverse(dom_need[d]), d)).collect();
    // Emptiest shards first, and among those the ones with the fewest domains left to use, so
    // a shard that can only go one way is not left without room by shards that had a choice.
    let mut order: Vec<(usize, usize, usize)> = (0..s_count)
        .filter(|&si| kept[si].len() < shards[si].r)
        .map(|si| {
            let open =
                (0..domains).filter(|&d| kept[si].iter().filter(|&&k| dom[k] == d).count() < shards[si].m).count();
            (kept[si].len(), open, si)
        })
        .collect();
    order.sort_unstable();
    for (_, _, si) in order {
        while kept[si].len() < shards[si].r {
            let s = &shards[si];
            let in_domain = |d: usize, kept: &[usize]| kept.iter().filter(|&&k| dom[k] == d).count();
            // Among the few domains that need the most, and the few nodes with the most room
            // in each, the shard's rendezvous preference decides: ties are common (at first
            // every node has the same room), and breaking them by id would pair the same
            // nodes and zones again and again, leaving nodes whose shards all share a zone.
            let mut best: Option<((i64, i64, u64), usize)> = None;
            let mut domains_seen = 0;
            for &(Reverse(need), d) in dom_heap.iter() {
                if domains_seen == TIE_WIDTH || best.is_some_and(|(k, _)| k.0 > need) {
                    break;
                }
                if in_domain(d, &kept[si]) >= s.m {
                    continue;
                }
                let mut nodes_seen = 0;
                for &(Reverse(room), i) in node_heap[d].iter() {
                    if nodes_seen == TIE_WIDTH {
                        break;
                    }
                    if kept[si].contains(&i) {
                        continue;
                    }
                    nodes_seen += 1;
                    let key = (need, room, preference(s.hash, salt[i]));
                    if best.is_none_or(|(k, _)| key > k) {
                        best = Some((key, i));
                    }
                }
                domains_seen += usize::from(nodes_seen > 0);
            }
            let mut pick = best.map(|(_, i)| i);
            if pick.is_none() {
                // A dead end: every node with room already holds this shard or sits in a full
                // domain. Overload the least loaded allowed node; the repair step fixes it.
                pick = (0..n)
                    .filter(|&i| !kept[si].contains(&i) && in_domain(dom[i], &kept[si]) < s.m)
                    .min_by(|&a, &b| ratio(load[a] + 1, quota[a]).total_cmp(&ratio(load[b] + 1, quota[b])));
            }
            let Some(i) = pick else { break };
            let d = dom[i];
            node_heap[d].remove(&(Reverse(deficit(i, &load)), i));
            dom_heap.remove(&(Reverse(dom_need[d]), d));
            kept[si].push(i);
            load[i] += 1;
            dom_need[d] -= 1;
            if deficit(i, &load) > 0 {
                node_heap[d].insert((Reverse(deficit(i, &load)), i));
            }
            if !node_heap[d].is_empty() {
                dom_heap.insert((Reverse(dom_need[d]), d));
            }
        }
    }
    // ----- shed: nodes over quota hand replicas to nodes under it, then along chains -----
    shed_overload(&shards, &current, &mut kept, &mut load, &quota, &dom, &salt);
    repair_overload(&shards, &mut kept, &mut load, &quota, &dom);

    // ----- primaries -----
    let placed: Vec<usize> = (0..s_count).filter(|&si| !kept[si].is_empty()).collect();
    let p_caps: Vec<f64> = load.iter().map(|&l| f64::from(l)).collect();
    let p_fair = water_fill(placed.len() as f64, &weight, &p_caps);
    let mut p_cur = vec![0u32; n];
    for p in current_primary.iter().flatten() {
        p_cur[*p] += 1;
    }
    let p_quota = round_sticky(&p_fair, &p_cur, placed.len() as u64, &p_caps);
    let mut p_count = vec![0u32; n];
    let mut primary: Vec<Option<usize>> = vec![None; s_count];
    for &si in &placed {
        if let Some(p) = current_primary[si].filter(|p| kept[si].contains(p) && p_count[*p] < p_quota[*p]) {
            primary[si] = Some(p);
            p_count[p] += 1;
        }
    }
    for &si in &placed {
        if primary[si].is_some() {
            continue;
        }
        let h = shards[si].hash;
        let best = kept[si].iter().copied().max_by_key(|&i| {
            (i64::from(p_quota[i]) - i64::from(p_count[i]), current[si].contains(&i), preference(h, salt[i]))
        });
        if let Some(p) = best {
            primary[si] = Some(p);
            p_count[p] += 1;
        }
    }
    balance_primaries(&kept, &mut primary, &mut p_count, &p_quota);

    // ----- report -----
    let mut sets = Vec::with_capacity(s_count);
    let mut copies = 0usize;
    let mut domain_violations = 0usize;
    for (si, s) in shards.iter().enumerate() {
        copies += kept[si].iter().filter(|i| !current[si].contains(i)).count();
        if (0..domains).any(|d| kept[si].iter().filter(|&&k| dom[k] == d).count() > s.m) {
            domain_violations += 1;
        }
        let mut replicas: Vec<NodeId> = if lost[si] {
            map.get(s.id).map(|set| set.replicas.iter().map(|r| r.node).collect()).unwrap_or_default()
        } else {
            kept[si].iter().map(|&i| ids[i]).collect()
        };
        replicas.sort_unstable();
        sets.push(TargetSet { shard: s.id, replicas, primary: primary[si].map(|i| ids[i]) });
    }
    let lb_fill: u64 =
        (0..n).map(|i| (libm::floor(fair[i] + 1e-9) as u64).saturating_sub(u64::from(cur_load[i]))).sum();
    // Replicas a shard can keep: at most r, at most m per domain, only on eligible nodes.
    let keepable: usize = shards
        .iter()
        .zip(&current)
        .map(|(s, c)| {
            let mut per = vec![0usize; domains];
            c.iter()
                .map(|&i| dom[i])
                .fold(0, |acc, d| {
                    per[d] += 1;
                    acc + usize::from(per[d] <= s.m)
                })
                .min(s.r)
        })
        .sum();
    let lb_shards = (total as usize).saturating_sub(keepable);
    // Replicas nodes can keep: no node ends above its fair share rounded up.
    let node_keepable: u64 =
        (0..n).map(|i| u64::from(cur_load[i]).min(libm::ceil(fair[i] - 1e-9).max(0.0) as u64)).sum();
    let lb_nodes = total.saturating_sub(node_keepable) as usize;
    // Per domain: what it can keep is bounded by the shards' caps, by its nodes' rounded-up
    // shares less the copies it is forced to receive (a shard whose other domains cannot hold
    // all its replicas must have some here), and by what its nodes hold now.
    let mut dom_keep = vec![0u64; domains];
    let mut dom_forced = vec![0u64; domains];
    let mut per = vec![0usize; domains];
    for (s, c) in shards.iter().zip(&current) {
        per.iter_mut().for_each(|x| *x = 0);
        for &i in c {
            per[dom[i]] += 1;
        }
        let room_all: usize = members.iter().map(|mem| s.m.min(mem.len())).sum();
        for d in 0..domains {
            let kept_here = per[d].min(s.m);
            dom_keep[d] += kept_here as u64;
            let elsewhere = room_all - s.m.min(members[d].len());
            let need_here = s.r.saturating_sub(elsewhere);
            dom_forced[d] += need_here.saturating_sub(kept_here) as u64;
        }
    }
    let dom_keepable: u64 = (0..domains)
        .map(|d| {
            let ceil: u64 = members[d].iter().map(|&i| libm::ceil(fair[i] - 1e-9).max(0.0) as u64).sum();
            let nodes: u64 = members[d]
                .iter()
                .map(|&i| u64::from(cur_load[i]).min(libm::ceil(fair[i] - 1e-9).max(0.0) as u64))
                .sum();
            dom_keep[d].min(ceil.saturating_sub(dom_forced[d])).min(nodes)
        })
        .sum();
    let lb_domains = total.saturating_sub(dom_keepable) as usize;
    let total_weight: f64 = weight.iter().sum();
    let mut report = TargetReport {
        shards: s_count,
        replicas: load.iter().map(|&l| l as usize).sum(),
        eligible_nodes: n,
        domains,
        under_replicated,
        unavailable,
        domain_shortfall: (per_domain_max(widest, &sizes) > 1 && n > 0).then(|| DomainShortfall {
            level: cfg.spread,
            domains,
            replicas: widest,
            per_domain_max: per_domain_max(widest, &sizes),
        }),
        domain_violations,
        overloaded_nodes: (0..n).filter(|&i| load[i] > quota[i]).count(),
        max_over_mean: 0.0,
        max_over_weight: 0.0,
        primary_max_over_mean: 0.0,
        copies_lower_bound: (lb_fill as usize).max(lb_shards).max(lb_nodes).max(lb_domains),
        copies,
        loads: Vec::with_capacity(n),
    };
    for i in 0..n {
        report.max_over_mean = report.max_over_mean.max(share(load[i], fair[i]));
        report.max_over_weight = report.max_over_weight.max(share(load[i], total as f64 * weight[i] / total_weight));
        report.primary_max_over_mean = report.primary_max_over_mean.max(share(p_count[i], p_fair[i]));
        report.loads.push(NodeLoad {
            node: ids[i],
            replicas: load[i],
            quota: quota[i],
            fair: fair[i],
            primaries: p_count[i],
            primary_fair: p_fair[i],
        });
    }
    Target { sets, report }
}

/// The fewest replicas of one shard that must share a domain: the smallest `m` for which
/// domains holding at most `m` each (and at most one per node) can hold all `r`. With enough
/// domains that is 1; with domains of unequal size, small ones fill first.
pub fn per_domain_max(r: usize, domain_sizes: &[usize]) -> usize {
    (1..=r).find(|&m| domain_sizes.iter().map(|&n| n.min(m)).sum::<usize>() >= r).unwrap_or(r)
}

/// `count / fair`, with nothing-over-nothing as a perfect 1 and something-over-nothing as
/// infinitely overloaded.
fn share(count: u32, fair: f64) -> f64 {
    if fair > 1e-12 {
        f64::from(count) / fair
    } else if count == 0 {
        1.0
    } else {
        f64::INFINITY
    }
}

fn ratio(load: u32, quota: u32) -> f64 {
    f64::from(load) / f64::from(quota.max(1)) + if quota == 0 { 1e6 } else { 0.0 }
}

/// Nodes over quota (they held more than the new quotas allow, or a fill had to overload them)
/// hand replicas straight to nodes under quota: for each, the shards it prefers least first,
/// each to a node that still holds the shard's data if one has room (no copy at all), else to
/// the node with the most room that may take it.
fn shed_overload(
    shards: &[Shard],
    current: &[Vec<usize>],
    kept: &mut [Vec<usize>],
    load: &mut [u32],
    quota: &[u32],
    dom: &[usize],
    salt: &[u64],
) {
    let n = load.len();
    let mut over: Vec<usize> = (0..n).filter(|&i| load[i] > quota[i]).collect();
    if over.is_empty() {
        return;
    }
    let room = |j: usize, load: &[u32]| i64::from(quota[j]) - i64::from(load[j]);
    let mut under: BTreeSet<(Reverse<i64>, usize)> =
        (0..n).filter(|&j| load[j] < quota[j]).map(|j| (Reverse(room(j, load)), j)).collect();
    let fits = |si: usize, i: usize, j: usize, kept: &[Vec<usize>]| {
        !kept[si].contains(&j)
            && (dom[j] == dom[i] || kept[si].iter().filter(|&&k| dom[k] == dom[j]).count() < shards[si].m)
    };
    // Options are scarce when many nodes must shed into few: nodes with the fewest options go
    // first, and each sheds first the shards that fewest other full nodes could shed.
    let mut holding: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut rivals = vec![0u32; shards.len()];
    for (si, k) in kept.iter().enumerate() {
        for &i in k {
            if load[i] > quota[i] && under.iter().any(|&(_, j)| fits(si, i, j, kept)) {
                holding[i].push(si);
                rivals[si] += 1;
            }
        }
    }
    over.sort_by_key(|&i| (holding[i].len(), i));
    for i in over {
        let mut mine = core::mem::take(&mut holding[i]);
        mine.sort_by_key(|&si| (rivals[si], preference(shards[si].hash, salt[i])));
        for si in mine {
            if load[i] <= quota[i] || under.is_empty() {
                break;
            }
            // A node that still holds the shard's data takes it back for free; else the node
            // with the most room.
            let free = current[si].iter().copied().find(|&j| load[j] < quota[j] && fits(si, i, j, kept));
            let Some(j) = free.or_else(|| under.iter().map(|&(_, j)| j).find(|&j| fits(si, i, j, kept))) else {
                continue;
            };
            under.remove(&(Reverse(room(j, load)), j));
            for k in kept[si].iter_mut().filter(|k| **k == i) {
                *k = j;
            }
            load[i] -= 1;
            load[j] += 1;
            if load[j] < quota[j] {
                under.insert((Reverse(room(j, load)), j));
            }
        }
    }
}

/// Moves replicas off overloaded nodes onto nodes with room, where the spread allows. When no
/// single move works (every shard on the full node already has a replica on the empty one), a
/// chain does: a breadth-first search over nodes finds `full -> a -> b -> ... -> empty`, each
/// step a shard that may move, and the chain shifts one replica along every step.
fn repair_overload(shards: &[Shard], kept: &mut [Vec<usize>], load: &mut [u32], quota: &[u32], dom: &[usize]) {
    let n = load.len();
    let mut on_node: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (si, k) in kept.iter().enumerate() {
        for &i in k {
            on_node[i].push(si);
        }
    }
    let movable = |si: usize, from: usize, to: usize, kept: &[Vec<usize>]| {
        !kept[si].contains(&to)
            && (dom[to] == dom[from] || kept[si].iter().filter(|&&k| dom[k] == dom[to]).count() < shards[si].m)
    };
    while let Some(src) = (0..n).find(|&i| load[i] > quota[i]) {
        let mut prev: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut seen = vec![false; n];
        seen[src] = true;
        let mut queue = alloc::collections::VecDeque::from([src]);
        let mut found = None;
        'search: while let Some(u) = queue.pop_front() {
            for v in 0..n {
                if seen[v] {
                    continue;
                }
                if let Some(&si) = on_node[u].iter().find(|&&si| movable(si, u, v, kept)) {
                    seen[v] = true;
                    prev[v] = Some((u, si));
                    if load[v] < quota[v] {
                        found = Some(v);
                        break 'search;
                    }
                    queue.push_back(v);
                }
            }
        }
        let Some(dst) = found else { return };
        // Shift along the chain from its far end, checking each step again: a shard met twice
        // could make a later step illegal. Then give up rather than break a rule.
        let mut v = dst;
        while let Some((u, si)) = prev[v] {
            if !movable(si, u, v, kept) {
                return;
            }
            for k in kept[si].iter_mut().filter(|k| **k == u) {
                *k = v;
            }
            on_node[u].retain(|&x| x != si);
            on_node[v].push(si);
            v = u;
        }
        load[src] -= 1;
        load[dst] += 1;
    }
}

/// Hands primary roles from nodes over their primary quota to nodes under it, along chains of
/// shards whose replicas both nodes hold (a breadth-first search, like [`repair_overload`]).
fn balance_primaries(kept: &[Vec<usize>], primary: &mut [Option<usize>], count: &mut [u32], quota: &[u32]) {
    let n = count.len();
    let mut led: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (si, p) in primary.iter().enumerate() {
        if let Some(p) = *p {
            led[p].push(si);
        }
    }
    while let Some(src) = (0..n).find(|&i| count[i] > quota[i]) {
        let mut prev: Vec<Option<(usize, usize)>> = vec![None; n];
        let mut seen = vec![false; n];
        seen[src] = true;
        let mut queue = alloc::collections::VecDeque::from([src]);
        let mut found = None;
        'search: while let Some(u) = queue.pop_front() {
            for &si in &led[u] {
                for &v in &kept[si] {
                    if seen[v] {
                        continue;
                    }
                    seen[v] = true;
                    prev[v] = Some((u, si));
                    if count[v] < quota[v] {
                        found = Some(v);
                        break 'search;
                    }
                    queue.push_back(v);
                }
            }
        }
        let Some(dst) = found else { return };
        let mut v = dst;
        while let Some((u, si)) = prev[v] {
            primary[si] = Some(v);
            led[u].retain(|&x| x != si);
            led[v].push(si);
            v = u;
        }
        count[src] -= 1;
        count[dst] += 1;
    }
}

/// Shares `total` by `weights` without giving anyone more than its cap: whoever would get more
/// gets its cap, and the rest is shared again among the others.
pub(crate) fn water_fill(total: f64, weights: &[f64], caps: &[f64]) -> Vec<f64> {
    water_fill_bounded(total, weights, &vec![0.0; weights.len()], caps)
}

/// Shares `total` as `clamp(level × weight, low, high)` for the one level that makes the shares
/// add up (when `Σ low <= total <= Σ high`). Each round fixes, at their bound, whichever side
/// overshoots more in total, the below-floor or the above-cap, and shares again.
pub(crate) fn water_fill_bounded(total: f64, weights: &[f64], low: &[f64], high: &[f64]) -> Vec<f64> {
    let n = weights.len();
    let mut out = vec![0f64; n];
    let mut fixed = vec![false; n];
    for i in 0..n {
        if weights[i] <= 0.0 || high[i] <= low[i] {
            out[i] = low[i].min(high[i]);
            fixed[i] = true;
        }
    }
    for _ in 0..=n {
        let left = total - (0..n).filter(|&i| fixed[i]).map(|i| out[i]).sum::<f64>();
        let w: f64 = (0..n).filter(|&i| !fixed[i]).map(|i| weights[i]).sum();
        if w <= 0.0 {
            break;
        }
        let level = left.max(0.0) / w;
        let (mut under, mut over) = (0f64, 0f64);
        for i in (0..n).filter(|&i| !fixed[i]) {
            let v = level * weights[i];
            under += (low[i] - v).max(0.0);
            over += (v - high[i]).max(0.0);
        }
        if under <= 1e-12 && over <= 1e-12 {
            for i in (0..n).filter(|&i| !fixed[i]) {
                out[i] = level * weights[i];
            }
            break;
        }
        for i in 0..n {
            if fixed[i] {
                continue;
            }
            let v = level * weights[i];
            if under >= over && v < low[i] {
                out[i] = low[i];
                fixed[i] = true;
            } else if under < over && v > high[i] {
                out[i] = high[i];
                fixed[i] = true;
            }
        }
    }
    out
}

/// Rounds `fair` shares to integers summing to `total` (when the caps allow): everyone gets
/// the share rounded down, and the remaining units go first to those currently holding more
/// than that, then to the largest fractions, then to the lowest index.
pub(crate) fn round_sticky(fair: &[f64], current: &[u32], total: u64, caps: &[f64]) -> Vec<u32> {
    let mut q: Vec<u32> = fair.iter().zip(caps).map(|(&f, &c)| libm::floor(f + 1e-9).min(c) as u32).collect();
    let mut left = total.saturating_sub(q.iter().map(|&x| u64::from(x)).sum());
    let mut order: Vec<usize> = (0..fair.len()).filter(|&i| f64::from(q[i]) + 1.0 <= caps[i] + 1e-9).collect();
    order.sort_by(|&a, &b| {
        let holds = |i: usize| current[i] > q[i];
        holds(b)
            .cmp(&holds(a))
            .then((fair[b] - f64::from(q[b])).total_cmp(&(fair[a] - f64::from(q[a]))))
            .then(a.cmp(&b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        // Only shares with a fraction round up, unless the caps force more.
        if fair[i] - f64::from(q[i]) > 1e-9 {
            q[i] += 1;
            left -= 1;
        }
    }
    // Float slack can leave a unit over; give it to anyone with room, lowest index first.
    for i in 0..q.len() {
        if left == 0 {
            break;
        }
        if f64::from(q[i]) + 1.0 <= caps[i] + 1e-9 {
            q[i] += 1;
            left -= 1;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_fill_respects_caps_and_weights() {
        let f = water_fill(30.0, &[10.0, 1.0, 1.0], &[10.0, 10.0, 10.0]);
        assert_eq!(f, vec![10.0, 10.0, 10.0]);
        let f = water_fill(12.0, &[1.0, 3.0], &[100.0, 100.0]);
        assert_eq!(f, vec![3.0, 9.0]);
        let f = water_fill(10.0, &[1.0, 1.0, 2.0], &[1.0, 100.0, 100.0]);
        assert_eq!(f, vec![1.0, 3.0, 6.0]);
        assert_eq!(water_fill(5.0, &[], &[]), Vec::<f64>::new());
        // A floor: the small domain must hold 8 even though its weight asks for 2.
        let f = water_fill_bounded(38.0, &[300.0, 300.0, 300.0, 50.0], &[0.0, 0.0, 0.0, 8.0], &[11.0; 4]);
        assert_eq!(f, vec![10.0, 10.0, 10.0, 8.0]);
        let f = water_fill_bounded(10.0, &[1.0, 1.0], &[0.0, 0.0], &[3.0, 3.0]);
        assert_eq!(f, vec![3.0, 3.0], "more than the caps allow: everyone at the cap");
    }

    #[test]
    fn sticky_rounding_favours_current_holders() {
        let fair = [1.5, 1.5, 1.0];
        assert_eq!(round_sticky(&fair, &[0, 2, 0], 4, &[9.0; 3]), vec![1, 2, 1]);
        assert_eq!(round_sticky(&fair, &[2, 0, 0], 4, &[9.0; 3]), vec![2, 1, 1]);
        assert_eq!(round_sticky(&[0.4, 0.6], &[0, 0], 1, &[9.0; 2]), vec![0, 1]);
        let q = round_sticky(&[3.3, 3.3, 3.4], &[0, 0, 0], 10, &[9.0; 3]);
        assert_eq!(q.iter().sum::<u32>(), 10);
    }
}
