//! The real runtime under madsim: `quorate` nodes on simulated UDP, clock and disks.
//!
//! Each seed builds a madsim world: N nodes running [`quorate_runtime::node::run_on`] unchanged,
//! each on its own simulated disk ([`SimVfs`]) kept across restarts; client nodes issuing put,
//! get, cas and delete through the client protocol with retries; and a fault schedule drawn from
//! the seed: partitions (isolation, one-way links, bridges, splits), loss and latency changes,
//! kills (unsynced writes lost, tails torn, bits flipped) and restarts, pauses, and membership
//! changes and leadership transfers through the admin protocol. Then every fault heals.
//!
//! Checks: the client history is linearizable (the checker of [`crate::linearizability`]);
//! every node reports the same entry at each applied index and one leader per term; SWIM
//! agrees once healed; and operations invoked after healing complete.
//!
//! Only built with `--cfg madsim` (see `scripts/madsim`); the same seed gives the same trace.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle, Runtime};
use quorate_core::raft::{LogIndex, Role, Term};
use quorate_core::{fnv1a64, fnv1a64_extend, NodeId};
use quorate_runtime::client::{Client, ClientError, KvOps};
use quorate_runtime::config::{InitialMember, NodeConfig};
use quorate_runtime::metrics::Metrics;
use quorate_runtime::node::{self, NodeEvent, NodeOptions};
use quorate_runtime::protocol::{AdminOp, Op as ClientOp, Reply, WriteOp};
use quorate_runtime::storage::vfs::{SimFaults, SimVfs};
use quorate_runtime::transport::ClusterKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::sync::mpsc;

use crate::linearizability::{Completion, History, Op};

/// One run's settings.
#[derive(Clone, Debug)]
pub struct RuntimeSimConfig {
    /// The seed: it fixes everything.
    pub seed: u64,
    /// Cluster size (3 to 7).
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys.
    pub keys: u32,
    /// Virtual seconds of faults.
    pub chaos_secs: u64,
    /// Virtual seconds after healing.
    pub healed_secs: u64,
    /// Inject faults.
    pub faults: bool,
    /// A planted runtime bug (feature `planted-bugs`).
    pub planted: Option<String>,
    /// Whether a follower writes and syncs its log on its own loop (`storage.inline_when_following`)
    /// or hands it to the storage task; [`RuntimeSimConfig::new`] picks it from the seed, so a
    /// sweep covers both.
    pub inline_when_following: bool,
}

impl RuntimeSimConfig {
    /// Defaults for `seed`: 5 nodes, 4 clients, 4 keys, 20 s of faults, 10 s healed.
    pub fn new(seed: u64) -> Self {
        RuntimeSimConfig {
            seed,
            nodes: 5,
            clients: 4,
            keys: 4,
            chaos_secs: 20,
            healed_secs: 10,
            faults: true,
            planted: None,
            inline_when_following: inline_for_seed(seed),
        }
    }
}

/// The storage path a seed runs by default: half the seeds each way.
pub fn inline_for_seed(seed: u64) -> bool {
    (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63) == 0
}

/// What one run found.
#[derive(Debug)]
pub struct RuntimeReport {
    /// The seed.
    pub seed: u64,
    /// The first violation, if any.
    pub violation: Option<String>,
    /// Client operations recorded.
    pub ops: usize,
    /// A hash of everything observable: the history and every node event, in order.
    pub trace: u64,
    /// Virtual seconds simulated.
    pub sim_secs: f64,
    /// The client history.
    pub history: History,
    /// Faults injected, as readable lines.
    pub faults: Vec<String>,
}

fn node_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

const PORT: u16 = 7000;

/// The simulated network every run starts with: no loss, 0.2 to 3 ms per datagram.
pub fn net_config() -> madsim::Config {
    let mut config = madsim::Config::default();
    config.net.send_latency = Duration::from_micros(200)..Duration::from_millis(3);
    config
}

/// Runs one seed in a fresh madsim runtime on a fresh thread.
///
/// The thread matters: tokio seeds the per-thread RNG behind an unbiased `select!` from a
/// process-wide counter, so a second run on the same thread would draw differently. Every
/// `select!` on a simulated path is `biased` for the same reason.
pub fn run(cfg: RuntimeSimConfig) -> RuntimeReport {
    std::thread::spawn(move || {
        let rt = Runtime::with_seed_and_config(cfg.seed, net_config());
        rt.block_on(world(cfg))
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

struct Shared {
    history: Mutex<History>,
    start: madsim::time::Instant,
    /// Clients stop invoking at this virtual time (set once faults have healed).
    stop_ns: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

struct Faults {
    rng: ChaCha8Rng,
    log: Vec<String>,
}

impl Faults {
    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

fn node_options(
    cfg: &RuntimeSimConfig,
    i: usize,
    key: &ClusterKey,
    events: &mpsc::UnboundedSender<NodeEvent>,
) -> NodeOptions {
    let addrs: Vec<SocketAddr> = (0..cfg.nodes).map(|j| SocketAddr::new(node_ip(j), PORT)).collect();
    let mut nc = NodeConfig::new(i as u64 + 1, addrs[i], "/data".into(), "/unused.key".into());
    nc.cluster = format!("sim-{}", cfg.seed);
    nc.seeds = addrs.iter().copied().filter(|a| *a != addrs[i]).collect();
    nc.initial_members = addrs.iter().enumerate().map(|(j, a)| InitialMember { id: j as u64 + 1, addr: *a }).collect();
    // Small snapshots thresholds so snapshots, compaction and snapshot install happen in a run.
    nc.raft.snapshot_threshold_entries = 200;
    nc.swim.probe_interval_ms = 500;
    nc.swim.probe_timeout_ms = 200;
    nc.swim.push_pull_interval_ms = 5_000;
    nc.storage.inline_when_following = cfg.inline_when_following;
    let mut opts = NodeOptions::new(nc, key.clone(), cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64));
    opts.storage.wal.segment_bytes_max = 16 << 10;
    opts.events = Some(events.clone());
    #[cfg(feature = "planted-bugs")]
    {
        opts.planted = match cfg.planted.as_deref() {
            Some("ack") => Some(node::PlantedBug::AckBeforeFsync),
            Some("vote") => Some(node::PlantedBug::SendBeforeFsync),
            Some("checksum") => Some(node::PlantedBug::SkipChecksum),
            _ => None,
        };
    }
    opts
}

fn spawn_node(handle: &Handle, i: usize, vfs: SimVfs, opts: NodeOptions) -> NodeHandle {
    handle
        .create_node()
        .name(format!("n{}", i + 1))
        .ip(node_ip(i))
        .init(move || {
            let (vfs, opts) = (vfs.clone(), opts.clone());
            async move {
                // Keeping the sender alive keeps the node running until madsim kills it.
                let (_keep, stop) = tokio::sync::oneshot::channel::<()>();
                let addr = opts.config.listen;
                let socket = match quorate_runtime::sys::bind_udp(addr).await {
                    Ok(s) => s,
                    Err(e) => panic!("bind {addr}: {e}"),
                };
                if let Err(e) = node::run_on(vfs, opts, Arc::new(socket), stop, Metrics::new()).await {
                    // Storage refusing to start (corruption before the tail) is a finding.
                    tracing::warn!("node stopped: {e}");
                }
            }
        })
        .build()
}

fn value_bytes(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn value_of(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// One client: a closed loop of random operations, every one recorded.
async fn client_loop(
    id: u64,
    addrs: Vec<SocketAddr>,
    key: ClusterKey,
    cluster: String,
    keys: u32,
    shared: Arc<Shared>,
) {
    let cluster_id = quorate_runtime::config::cluster_id(&cluster);
    let Ok(mut client) = Client::new(addrs, key, cluster_id, id).await else { return };
    client.deadline = Duration::from_secs(2);
    client.attempt_timeout = Duration::from_millis(100);
    let mut rng = ChaCha8Rng::seed_from_u64(id.wrapping_mul(0x9e37_79b9));
    let mut n = 0u64;
    while shared.now_ns() < shared.stop_ns.load(std::sync::atomic::Ordering::Relaxed) {
        n += 1;
        let k = format!("k{}", rng.next_u64() % u64::from(keys));
        let value = id * 1_000_000 + n;
        let (op, req) = match rng.next_u64() % 10 {
            0..=3 => (Op::Read, ClientOp::Get { key: k.clone() }),
            4..=6 => (Op::Write(value), ClientOp::Write(WriteOp::Put { key: k.clone(), value: value_bytes(value) })),
            7 => (Op::Delete, ClientOp::Write(WriteOp::Delete { key: k.clone() })),
            _ => {
                // Cas against a value this client last saw somewhere, or a fresh guess.
                let expected = id * 1_000_000 + n.saturating_sub(1 + rng.next_u64() % 3);
                let op = WriteOp::Cas {
                    key: k.clone(),
                    expected: Some(value_bytes(expected)),
                    value: Some(value_bytes(value)),
                };
                (Op::Cas { expected, new: value }, ClientOp::Write(op))
            }
        };
        let op_id = shared.history.lock().unwrap_or_else(|e| e.into_inner()).invoke(id, &k, op, shared.now_ns());
        let completion = match client.request(req).await {
            Ok(Reply::Value(v)) => Completion::Ok(v.as_deref().and_then(value_of)),
            Ok(Reply::Written { .. }) => Completion::Ok(None),
            Ok(Reply::Cas { swapped: true, .. }) => Completion::Ok(None),
            Ok(Reply::Cas { swapped: false, .. }) => Completion::Fail,
            // Refused before reaching the log (validation): no effect.
            Ok(Reply::Error(_)) => Completion::Fail,
            Ok(_) | Err(ClientError::Timeout(_)) | Err(_) => Completion::Info,
        };
        shared.history.lock().unwrap_or_else(|e| e.into_inner()).complete(op_id, completion, shared.now_ns());
        madsim::time::sleep(Duration::from_millis(rng.next_u64() % 20)).await;
    }
}

/// The checks on node events: one leader per term, one entry per applied index.
#[derive(Default)]
struct Safety {
    leaders: BTreeMap<Term, NodeId>,
    /// The last vote each node sent.
    votes: BTreeMap<NodeId, (Term, NodeId)>,
    applied: BTreeMap<LogIndex, (Term, u64, NodeId)>,
    trace: u64,
    violation: Option<String>,
}

impl Safety {
    fn observe(&mut self, e: &NodeEvent) {
        let line = format!("{e:?}");
        self.trace = fnv1a64_extend(self.trace, line.as_bytes());
        if self.violation.is_some() {
            return;
        }
        match e {
            NodeEvent::Role { node, term, role: Role::Leader } => match self.leaders.get(term) {
                Some(other) if other != node => {
                    self.violation = Some(format!("election safety: {other} and {node} both led term {}", term.0));
                }
                _ => {
                    self.leaders.insert(*term, *node);
                }
            },
            NodeEvent::Role { .. } => {}
            NodeEvent::Voted { node, term, candidate } => {
                self.votes.insert(*node, (*term, *candidate));
            }
            NodeEvent::Recovered { node, term, vote } => {
                // A vote that left the node must survive its crash: otherwise it may vote twice.
                if let Some((t, c)) = self.votes.get(node) {
                    if term < t || (term == t && *vote != Some(*c)) {
                        self.violation = Some(format!(
                            "vote durability: {node} voted for {c} in term {} but restarted at term {} with vote {vote:?}",
                            t.0, term.0
                        ));
                    }
                }
            }
            NodeEvent::Applied { node, index, term, digest } => match self.applied.get(index) {
                Some((t, d, other)) if (t, d) != (term, digest) => {
                    self.violation = Some(format!(
                        "state machine safety: index {} applied as term {} on {other} but as term {} (different entry) on {node}",
                        index.0, t.0, term.0
                    ));
                }
                Some(_) => {}
                None => {
                    self.applied.insert(*index, (*term, *digest, *node));
                }
            },
        }
    }
}

/// One run inside an already running madsim runtime (see [`run`]).
pub async fn world(cfg: RuntimeSimConfig) -> RuntimeReport {
    let handle = Handle::current();
    let net = NetSim::current();
    let shared = Arc::new(Shared {
        history: Mutex::new(History::new()),
        start: madsim::time::Instant::now(),
        stop_ns: std::sync::atomic::AtomicU64::new(u64::MAX),
    });
    let mut f = Faults { rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xfa17_5eed), log: Vec::new() };
    let mut key = [0u8; 32];
    f.rng.fill_bytes(&mut key);
    let key = ClusterKey::from_bytes(key);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let disk_faults = if cfg.faults { SimFaults { torn_write: 0.8, flip_bit: 0.9 } } else { SimFaults::default() };
    let disks: Vec<SimVfs> =
        (0..cfg.nodes).map(|i| SimVfs::new(cfg.seed.wrapping_add(i as u64 * 7919), disk_faults)).collect();
    let nodes: Vec<NodeHandle> = (0..cfg.nodes)
        .map(|i| spawn_node(&handle, i, disks[i].clone(), node_options(&cfg, i, &key, &events_tx)))
        .collect();
    drop(events_tx);
    // The safety checks see every node event as it happens; elections starting are also
    // reported to the fault loop, which may crash a voter right then (a vote in flight).
    let (storm_tx, mut storm_rx) = mpsc::unbounded_channel::<NodeId>();
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = madsim::task::spawn(async move {
        let mut safety = Safety { trace: fnv1a64(b"quorate-sim runtime"), ..Safety::default() };
        loop {
            tokio::select! {
                biased;
                e = events_rx.recv() => match e {
                    Some(e) => {
                        if let NodeEvent::Voted { node, .. } = &e {
                            let _ = storm_tx.send(*node);
                        }
                        safety.observe(&e);
                    }
                    None => break,
                },
                _ = &mut done_rx => break,
            }
        }
        while let Ok(e) = events_rx.try_recv() {
            safety.observe(&e);
        }
        safety
    });
    let addrs: Vec<SocketAddr> = (0..cfg.nodes).map(|j| SocketAddr::new(node_ip(j), PORT)).collect();
    let cluster = format!("sim-{}", cfg.seed);
    let chaos_ns = cfg.chaos_secs * 1_000_000_000;
    let mut clients = Vec::new();
    let mut client_nodes = Vec::new();
    for c in 0..cfg.clients {
        let node =
            handle.create_node().name(format!("c{c}")).ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, c as u8 + 1))).build();
        client_nodes.push(node.id());
        let (addrs, key, cluster, shared) = (addrs.clone(), key.clone(), cluster.clone(), shared.clone());
        let keys = cfg.keys;
        clients.push(node.spawn(async move { client_loop(c as u64 + 1, addrs, key, cluster, keys, shared).await }));
    }
    let admin_node = handle.create_node().name("admin").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1))).build();
    // Faults until `chaos_ns`.
    let ids: Vec<_> = nodes.iter().map(|n| n.id()).collect();
    let mut down: Vec<bool> = vec![false; cfg.nodes];
    let mut paused: Vec<bool> = vec![false; cfg.nodes];
    let mut removed: Option<usize> = None;
    // Links clogged one way; madsim keeps these apart from whole-node clogs.
    let mut clogged: std::collections::BTreeSet<(usize, usize)> = std::collections::BTreeSet::new();
    let unclog_all = |clogged: &mut std::collections::BTreeSet<(usize, usize)>| {
        for (a, b) in std::mem::take(clogged) {
            net.unclog_link(ids[a], ids[b]);
        }
        for id in &ids {
            net.unclog_node(*id);
        }
    };
    if cfg.faults {
        while shared.now_ns() < chaos_ns {
            let wait = f.millis(300, 2500);
            let max_down = (cfg.nodes - 1) / 2;
            let storm = tokio::select! {
                biased;
                _ = madsim::time::sleep(wait) => None,
                c = storm_rx.recv() => c,
            };
            if let Some(voter) = storm {
                // A vote just left `voter`: sometimes crash it right then. A correct node made
                // the vote durable before sending it, so it must come back remembering it.
                let v = (voter.0 as usize).saturating_sub(1);
                let up = down.iter().filter(|d| !**d).count();
                if v < cfg.nodes && f.chance(40) && !down[v] && !paused[v] && cfg.nodes - up < max_down {
                    madsim::time::sleep(Duration::from_micros(f.below(500))).await;
                    handle.kill(ids[v]);
                    disks[v].crash();
                    f.log.push(format!("{} crash n{} right after it voted", shared.now_ns(), v + 1));
                    madsim::time::sleep(f.millis(30, 400)).await;
                    handle.restart(ids[v]);
                    f.log.push(format!("{} restart n{}", shared.now_ns(), v + 1));
                }
                continue;
            }
            let t = shared.now_ns();
            let i = f.below(cfg.nodes as u64) as usize;
            match f.below(10) {
                0 | 1 if !down[i] && !paused[i] && down.iter().filter(|d| **d).count() < max_down => {
                    // Most crashes land in the middle of a write (power lost while the disk
                    // was busy): wait up to 50 ms for the node to have unsynced data.
                    if f.chance(70) {
                        for _ in 0..500 {
                            if disks[i].unsynced_bytes() > 0 {
                                break;
                            }
                            madsim::time::sleep(Duration::from_micros(100)).await;
                        }
                    }
                    handle.kill(ids[i]);
                    disks[i].crash();
                    down[i] = true;
                    f.log.push(format!("{t} kill n{}", i + 1));
                }
                0..=2 => {
                    if let Some(j) = (0..cfg.nodes).find(|j| down[*j]) {
                        handle.restart(ids[j]);
                        down[j] = false;
                        f.log.push(format!("{t} restart n{}", j + 1));
                    }
                }
                3 => {
                    // A split: a random minority against the rest, both ways.
                    let side: Vec<bool> = (0..cfg.nodes).map(|_| f.chance(35)).collect();
                    for a in 0..cfg.nodes {
                        for b in 0..cfg.nodes {
                            if side[a] != side[b] {
                                net.clog_link(ids[a], ids[b]);
                                clogged.insert((a, b));
                            }
                        }
                    }
                    f.log.push(format!("{t} split {side:?}"));
                }
                4 => {
                    // One-way links and a bridge: some links drop one direction only.
                    for _ in 0..cfg.nodes {
                        let (a, b) = (f.below(cfg.nodes as u64) as usize, f.below(cfg.nodes as u64) as usize);
                        if a != b {
                            net.clog_link(ids[a], ids[b]);
                            clogged.insert((a, b));
                            f.log.push(format!("{t} clog n{}->n{}", a + 1, b + 1));
                        }
                    }
                }
                5 => {
                    net.clog_node(ids[i]);
                    f.log.push(format!("{t} isolate n{}", i + 1));
                }
                6 => {
                    unclog_all(&mut clogged);
                    let loss = f.below(15) as f64 / 100.0;
                    let hi = 1 + f.below(20);
                    net.update_config(|c| {
                        c.packet_loss_rate = loss;
                        c.send_latency = Duration::from_micros(200)..Duration::from_millis(hi);
                    });
                    f.log.push(format!("{t} heal links; loss {loss:.2}, latency up to {hi} ms"));
                }
                7 if !down[i] => {
                    if paused[i] {
                        handle.resume(ids[i]);
                        f.log.push(format!("{t} resume n{}", i + 1));
                    } else {
                        handle.pause(ids[i]);
                        f.log.push(format!("{t} pause n{}", i + 1));
                    }
                    paused[i] = !paused[i];
                }
                8 | 9 => {
                    let op = match removed {
                        Some(j) => AdminOp::AddNode { id: NodeId(j as u64 + 1), addr: Some(addrs[j]) },
                        None if f.chance(50) => AdminOp::TransferLeader { to: None },
                        None => AdminOp::RemoveNode { id: NodeId(i as u64 + 1) },
                    };
                    f.log.push(format!("{t} admin {op:?}"));
                    // Bounded, so a stuck change never delays healing past the chaos phase.
                    let left =
                        Duration::from_nanos(chaos_ns.saturating_sub(shared.now_ns())).min(Duration::from_secs(4));
                    let outcome = admin(&admin_node, &addrs, &key, &cluster, op.clone(), left).await;
                    f.log.push(format!("{} admin {op:?} -> {outcome}", shared.now_ns()));
                    match (&op, outcome.starts_with("ok")) {
                        (AdminOp::RemoveNode { .. }, true) => removed = Some(i),
                        (AdminOp::AddNode { .. }, true) => removed = None,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        // Heal everything.
        unclog_all(&mut clogged);
        for i in 0..cfg.nodes {
            if paused[i] {
                handle.resume(ids[i]);
            }
            if down[i] {
                handle.restart(ids[i]);
            }
        }
        net.update_config(|c| {
            c.packet_loss_rate = 0.0;
            c.send_latency = Duration::from_micros(200)..Duration::from_millis(3);
        });
        f.log.push(format!("{} heal all", shared.now_ns()));
    } else {
        madsim::time::sleep(Duration::from_nanos(chaos_ns)).await;
    }
    let healed_ns = shared.now_ns();
    shared.stop_ns.store(healed_ns + cfg.healed_secs * 1_000_000_000, std::sync::atomic::Ordering::Relaxed);
    if cfg.faults {
        if let Some(j) = removed {
            let op = AdminOp::AddNode { id: NodeId(j as u64 + 1), addr: Some(addrs[j]) };
            let outcome = admin(&admin_node, &addrs, &key, &cluster, op, Duration::from_secs(4)).await;
            f.log.push(format!("{} re-add n{} -> {outcome}", shared.now_ns(), j + 1));
        }
    }
    for c in clients {
        let _ = c.await;
    }
    // A final read of every key, after the clients stopped: nothing acknowledged may be missing.
    let final_reads = {
        let (addrs, key, cluster, shared) = (addrs.clone(), key.clone(), cluster.clone(), shared.clone());
        let keys = cfg.keys;
        admin_node.spawn(async move { final_read(addrs, key, cluster, keys, shared).await }).await
    };
    let swim = admin_node.spawn(swim_agreement(addrs.clone(), key.clone(), cluster.clone())).await;
    let sim_secs = shared.now_ns() as f64 / 1e9;
    let _ = done_tx.send(());
    let safety = watcher.await.unwrap_or_default();
    let history = std::mem::take(&mut *shared.history.lock().unwrap_or_else(|e| e.into_inner()));
    let mut violation = safety.violation.clone();
    if violation.is_none() {
        if let Err(e) = history.check() {
            violation = Some(format!("linearizability: {e}"));
        }
    }
    if violation.is_none() {
        violation = liveness(&history, healed_ns, &final_reads);
    }
    if violation.is_none() {
        violation = swim.ok().flatten();
    }
    let mut json = String::new();
    for e in history.events() {
        e.write_json(&mut json);
    }
    let trace = fnv1a64_extend(safety.trace, json.as_bytes());
    // Dropping a madsim runtime does not drop the tasks still pending on its nodes, and a
    // node's tasks keep its state (the simulated disks, sockets, queues) alive: about 13 MB
    // a seed, so a sweep of 2,000 seeds ran out of 24 GB. Killing the nodes drops them.
    for id in ids.iter().copied().chain(client_nodes).chain([admin_node.id()]) {
        handle.kill(id);
    }
    RuntimeReport { seed: cfg.seed, violation, ops: history.len_ops(), trace, sim_secs, history, faults: f.log }
}

/// Sends one admin request from the admin node; returns "ok: ..." or what went wrong.
async fn admin(
    node: &NodeHandle,
    addrs: &[SocketAddr],
    key: &ClusterKey,
    cluster: &str,
    op: AdminOp,
    deadline: Duration,
) -> String {
    let (addrs, key, cluster_id) = (addrs.to_vec(), key.clone(), quorate_runtime::config::cluster_id(cluster));
    let task = node.spawn(async move {
        let mut c = match Client::new(addrs, key, cluster_id, 999_999).await {
            Ok(c) => c,
            Err(e) => return format!("socket: {e}"),
        };
        c.deadline = deadline.max(Duration::from_millis(100));
        match c.admin(op).await {
            Ok(line) => format!("ok: {line}"),
            Err(e) => format!("failed: {e}"),
        }
    });
    task.await.unwrap_or_else(|_| "admin task failed".into())
}

/// Reads every key once faults are over; records the reads in the history. Returns how many
/// failed to complete.
async fn final_read(addrs: Vec<SocketAddr>, key: ClusterKey, cluster: String, keys: u32, shared: Arc<Shared>) -> usize {
    let cluster_id = quorate_runtime::config::cluster_id(&cluster);
    let Ok(mut c) = Client::new(addrs, key, cluster_id, 1_000_000).await else { return keys as usize };
    c.deadline = Duration::from_secs(10);
    let mut failed = 0;
    for k in 0..keys {
        let k = format!("k{k}");
        let id =
            shared.history.lock().unwrap_or_else(|e| e.into_inner()).invoke(1_000_000, &k, Op::Read, shared.now_ns());
        let completion = match c.get(&k).await {
            Ok(v) => Completion::Ok(v.as_deref().and_then(value_of)),
            Err(_) => {
                failed += 1;
                Completion::Info
            }
        };
        shared.history.lock().unwrap_or_else(|e| e.into_inner()).complete(id, completion, shared.now_ns());
    }
    failed
}

/// Liveness: the final reads completed, and operations invoked 5 s after healing completed.
fn liveness(
    history: &History,
    healed_ns: u64,
    final_failed: &Result<usize, madsim::task::JoinError>,
) -> Option<String> {
    match final_failed {
        Ok(0) => {}
        Ok(n) => return Some(format!("liveness: {n} final reads did not complete after healing")),
        Err(_) => return Some("liveness: the final reader failed".into()),
    }
    let settle = healed_ns + 5_000_000_000;
    let stuck = history.unfinished_after(settle);
    if stuck > 0 {
        return Some(format!("liveness: {stuck} operations invoked 5 s after healing did not complete"));
    }
    None
}

/// After healing, every running node must see every other as alive in SWIM.
async fn swim_agreement(addrs: Vec<SocketAddr>, key: ClusterKey, cluster: String) -> Option<String> {
    let cluster_id = quorate_runtime::config::cluster_id(&cluster);
    let Ok(mut c) = Client::new(addrs.clone(), key, cluster_id, 1_000_001).await else {
        return Some("swim check: no socket".into());
    };
    c.deadline = Duration::from_secs(2);
    for a in &addrs {
        match c.status_of(*a).await {
            Ok(s) => {
                let not_alive: Vec<_> =
                    s.members.iter().filter(|m| m.swim != "alive").map(|m| (m.id.0, m.swim.clone())).collect();
                if !not_alive.is_empty() {
                    return Some(format!("swim agreement: {a} sees {not_alive:?} after healing"));
                }
            }
            Err(e) => return Some(format!("swim agreement: {a} does not answer after healing: {e}")),
        }
    }
    None
}
