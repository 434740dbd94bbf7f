//! One node: the core's Raft and SWIM machines driven over one UDP socket with durable storage.
//!
//! # The loop
//! One task owns everything. It waits for the first of: a datagram, a storage report, the
//! earliest deadline of any machine, or the stop signal; then it steps the machines with `now`
//! and carries out their actions in order:
//! - `Persist*` actions join the open storage batch, handed to the group-commit task (see
//!   [`crate::storage`]) at the end of the step; a node that is not leading writes and syncs
//!   it on the loop itself when that task is idle and the batch is only log entries and hard
//!   state (`storage.inline_when_following`), after sending what does not wait on it, then
//!   steps on;
//! - a `Send` waits until every batch issued before it is durable (**persist before send**),
//!   and leaves at once when nothing is pending; a leader's appends come before its own write
//!   in Raft's action order, so they never wait;
//! - `Apply` runs the metadata map and answers the clients waiting on those entries;
//! - when a batch is durable, Raft hears of it (`handle_persisted`) and the sends held behind
//!   it go out, in order;
//! - answers to clients made during the turn are collected by address and leave at its end,
//!   several to a datagram ([`crate::protocol::pack`]); like before they wait for no storage
//!   batch, since a write is answered only once it applied, after the leader's copy is durable.
//!
//! Client writes that arrive together (in one burst, or in one batch datagram) are proposed as
//! one batch, so one append and one fsync carry many of them.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorate_core::raft::{
    self, Action, ConfChange, ConfChangeItem, Entry, EntryPayload, Event, LogIndex, Membership, MessageBody,
    ProposeError, Raft, ReadError, Recovered, Role, Term,
};
use quorate_core::swim::{self, Addr, Swim};
use quorate_core::{wire, Instant, Machine, NodeId};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::NodeConfig;
use crate::kv::{self, Kv};
use crate::metrics::Metrics;
use crate::protocol::{self, AdminOp, MemberStatus, NodeStatus, Op, Packed, Reply, Request, Response, WriteOp};
use crate::storage::vfs::{Vfs, VfsFile};
use crate::storage::{self, Batch, Storage, StorageError, StorageOp, StorageOptions, Synced};
use crate::sys::{self, Clock, UdpSocket};
use crate::transport::{ClusterKey, DropReason, Kind, Transport, TransportLimits};

/// The key prefix under which node addresses are kept in the metadata map.
pub const NODE_ADDR_PREFIX: &str = "/_quorate/nodes/";
/// Datagrams taken from the socket per step before the loop looks at anything else.
const RECV_BURST: usize = 256;
/// How long an admin membership change may take before it is reported as failed.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A learner is promoted once it is this close to the leader's commit index.
const PROMOTE_LAG_ENTRIES: u64 = 64;

/// Why a node stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Storage failed; the node cannot keep its promises and stops.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The socket could not be bound or failed.
    #[error("socket {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A core machine refused the configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Everything a node needs besides its file system.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// The node's configuration.
    pub config: NodeConfig,
    /// The cluster key.
    pub key: ClusterKey,
    /// Seeds the node's machines (election jitter, probe order, message ids).
    pub seed: u64,
    /// Storage settings.
    pub storage: StorageOptions,
    /// Where to report role changes and applied entries (simulations check cross-node safety
    /// with them); `None` in production.
    pub events: Option<mpsc::UnboundedSender<NodeEvent>>,
    /// Planted bug for simulator self-tests.
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<PlantedBug>,
}

impl NodeOptions {
    /// Options with default storage settings and no event hook.
    pub fn new(config: NodeConfig, key: ClusterKey, seed: u64) -> NodeOptions {
        NodeOptions {
            config,
            key,
            seed,
            storage: StorageOptions::default(),
            events: None,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }
}

/// What a node reports through [`NodeOptions::events`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node's Raft role or term changed.
    Role {
        /// The node.
        node: NodeId,
        /// Its term.
        term: Term,
        /// Its role.
        role: Role,
    },
    /// The node granted its vote in `term` to `candidate`: the grant has left the node.
    Voted {
        /// The node.
        node: NodeId,
        /// The term of the vote.
        term: Term,
        /// Whom it voted for.
        candidate: NodeId,
    },
    /// The node started from what its storage recovered.
    Recovered {
        /// The node.
        node: NodeId,
        /// The recovered term.
        term: Term,
        /// The recovered vote.
        vote: Option<NodeId>,
    },
    /// The node applied the entry at `index`.
    Applied {
        /// The node.
        node: NodeId,
        /// The entry's index.
        index: LogIndex,
        /// The entry's term.
        term: Term,
        /// FNV-1a of the entry's payload: equal on every node that applies this index.
        digest: u64,
    },
}

/// Bugs the runtime can plant (feature `planted-bugs` only) so a simulation can prove it
/// catches them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    /// Acknowledge a client's put or delete as soon as the leader proposes it: before its WAL
    /// fsync and before any quorum holds it.
    AckBeforeFsync,
    /// Send messages without waiting for the writes before them (votes before the hard state
    /// is synced).
    SendBeforeFsync,
    /// Recover storage without verifying checksums.
    SkipChecksum,
}

/// Hand this to [`run`] to stop the node gracefully.
pub type StopSignal = oneshot::Receiver<()>;

struct PendingWrite {
    from: SocketAddr,
    client_id: u64,
    seq: u64,
    received: Instant,
    proposed: Instant,
}

/// A storage batch in flight: its seq, when it was submitted, and the `(index, term)` of
/// each write in it, reported to Raft once it is durable.
type IssuedBatch = (u64, Instant, Vec<(LogIndex, Term)>);

/// A client write waiting to be proposed: who asked, and its command as the log carries it.
struct Proposal {
    from: SocketAddr,
    client_id: u64,
    seq: u64,
    command: Vec<u8>,
    is_cas: bool,
    received: Instant,
}

struct PendingRead {
    from: SocketAddr,
    request: Request,
    received: Instant,
}

/// Datagrams for one destination, and the promise they carry (reported once they leave).
type Outgoing = (SocketAddr, Vec<Vec<u8>>, Option<NodeEvent>);

enum AdminGoal {
    Add(NodeId),
    Remove(NodeId),
}

struct AdminTask {
    goal: AdminGoal,
    from: SocketAddr,
    client_id: u64,
    seq: u64,
    deadline: Instant,
}

/// The node's state. See the module docs for the loop.
struct Node<V: Vfs> {
    cfg: NodeConfig,
    me: NodeId,
    cluster_id: u64,
    seed: u64,
    clock: Clock,
    socket: Arc<UdpSocket>,
    transport: Transport,
    raft: Raft,
    swim: Swim,
    kv: Kv,
    vfs: V,
    metrics: Metrics,
    storage_tx: mpsc::UnboundedSender<Batch>,
    synced_rx: mpsc::UnboundedReceiver<Result<Synced, StorageError>>,
    /// The storage, for a node that is not leading to write and sync its batches on the loop
    /// itself while the storage thread is idle (see [`Node::submit_batch`]).
    inline_store: Option<storage::SharedStorage<V>>,
    open_ops: Vec<StorageOp>,
    open_reports: Vec<(LogIndex, Term)>,
    issued_seq: u64,
    durable_seq: u64,
    /// Batches issued and not yet durable: their seq, when submitted, and what to tell Raft.
    batch_reports: VecDeque<IssuedBatch>,
    /// Sends waiting for a batch to be durable: `(batch, datagrams)`, in order.
    held: VecDeque<(u64, Outgoing)>,
    /// Sends held behind the batch being submitted go with it, for the storage thread to send
    /// once its fsync returns ([`storage::Batch::after_sync`]).
    sends_after_sync: bool,
    /// Datagrams free to leave now, in order.
    outbox: Vec<Outgoing>,
    /// Answers produced in this turn of the loop, by client address: they leave together at
    /// its end, as few datagrams as fit.
    answers: BTreeMap<SocketAddr, Vec<Response>>,
    left: bool,
    /// Writes waiting to be proposed, their commands already encoded.
    proposals: Vec<Proposal>,
    pending_writes: BTreeMap<LogIndex, PendingWrite>,
    pending_by_client: BTreeMap<(u64, u64), LogIndex>,
    pending_reads: BTreeMap<u64, PendingRead>,
    ready_reads: BTreeMap<LogIndex, Vec<PendingRead>>,
    next_read_id: u64,
    learned_addrs: BTreeMap<NodeId, SocketAddr>,
    /// The largest Raft datagram to send to each peer address: what the route carries whole,
    /// asked of the OS once per address.
    raft_datagram_max: BTreeMap<SocketAddr, usize>,
    admin: Vec<AdminTask>,
    snapshot_wanted: bool,
    internal_seq: u64,
    stopping: bool,
    events: Option<mpsc::UnboundedSender<NodeEvent>>,
    #[cfg(feature = "planted-bugs")]
    planted: Option<PlantedBug>,
    /// Term and vote of the last hard state handed to storage.
    written_term_vote: Option<(Term, Option<NodeId>)>,
    /// A commit-only hard state waiting to ride along with the next write.
    lazy_hard_state: Option<raft::HardState>,
    /// Whether the open batch writes a new term or vote.
    open_has_term_vote: bool,
    /// The batch that wrote the latest term or vote: a leader's appends and heartbeats wait
    /// only for it, not for the log writes issued since (`may_precede_log_writes`).
    term_vote_seq: u64,
}

fn to_addr(a: SocketAddr) -> Addr {
    Addr::from(a)
}

fn from_addr(a: Addr) -> SocketAddr {
    SocketAddr::from(a)
}

/// Reads the SWIM generation of the last life and stores the next one durably, so a
/// restarted node is a new incarnation to its peers, never a zombie of the old one.
fn next_generation<V: Vfs>(vfs: &V, dir: &Path) -> Result<u64, StorageError> {
    let path = dir.join("swim.gen");
    let tmp = dir.join("swim.gen.tmp");
    let last = vfs.read(&path).ok().and_then(|b| String::from_utf8(b).ok()).and_then(|s| s.trim().parse::<u64>().ok());
    let gen = last.map_or(1, |g| g + 1);
    let _ = vfs.remove(&tmp);
    let mut f = vfs.open_append(&tmp).map_err(StorageError::io("create swim.gen"))?;
    f.append(gen.to_string().as_bytes()).map_err(StorageError::io("write swim.gen"))?;
    f.sync().map_err(StorageError::io("fsync swim.gen"))?;
    vfs.rename(&tmp, &path).map_err(StorageError::io("rename swim.gen"))?;
    vfs.sync_dir(dir).map_err(StorageError::io("sync the data directory"))?;
    Ok(gen)
}

/// The bootstrap voters written by `cluster init`, if any.
fn read_bootstrap<V: Vfs>(vfs: &V, dir: &Path) -> Option<Vec<NodeId>> {
    let text = String::from_utf8(vfs.read(&dir.join("bootstrap")).ok()?).ok()?;
    let ids: Vec<NodeId> = text.split_whitespace().filter_map(|t| t.parse().ok()).map(NodeId).collect();
    (!ids.is_empty()).then_some(ids)
}

fn write_bootstrap<V: Vfs>(vfs: &V, dir: &Path, ids: &[NodeId]) -> Result<(), StorageError> {
    let text: Vec<String> = ids.iter().map(|i| i.0.to_string()).collect();
    let tmp = dir.join("bootstrap.tmp");
    let _ = vfs.remove(&tmp);
    let mut f = vfs.open_append(&tmp).map_err(StorageError::io("create the bootstrap file"))?;
    f.append(text.join(" ").as_bytes()).map_err(StorageError::io("write the bootstrap file"))?;
    f.sync().map_err(StorageError::io("fsync the bootstrap file"))?;
    vfs.rename(&tmp, &dir.join("bootstrap")).map_err(StorageError::io("rename the bootstrap file"))?;
    vfs.sync_dir(dir).map_err(StorageError::io("sync the data directory"))
}

fn raft_config(cfg: &NodeConfig) -> raft::Config {
    let mut rc = raft::Config::new(cfg.node_id());
    let (min, max, hb) = cfg.raft_timings();
    rc.election_timeout_min = min;
    rc.election_timeout_max = max;
    rc.heartbeat_interval = hb;
    rc.pre_vote = cfg.raft.pre_vote;
    rc.check_quorum = cfg.raft.check_quorum;
    rc.snapshot_threshold_entries = cfg.raft.snapshot_threshold_entries;
    rc.append_bytes_max = cfg.raft.append_bytes_max;
    rc.entry_bytes_max = (cfg.limits.value_bytes_max as u64).saturating_add(2 * protocol::KEY_BYTES_MAX as u64 + 256);
    rc.snapshot_chunk_bytes = 64 << 10;
    // What one follower may have in flight must fit the socket buffers, or a burst is lost
    // and costs a probe round.
    rc.inflight_bytes_max = (sys::SOCKET_BUFFER_BYTES / 2) as u64;
    // A few appends in flight keep the pipe full (the leader's loop answers within one fsync);
    // more only split the same entries into more, smaller messages: every step's proposals
    // went out at once, each costing datagrams, MACs and a follower step. Measured at 16 put
    // clients, alternating: 10.2-10.8k puts/s with 4 against 8.1-8.8k with the core's 256,
    // the leader's datagrams per put 1.9 against 2.3-2.6.
    rc.inflight_msgs_max = 4;
    rc
}

fn swim_config(cfg: &NodeConfig, cluster_id: u64) -> swim::Config {
    let mut sc = swim::Config::lan(cfg.node_id(), cluster_id, to_addr(cfg.listen));
    sc.seeds = cfg.seeds.iter().copied().filter(|s| *s != cfg.listen).map(to_addr).collect();
    sc.probe_interval = Duration::from_millis(cfg.swim.probe_interval_ms);
    sc.probe_timeout = Duration::from_millis(cfg.swim.probe_timeout_ms);
    sc.indirect_probes = cfg.swim.indirect_probes;
    sc.push_pull_interval = Duration::from_millis(cfg.swim.push_pull_interval_ms);
    sc.packet_bytes_max =
        TransportLimits { datagram_bytes_max: cfg.limits.datagram_bytes, ..TransportLimits::default() }
            .body_bytes_max();
    sc.meta.zone = cfg.swim.zone.clone();
    sc.meta.rack = cfg.swim.rack.clone();
    sc.meta.region = cfg.swim.region.clone();
    sc.meta.weight = 1;
    sc
}

/// Runs a node until `stop` fires (then leaves gracefully) or storage fails.
pub async fn run<V: Vfs>(vfs: V, opts: NodeOptions, stop: StopSignal) -> Result<(), NodeError> {
    let socket = sys::bind_udp(opts.config.listen)
        .await
        .map_err(|source| NodeError::Socket { addr: opts.config.listen, source })?;
    run_on(vfs, opts, Arc::new(socket), stop, Metrics::new()).await
}

/// Like [`run`], on a socket that is already bound, reporting into `metrics`.
///
/// While it is not leading, the node writes and fsyncs its log on this task itself
/// (`storage.inline_when_following`): on a current-thread runtime that blocks the runtime for
/// the fsync (as the `quorate` binary wants, one node per runtime); on a multi-thread runtime
/// the worker is handed over for it, so other tasks go on.
pub async fn run_on<V: Vfs>(
    vfs: V,
    opts: NodeOptions,
    socket: Arc<UdpSocket>,
    stop: StopSignal,
    metrics: Metrics,
) -> Result<(), NodeError> {
    #[cfg(feature = "planted-bugs")]
    let planted = opts.planted;
    #[cfg(feature = "planted-bugs")]
    let opts = {
        let mut opts = opts;
        if planted == Some(PlantedBug::SkipChecksum) {
            opts.storage.planted_skip_checksums = true;
        }
        opts
    };
    let NodeOptions { config: cfg, key, seed, storage: storage_opts, events, .. } = opts;
    cfg.validate().map_err(|e| NodeError::Config(e.to_string()))?;
    let dir = cfg.data_dir.clone();
    let (store, recovered, report) = {
        let (vfs, dir) = (vfs.clone(), dir.clone());
        sys::blocking(move || Storage::open(vfs, &dir, storage_opts)).await?
    };
    info!(node = cfg.id, ?report, "recovered storage");
    let gen = {
        let (vfs, dir) = (vfs.clone(), dir.clone());
        sys::blocking(move || next_generation(&vfs, &dir)).await?
    };
    let (storage_tx, storage_rx) = mpsc::unbounded_channel();
    let (synced_tx, synced_rx) = mpsc::unbounded_channel();
    // One storage thread sends what waits on its fsync itself; overlapped syncs report out of
    // the writing thread's order, so there the loop sends them, as under madsim.
    let post_sync = if cfg.storage.syncs_in_flight <= 1 { sys::post_sync_sender(&socket) } else { None };
    let sends_after_sync = post_sync.is_some();
    let (storage_task, shared_store) =
        storage::spawn_group_commit(store, storage_rx, synced_tx, cfg.storage.syncs_in_flight, post_sync);
    let inline_store = shared_store.filter(|_| cfg.storage.inline_when_following);
    let clock = Clock::start();
    let now = clock.now();
    let cluster_id = cfg.cluster_id();
    let bootstrap = read_bootstrap(&vfs, &dir)
        .map(Membership::with_voters)
        .unwrap_or_else(|| Membership::with_voters(cfg.initial_members.iter().map(|m| NodeId(m.id))));
    let kv = restore_kv(&cfg, &recovered)?;
    let raft =
        Raft::new(raft_config(&cfg), bootstrap, recovered, seed, now).map_err(|e| NodeError::Config(e.to_string()))?;
    let swim = Swim::new(swim_config(&cfg, cluster_id), gen, seed ^ 0x5357_494d, now)
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let limits = TransportLimits {
        datagram_bytes_max: cfg.limits.datagram_bytes,
        raft_datagram_bytes_max: cfg.limits.raft_datagram_bytes,
        ..TransportLimits::default()
    };
    let transport = Transport::new(key, limits, seed.rotate_left(17) ^ gen.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let learned_addrs = cfg.initial_members.iter().map(|m| (NodeId(m.id), m.addr)).collect();
    let mut node = Node {
        me: cfg.node_id(),
        cluster_id,
        seed,
        clock,
        socket,
        transport,
        raft,
        swim,
        kv,
        vfs,
        metrics,
        storage_tx,
        synced_rx,
        inline_store,
        open_ops: Vec::new(),
        open_reports: Vec::new(),
        issued_seq: 0,
        durable_seq: 0,
        open_has_term_vote: false,
        term_vote_seq: 0,
        batch_reports: VecDeque::new(),
        held: VecDeque::new(),
        sends_after_sync,
        outbox: Vec::new(),
        answers: BTreeMap::new(),
        left: false,
        proposals: Vec::new(),
        pending_writes: BTreeMap::new(),
        pending_by_client: BTreeMap::new(),
        pending_reads: BTreeMap::new(),
        ready_reads: BTreeMap::new(),
        next_read_id: 0,
        learned_addrs,
        raft_datagram_max: BTreeMap::new(),
        admin: Vec::new(),
        snapshot_wanted: false,
        internal_seq: 0,
        stopping: false,
        events,
        #[cfg(feature = "planted-bugs")]
        planted,
        written_term_vote: None,
        lazy_hard_state: None,
        cfg,
    };
    let hs = node.raft.hard_state();
    node.written_term_vote = Some((hs.term, hs.vote));
    node.report(NodeEvent::Recovered { node: node.me, term: hs.term, vote: hs.vote });
    info!(node = node.me.0, addr = %node.cfg.listen, gen, "node started");
    let result = node.run_loop(stop).await;
    drop(node);
    let _ = storage_task.await;
    result
}

fn restore_kv(cfg: &NodeConfig, recovered: &Recovered) -> Result<Kv, NodeError> {
    let mut kv = Kv::new(cfg.limits.client_sessions_max);
    if let Some(s) = &recovered.snapshot {
        kv.restore(&s.data).map_err(|e| NodeError::Config(format!("the stored snapshot: {e}")))?;
    }
    Ok(kv)
}

impl<V: Vfs> Node<V> {
    fn now(&self) -> Instant {
        self.clock.now()
    }

    async fn run_loop(&mut self, mut stop: StopSignal) -> Result<(), NodeError> {
        let mut rx = sys::DatagramRx::new(self.socket.clone());
        let mut stop_deadline: Option<Instant> = None;
        loop {
            self.step_outputs().await?;
            if let Some(t) = stop_deadline {
                if self.stop_finished() || self.now() >= t {
                    self.flush_storage().await?;
                    info!(node = self.me.0, "stopped");
                    return Ok(());
                }
            }
            let deadline = self.next_deadline(stop_deadline);
            let sleep = sys::sleep_until(self.clock.to_host(deadline));
            tokio::select! {
                biased;
                synced = self.synced_rx.recv() => {
                    match synced {
                        Some(Ok(s)) => self.on_synced(s),
                        Some(Err(e)) => {
                            error!(node = self.me.0, error = %e, "storage failed; stopping");
                            return Err(e.into());
                        }
                        None => return Err(NodeError::Config("the storage task ended".into())),
                    }
                }
                // Timers before datagrams: a steady flood of datagrams must not starve
                // heartbeats and election timers.
                _ = sleep => self.on_timeout(),
                r = rx.ready() => {
                    match r {
                        Ok(()) => {
                            // One `now` for the whole burst, so reads that arrive together
                            // share one confirmation round.
                            let now = self.now();
                            rx.drain(RECV_BURST, |datagram, from| self.on_datagram(now, from, datagram));
                        }
                        Err(e) => debug!(node = self.me.0, error = %e, "receive failed"),
                    }
                }
                _ = &mut stop, if stop_deadline.is_none() => {
                    stop_deadline = Some(self.begin_stop());
                }
            }
            self.flush_proposals();
        }
    }

    fn next_deadline(&self, stop: Option<Instant>) -> Instant {
        let mut t = Instant::MAX;
        for d in [self.raft.poll_timeout(), self.swim.poll_timeout(), self.transport.poll_timeout(), stop]
            .into_iter()
            .flatten()
        {
            t = t.min(d);
        }
        if let Some(a) = self.admin.iter().map(|a| a.deadline).min() {
            t = t.min(a);
        }
        if !self.admin.is_empty() {
            // Learners are checked for promotion at the heartbeat rate.
            t = t.min(self.now().saturating_add(Duration::from_millis(self.cfg.raft.heartbeat_interval_ms)));
        }
        t.min(self.now().saturating_add(Duration::from_secs(1)))
    }

    fn on_timeout(&mut self) {
        let now = self.now();
        self.raft.handle_timeout(now);
        self.swim.handle_timeout(now);
        self.transport.expire(now);
        self.progress_admin(now);
        self.update_member_gauges();
    }

    // ----- datagrams -----

    fn on_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.metrics.datagrams_received.inc();
        let opened = match self.transport.open(now, from, datagram) {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(reason) => {
                self.count_drop(reason);
                return;
            }
        };
        let max = self.transport.limits().message_bytes_max;
        match opened {
            (Kind::Swim, body) => {
                if let Err(e) = self.swim.handle_packet(now, to_addr(from), &body) {
                    let reason = match e {
                        swim::SwimError::Wire(wire::WireError::WrongCluster { .. }) => DropReason::WrongCluster,
                        swim::SwimError::Wire(_) => DropReason::Malformed,
                        _ => DropReason::Refused,
                    };
                    self.transport.count_drop(reason);
                    self.count_drop(reason);
                }
            }
            (Kind::Raft, body) => match wire::decode::<raft::Message>(&body, self.cluster_id, max) {
                Ok(env) => {
                    self.learned_addrs.insert(env.from, from);
                    self.raft.handle_message(now, env.from, env.body);
                }
                Err(e) => self.wire_drop(e),
            },
            (Kind::ClientRequest, body) => match wire::decode::<Request>(&body, self.cluster_id, max) {
                Ok(env) => self.on_request(now, from, env.body),
                Err(e) => self.wire_drop(e),
            },
            // Each request of a batch is served exactly as if it had come alone; a batch that
            // does not decode (or claims too many requests) is dropped whole.
            (Kind::ClientRequestBatch, body) => {
                match wire::decode::<protocol::Batch<Request>>(&body, self.cluster_id, max) {
                    Ok(env) => {
                        self.metrics.request_batches.inc();
                        for req in env.body.0 {
                            self.on_request(now, from, req);
                        }
                    }
                    Err(e) => self.wire_drop(e),
                }
            }
            (Kind::ClientResponse, _) | (Kind::ClientResponseBatch, _) | (Kind::Fragment, _) => {
                self.transport.count_drop(DropReason::Refused);
                self.count_drop(DropReason::Refused);
            }
        }
    }

    fn wire_drop(&mut self, e: wire::WireError) {
        let reason = if matches!(e, wire::WireError::WrongCluster { .. }) {
            DropReason::WrongCluster
        } else {
            DropReason::Malformed
        };
        self.transport.count_drop(reason);
        self.count_drop(reason);
    }

    fn count_drop(&self, reason: DropReason) {
        debug!(node = self.me.0, reason = reason.label(), "datagram dropped");
        self.metrics.datagrams_dropped.get_or_create(&vec![("reason", reason.label())]).inc();
    }

    // ----- clients -----

    fn on_request(&mut self, now: Instant, from: SocketAddr, req: Request) {
        if self.stopping {
            self.reply(from, &req, Reply::Retry("node is stopping".into()), now, now);
            return;
        }
        let pending = self.pending_writes.len() + self.pending_reads.len() + self.proposals.len();
        if pending >= self.cfg.limits.pending_requests_max {
            self.reply(from, &req, Reply::Retry("too many requests in flight".into()), now, now);
            return;
        }
        match &req.op {
            Op::Write(op) => {
                if let Err(e) = protocol::validate_write(op, self.cfg.limits.value_bytes_max) {
                    self.reply(from, &req, Reply::Error(e), now, now);
                } else if op.key().starts_with(NODE_ADDR_PREFIX) {
                    self.reply(
                        from,
                        &req,
                        Reply::Error(format!("keys under {NODE_ADDR_PREFIX} are reserved")),
                        now,
                        now,
                    );
                } else if self.raft.role() != Role::Leader {
                    let reply = self.not_leader();
                    self.reply(from, &req, reply, now, now);
                } else if let Some(index) = self.pending_by_client.get(&(req.client_id, req.seq)).copied() {
                    // A retry of a write already in the log: answer it when that entry applies.
                    debug!(
                        node = self.me.0,
                        client = req.client_id,
                        seq = req.seq,
                        index = index.0,
                        "retry of a pending write"
                    );
                    if let Some(p) = self.pending_writes.get_mut(&index) {
                        p.from = from;
                    }
                } else {
                    // Encoded from the request as it stands: no copy of the key or value.
                    let cmd = kv::CommandRef { client_id: req.client_id, seq: req.seq, op };
                    // Room for the whole command at once (ids and lengths are varints).
                    let room = match op {
                        WriteOp::Put { key, value } => key.len() + value.len(),
                        WriteOp::Delete { key } => key.len(),
                        WriteOp::Cas { key, expected, value } => {
                            key.len() + expected.as_ref().map_or(0, Vec::len) + value.as_ref().map_or(0, Vec::len)
                        }
                    };
                    let command = postcard::to_extend(&cmd, Vec::with_capacity(room + 40)).unwrap_or_default();
                    let is_cas = matches!(op, WriteOp::Cas { .. });
                    self.proposals.push(Proposal {
                        from,
                        client_id: req.client_id,
                        seq: req.seq,
                        command,
                        is_cas,
                        received: now,
                    });
                }
            }
            Op::Get { .. } | Op::List { .. } if !self.raft.membership().is_member(self.me) => {
                // A node outside the membership hears no leader: send the client elsewhere.
                let reply = self.not_leader();
                self.reply(from, &req, reply, now, now);
            }
            Op::Get { .. } | Op::List { .. } => {
                self.next_read_id += 1;
                let id = self.next_read_id;
                match self.raft.read_index(now, id) {
                    Ok(()) => {
                        self.pending_reads.insert(id, PendingRead { from, request: req, received: now });
                    }
                    Err(ReadError::NoLeader) => {
                        self.reply(from, &req, Reply::Retry("no leader known".into()), now, now)
                    }
                    Err(ReadError::TooManyPending) => {
                        self.reply(from, &req, Reply::Retry("too many reads pending".into()), now, now)
                    }
                }
            }
            Op::Admin(op) => {
                let op = op.clone();
                self.on_admin(now, from, req, op)
            }
        }
    }

    fn not_leader(&self) -> Reply {
        let leader = self.raft.leader().filter(|l| *l != self.me);
        Reply::NotLeader { leader, addr: leader.and_then(|l| self.addr_of(l)) }
    }

    /// Proposes every write received since the last proposal as one batch, unless a storage
    /// batch is still in flight: then the writes wait for it and leave together, in one append
    /// per follower and one write of this node's log. The appends themselves leave at once,
    /// without waiting for this node's write (`may_precede_log_writes`), so the followers'
    /// fsyncs overlap this node's instead of following them. Proposing on every turn of the
    /// loop instead measured no faster (64 clients, 6 alternating rounds: 60.5k against 62.3k
    /// puts/s) for more appends and answers per write.
    fn flush_proposals(&mut self) {
        if self.proposals.is_empty() || self.durable_seq < self.issued_seq {
            return;
        }
        let now = self.now();
        let mut batch = std::mem::take(&mut self.proposals);
        let commands: Vec<Vec<u8>> = batch.iter_mut().map(|p| std::mem::take(&mut p.command)).collect();
        match self.raft.propose_batch(now, commands) {
            Ok((first, _)) => {
                for (i, p) in batch.into_iter().enumerate() {
                    let index = LogIndex(first.0 + i as u64);
                    if self.planted(PlantedBug::AckBeforeFsync) && !p.is_cas {
                        let reply = Reply::Written { existed: false, index };
                        self.respond(p.from, p.client_id, p.seq, reply, 0, p.received, now);
                        continue;
                    }
                    debug!(node = self.me.0, client = p.client_id, seq = p.seq, index = index.0, "write proposed");
                    self.pending_by_client.insert((p.client_id, p.seq), index);
                    let queued = now.saturating_duration_since(p.received).as_secs_f64();
                    self.metrics.write_stages[0].observe(queued);
                    self.pending_writes.insert(
                        index,
                        PendingWrite {
                            from: p.from,
                            client_id: p.client_id,
                            seq: p.seq,
                            received: p.received,
                            proposed: now,
                        },
                    );
                }
            }
            Err(e) => {
                let reply = match e {
                    ProposeError::NotLeader { .. } => self.not_leader(),
                    ProposeError::TooLarge { .. } => Reply::Error(e.to_string()),
                    _ => Reply::Retry(e.to_string()),
                };
                for p in batch {
                    self.respond(p.from, p.client_id, p.seq, reply.clone(), 0, p.received, now);
                }
            }
        }
    }

    fn reply(&mut self, to: SocketAddr, req: &Request, reply: Reply, received: Instant, now: Instant) {
        let kind = match &req.op {
            Op::Write(_) => 0,
            Op::Get { .. } | Op::List { .. } => 1,
            Op::Admin(_) => 2,
        };
        self.respond(to, req.client_id, req.seq, reply, kind, received, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        to: SocketAddr,
        client_id: u64,
        seq: u64,
        reply: Reply,
        kind: usize,
        received: Instant,
        now: Instant,
    ) {
        let seconds = now.saturating_duration_since(received).as_secs_f64();
        self.metrics.request_kinds[kind].observe(seconds);
        self.answers.entry(to).or_default().push(Response { client_id, seq, reply });
    }

    /// Seals the answers of this turn: those for one address share datagrams. Answers were
    /// never held behind storage (a write is answered when it applies, after it is durable),
    /// and are not now; they only wait for the turn's end.
    fn seal_answers(&mut self) {
        if self.answers.is_empty() {
            return;
        }
        let body_max = self.transport.limits().body_bytes_max();
        for (to, responses) in std::mem::take(&mut self.answers) {
            match protocol::pack(self.cluster_id, self.me, &responses, body_max) {
                Ok(bodies) => {
                    for packed in bodies {
                        match packed {
                            Packed::Single(body) => self.send_now(to, Kind::ClientResponse, &body),
                            Packed::Batch(body) => {
                                self.metrics.response_batches.inc();
                                self.send_now(to, Kind::ClientResponseBatch, &body)
                            }
                        }
                    }
                }
                Err(e) => warn!(node = self.me.0, error = %e, "cannot encode responses"),
            }
        }
    }

    // ----- admin -----

    fn on_admin(&mut self, now: Instant, from: SocketAddr, req: Request, op: AdminOp) {
        match op {
            AdminOp::Status => {
                let status = self.status();
                self.reply(from, &req, Reply::Status(Box::new(status)), now, now);
            }
            AdminOp::Init => {
                let reply = self.init_cluster(now);
                self.reply(from, &req, reply, now, now);
            }
            AdminOp::AddNode { id, addr } => {
                if self.raft.role() != Role::Leader {
                    let reply = self.not_leader();
                    return self.reply(from, &req, reply, now, now);
                }
                if id == NodeId::NONE {
                    return self.reply(from, &req, Reply::Error("node id 0 is reserved".into()), now, now);
                }
                if let Some(addr) = addr {
                    self.propose_internal(WriteOp::Put {
                        key: format!("{NODE_ADDR_PREFIX}{}", id.0),
                        value: addr.to_string().into_bytes(),
                    });
                }
                if self.raft.membership().is_voter(id) {
                    return self.reply(from, &req, Reply::Done(format!("node {id} is already a voter")), now, now);
                }
                let deadline = now.saturating_add(ADMIN_TIMEOUT);
                self.admin.push(AdminTask {
                    goal: AdminGoal::Add(id),
                    from,
                    client_id: req.client_id,
                    seq: req.seq,
                    deadline,
                });
                self.progress_admin(now);
            }
            AdminOp::RemoveNode { id } => {
                if self.raft.role() != Role::Leader {
                    let reply = self.not_leader();
                    return self.reply(from, &req, reply, now, now);
                }
                if !self.raft.membership().is_member(id) {
                    return self.reply(from, &req, Reply::Done(format!("node {id} is not a member")), now, now);
                }
                let deadline = now.saturating_add(ADMIN_TIMEOUT);
                self.admin.push(AdminTask {
                    goal: AdminGoal::Remove(id),
                    from,
                    client_id: req.client_id,
                    seq: req.seq,
                    deadline,
                });
                self.progress_admin(now);
            }
            AdminOp::TransferLeader { to } => {
                if self.raft.role() != Role::Leader {
                    let reply = self.not_leader();
                    return self.reply(from, &req, reply, now, now);
                }
                let Some(target) = to.or_else(|| self.best_transfer_target()) else {
                    return self.reply(from, &req, Reply::Error("no other voter to transfer to".into()), now, now);
                };
                let reply = match self.raft.transfer_leader(now, target) {
                    Ok(()) => Reply::Done(format!("transferring leadership to {target}")),
                    Err(e) => Reply::Error(e.to_string()),
                };
                self.reply(from, &req, reply, now, now);
            }
        }
    }

    fn init_cluster(&mut self, now: Instant) -> Reply {
        let empty = self.raft.membership().members().is_empty()
            && self.raft.last_index() == LogIndex(0)
            && self.raft.term() == Term(0);
        if !empty {
            return Reply::Error(
                "this node already belongs to a cluster (or holds data); init only works on a new node".into(),
            );
        }
        if let Err(e) = write_bootstrap(&self.vfs, &self.cfg.data_dir, &[self.me]) {
            return Reply::Error(e.to_string());
        }
        match Raft::new(
            raft_config(&self.cfg),
            Membership::with_voters([self.me]),
            Recovered::default(),
            self.seed,
            now,
        ) {
            Ok(raft) => {
                self.raft = raft;
                self.raft.handle_timeout(now);
                info!(node = self.me.0, "initialized a new cluster");
                Reply::Done(format!("initialized a new cluster with {} as its first voter", self.me))
            }
            Err(e) => Reply::Error(e.to_string()),
        }
    }

    fn best_transfer_target(&self) -> Option<NodeId> {
        let voters = &self.raft.membership().voters;
        voters
            .iter()
            .copied()
            .filter(|v| *v != self.me)
            .max_by_key(|v| (self.raft.progress_of(*v).map_or(LogIndex(0), |p| p.1), std::cmp::Reverse(v.0)))
    }

    fn propose_internal(&mut self, op: WriteOp) {
        self.internal_seq += 1;
        let cmd = kv::Command { client_id: 0, seq: self.internal_seq, op };
        let data = postcard::to_allocvec(&cmd).unwrap_or_default();
        if let Err(e) = self.raft.propose(self.now(), data) {
            warn!(node = self.me.0, error = %e, "internal proposal refused");
        }
    }

    /// Moves every admin membership change one step forward: learner, catch-up, voter; or removal.
    fn progress_admin(&mut self, now: Instant) {
        let tasks = std::mem::take(&mut self.admin);
        for task in tasks {
            let outcome = self.admin_step(now, &task);
            match outcome {
                None => self.admin.push(task),
                Some(reply) => self.respond(task.from, task.client_id, task.seq, reply, 2, now, now),
            }
        }
    }

    fn admin_step(&mut self, now: Instant, task: &AdminTask) -> Option<Reply> {
        if self.raft.role() != Role::Leader {
            return Some(Reply::Retry("leadership changed; retry".into()));
        }
        if now >= task.deadline {
            return Some(Reply::Error("membership change timed out".into()));
        }
        let m = self.raft.membership().clone();
        let change = match task.goal {
            AdminGoal::Add(id) if m.is_voter(id) && !m.is_joint() => {
                return Some(Reply::Done(format!("node {id} is a voter")))
            }
            AdminGoal::Remove(id) if !m.is_member(id) => return Some(Reply::Done(format!("node {id} removed"))),
            AdminGoal::Add(id) if m.is_learner(id) => {
                let matched = self.raft.progress_of(id).map_or(LogIndex(0), |p| p.1);
                if matched.0 + PROMOTE_LAG_ENTRIES < self.raft.committed().0 {
                    return None;
                }
                ConfChangeItem::AddVoter(id)
            }
            AdminGoal::Add(id) => ConfChangeItem::AddLearner(id),
            AdminGoal::Remove(id) => ConfChangeItem::RemoveNode(id),
        };
        match self.raft.propose_conf_change(now, ConfChange::single(change)) {
            Ok(_) | Err(ProposeError::ConfChangePending) => None,
            Err(ProposeError::NotLeader { .. }) => Some(Reply::Retry("leadership changed; retry".into())),
            Err(ProposeError::TransferInProgress) => None,
            Err(e) => Some(Reply::Error(e.to_string())),
        }
    }

    fn status(&self) -> NodeStatus {
        let m = self.raft.membership();
        let mut ids: Vec<NodeId> = m.members();
        ids.extend(self.swim.members().map(|mem| mem.id));
        ids.push(self.me);
        ids.sort();
        ids.dedup();
        let members = ids
            .into_iter()
            .map(|id| {
                let raft = if m.is_voter(id) {
                    "voter"
                } else if m.is_learner(id) {
                    "learner"
                } else {
                    "-"
                };
                let swim = if id == self.me {
                    "alive"
                } else {
                    match self.swim.member(id).map(|mem| mem.state()) {
                        Some(swim::State::Alive) => "alive",
                        Some(swim::State::Suspect) => "suspect",
                        Some(swim::State::Down) => "down",
                        Some(swim::State::Left) => "left",
                        None => "-",
                    }
                };
                let matched =
                    if self.raft.role() == Role::Leader { self.raft.progress_of(id).map(|p| p.1) } else { None };
                MemberStatus { id, addr: self.addr_of(id), raft: raft.into(), swim: swim.into(), matched }
            })
            .collect();
        NodeStatus {
            id: self.me,
            addr: self.cfg.listen,
            role: protocol::role_name(self.raft.role()).into(),
            term: self.raft.term(),
            leader: self.raft.leader(),
            commit: self.raft.committed(),
            applied: self.raft.applied(),
            last_index: self.raft.last_index(),
            keys: self.kv.len() as u64,
            members,
            swim_live: self.swim.live_members() as u64,
            swim_health: self.swim.health(),
        }
    }

    /// Where `id` receives cluster traffic: the replicated address book, then SWIM, then the
    /// address its datagrams came from, then the bootstrap list.
    fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.me {
            return Some(self.cfg.listen);
        }
        let key = format!("{NODE_ADDR_PREFIX}{}", id.0);
        if let Some(a) = self.kv.get(&key).and_then(|v| std::str::from_utf8(v).ok()).and_then(|s| s.parse().ok()) {
            return Some(a);
        }
        if let Some(m) = self.swim.member(id) {
            return Some(from_addr(m.addr));
        }
        self.learned_addrs.get(&id).copied()
    }

    // ----- outputs -----

    /// Drains every machine until quiet, hands the open storage batch over, sends what may go.
    async fn step_outputs(&mut self) -> Result<(), NodeError> {
        loop {
            let mut any = false;
            while let Some(action) = self.raft.poll_action() {
                any = true;
                self.carry_out(action);
            }
            while let Some(action) = self.swim.poll_action() {
                any = true;
                match action {
                    swim::Action::Send { to, packet } => self.send_now(from_addr(to), Kind::Swim, &packet),
                    swim::Action::Event(e) => self.on_swim_event(e),
                }
            }
            if self.snapshot_wanted {
                self.snapshot_wanted = false;
                let (now, applied) = (self.now(), self.raft.applied());
                let data = Bytes::from(self.kv.snapshot());
                if let Err(e) = self.raft.handle_snapshot(now, applied, data) {
                    warn!(node = self.me.0, error = %e, "snapshot refused");
                }
                any = true;
            }
            // A batch synced on the loop itself may have let Raft go on: drain again.
            if !any && !self.submit_batch().await? {
                break;
            }
        }
        self.update_gauges();
        self.flush_held().await;
        Ok(())
    }

    fn carry_out(&mut self, action: Action) {
        match action {
            Action::Send { to, message } => {
                let Some(addr) = self.addr_of(to) else {
                    debug!(node = self.me.0, %to, "no address for peer; message dropped");
                    return;
                };
                match wire::encode(self.cluster_id, self.me, &message, usize::MAX) {
                    Ok(body) => {
                        let max = self.raft_datagram_max(addr);
                        let Some(datagrams) = self.transport.seal_within(Kind::Raft, &body, max) else {
                            warn!(node = self.me.0, len = body.len(), "raft message over the transport limit");
                            return;
                        };
                        let promise = match message.body {
                            MessageBody::RequestVoteResponse { pre_vote: false, granted: true }
                                if self.events.is_some() =>
                            {
                                Some(NodeEvent::Voted { node: self.me, term: message.term, candidate: to })
                            }
                            _ => None,
                        };
                        let barrier = self.barrier(message.body.may_precede_log_writes());
                        if barrier > self.durable_seq {
                            self.held.push_back((barrier, (addr, datagrams, promise)));
                        } else {
                            self.outbox.push((addr, datagrams, promise));
                        }
                    }
                    Err(e) => warn!(node = self.me.0, error = %e, "cannot encode a raft message"),
                }
            }
            Action::PersistHardState(hs) => {
                if self.written_term_vote == Some((hs.term, hs.vote)) {
                    // Only the commit index moved. Persisting it is an optimisation, not a
                    // duty: it rides along with the next real write instead of costing an
                    // fsync of its own, and holds no send back.
                    self.lazy_hard_state = Some(hs);
                } else {
                    self.written_term_vote = Some((hs.term, hs.vote));
                    self.lazy_hard_state = None;
                    self.open_has_term_vote = true;
                    self.open_ops.push(StorageOp::HardState(hs));
                }
            }
            Action::PersistEntries { first_index, last_index } => {
                let entries: Vec<Entry> = self.raft.entries(first_index, last_index).to_vec();
                if let Some(last) = entries.last() {
                    self.open_reports.push((last.index, last.term));
                }
                self.open_ops.push(StorageOp::Entries { first_index, entries });
            }
            Action::PersistSnapshot(s) => {
                self.open_reports.push((s.meta.index, s.meta.term));
                self.open_ops.push(StorageOp::Snapshot(s));
            }
            Action::CompactLog { upto } => self.open_ops.push(StorageOp::Compact(upto)),
            Action::ApplyEntries { first_index, last_index } => {
                let entries: Vec<Entry> = self.raft.entries(first_index, last_index).to_vec();
                for e in entries {
                    self.apply_entry(e);
                }
                self.serve_ready_reads();
            }
            Action::ApplySnapshot(s) => {
                if let Err(e) = self.kv.restore(&s.data) {
                    error!(node = self.me.0, error = %e, "snapshot from the leader does not decode");
                }
                let now = self.now();
                let stale: Vec<LogIndex> = self.pending_writes.range(..=s.meta.index).map(|(i, _)| *i).collect();
                for i in stale {
                    self.finish_write(i, Reply::Retry("state replaced by a snapshot; retry".into()), now);
                }
                self.serve_ready_reads();
            }
            Action::Event(e) => self.on_raft_event(e),
        }
    }

    /// The largest Raft datagram for `to`: up to `limits.raft_datagram_bytes` where the route
    /// carries it without IP fragmentation (loopback, jumbo frames), else `datagram_bytes`.
    fn raft_datagram_max(&mut self, to: SocketAddr) -> usize {
        let limits = self.transport.limits();
        let (small, large) = (limits.datagram_bytes_max, limits.raft_datagram_bytes_max);
        *self
            .raft_datagram_max
            .entry(to)
            .or_insert_with(|| sys::path_payload_max(to).map_or(small, |p| p.min(large)).max(small))
    }

    fn report(&self, event: NodeEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }

    fn apply_entry(&mut self, e: Entry) {
        let now = self.now();
        if self.events.is_some() {
            let digest = match &e.payload {
                EntryPayload::Noop => 0,
                EntryPayload::Command(data) => quorate_core::fnv1a64(data),
                EntryPayload::ConfChange(cc) => {
                    quorate_core::fnv1a64(&postcard::to_allocvec(cc).unwrap_or_default()) ^ 1
                }
            };
            self.report(NodeEvent::Applied { node: self.me, index: e.index, term: e.term, digest });
        }
        match &e.payload {
            EntryPayload::Command(data) => match postcard::from_bytes::<kv::CommandView>(data) {
                Ok(cmd) => {
                    let (client_id, seq) = (cmd.client_id, cmd.seq);
                    // Internal writes (client 0: the address book) carry no session.
                    let reply = if client_id == 0 {
                        self.kv.apply_unsessioned(e.index, &cmd.op)
                    } else {
                        self.kv.apply(e.index, &cmd)
                    };
                    if let Some(p) = self.pending_writes.get(&e.index) {
                        let matches = p.client_id == client_id && p.seq == seq;
                        let reply =
                            if matches { reply } else { Reply::Retry("superseded by a new leader; retry".into()) };
                        self.finish_write(e.index, reply, now);
                    }
                }
                Err(_) => {
                    self.kv.skip(e.index);
                    warn!(node = self.me.0, index = e.index.0, "a committed command does not decode; skipped");
                }
            },
            _ => {
                self.kv.skip(e.index);
                if self.pending_writes.contains_key(&e.index) {
                    self.finish_write(e.index, Reply::Retry("superseded by a new leader; retry".into()), now);
                }
            }
        }
    }

    fn finish_write(&mut self, index: LogIndex, reply: Reply, now: Instant) {
        if let Some(p) = self.pending_writes.remove(&index) {
            self.pending_by_client.remove(&(p.client_id, p.seq));
            self.metrics.write_stages[1].observe(now.saturating_duration_since(p.proposed).as_secs_f64());
            self.respond(p.from, p.client_id, p.seq, reply, 0, p.received, now);
        }
    }

    fn serve_ready_reads(&mut self) {
        let applied = self.raft.applied();
        let ready: Vec<LogIndex> = self.ready_reads.range(..=applied).map(|(i, _)| *i).collect();
        for i in ready {
            for r in self.ready_reads.remove(&i).unwrap_or_default() {
                self.serve_read(r);
            }
        }
    }

    fn serve_read(&mut self, r: PendingRead) {
        let now = self.now();
        let reply = match &r.request.op {
            Op::Get { key } => Reply::Value(self.kv.get(key).map(<[u8]>::to_vec)),
            Op::List { prefix, start_after, limit } => {
                let limit = (*limit as usize).clamp(1, 10_000);
                let (items, more) = self.kv.list(prefix, start_after.as_deref(), limit);
                Reply::Listed { items, more }
            }
            _ => Reply::Error("not a read".into()),
        };
        self.reply(r.from, &r.request, reply, r.received, now);
    }

    fn on_raft_event(&mut self, e: Event) {
        let now = self.now();
        match e {
            Event::RoleChanged { role, term, leader } => {
                self.report(NodeEvent::Role { node: self.me, term, role });
                info!(node = self.me.0, role = protocol::role_name(role), term = term.0, leader = ?leader.map(|l| l.0), "raft role");
                if role != Role::Leader {
                    let pending: Vec<LogIndex> = self.pending_writes.keys().copied().collect();
                    for i in pending {
                        self.finish_write(i, Reply::Retry("leadership changed; outcome unknown, retry".into()), now);
                    }
                    self.progress_admin(now);
                }
            }
            Event::ReadReady { id, index } => {
                if let Some(r) = self.pending_reads.remove(&id) {
                    if self.raft.applied() >= index {
                        self.serve_read(r);
                    } else {
                        self.ready_reads.entry(index).or_default().push(r);
                    }
                }
            }
            Event::ReadFailed { id } => {
                if let Some(r) = self.pending_reads.remove(&id) {
                    self.reply(r.from, &r.request, Reply::Retry("read not confirmed; retry".into()), r.received, now);
                }
            }
            Event::SnapshotWanted { .. } => self.snapshot_wanted = true,
            Event::MembershipChanged { index, membership } => {
                info!(node = self.me.0, index = index.0, voters = ?membership.voters, learners = ?membership.learners, "membership");
                self.progress_admin(now);
            }
            Event::ConfChangeSkipped { index, error } => {
                warn!(node = self.me.0, index = index.0, %error, "membership change skipped")
            }
            Event::TransferAborted { target } => warn!(node = self.me.0, %target, "leadership transfer aborted"),
        }
    }

    fn on_swim_event(&mut self, e: swim::Event) {
        match e {
            swim::Event::Up(m) => info!(node = self.me.0, member = m.id.0, addr = %m.addr, "member up"),
            swim::Event::Down(id) => warn!(node = self.me.0, member = id.0, "member down"),
            swim::Event::Suspect(id) => debug!(node = self.me.0, member = id.0, "member suspect"),
            swim::Event::Left(id) => info!(node = self.me.0, member = id.0, "member left"),
            swim::Event::LeaveDone => self.left = true,
            other => debug!(node = self.me.0, event = ?other, "swim"),
        }
    }

    /// True when the test-only `bug` is planted (always false without `planted-bugs`).
    fn planted(&self, bug: PlantedBug) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            self.planted == Some(bug)
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            let _ = bug;
            false
        }
    }

    /// The batch a send now must wait for: the open one if it has writes, else the last issued.
    /// A message that may precede log writes waits only for the latest term or vote write.
    fn barrier(&self, log_free: bool) -> u64 {
        if self.planted(PlantedBug::SendBeforeFsync) {
            return 0;
        }
        if log_free {
            return if self.open_has_term_vote { self.issued_seq + 1 } else { self.term_vote_seq };
        }
        if self.open_ops.is_empty() {
            self.issued_seq
        } else {
            self.issued_seq + 1
        }
    }

    /// Hands the open batch to storage. Returns whether it is already durable: a node that is
    /// not leading writes and syncs it on the loop itself when the storage thread is idle and
    /// the batch holds only log entries and hard state ([`storage::can_commit_inline`]).
    ///
    /// A follower's loop has nothing better to do during the fsync than wait for it (what
    /// arrives meanwhile queues in the socket and makes the next, larger batch), and the
    /// hand-off to the storage thread and its report cost two wake-ups on the path from an
    /// append to its acknowledgement. A leader's loop keeps the thread: it must go on taking
    /// requests and acknowledgements while its own fsync runs.
    async fn submit_batch(&mut self) -> Result<bool, NodeError> {
        if self.open_ops.is_empty() {
            return Ok(false);
        }
        if let Some(hs) = self.lazy_hard_state.take() {
            self.open_ops.push(StorageOp::HardState(hs));
        }
        let seq = self.issued_seq + 1;
        let ops = std::mem::take(&mut self.open_ops);
        let reports = std::mem::take(&mut self.open_reports);
        let inline = self.inline_store.as_ref().filter(|store| {
            self.durable_seq == self.issued_seq
                && self.raft.role() != Role::Leader
                && storage::can_commit_inline(store, &ops)
        });
        let submitted = self.now();
        if let Some(store) = inline.cloned() {
            self.note_issued(seq, submitted, reports);
            // What does not wait on this batch leaves before the fsync, not after it.
            self.flush_held().await;
            let synced = storage::commit_inline(&store, Batch { seq, ops, after_sync: Vec::new() })
                .await
                .inspect_err(|e| error!(node = self.me.0, error = %e, "storage failed; stopping"))?;
            self.on_synced(synced);
            return Ok(true);
        }
        let after_sync = self.take_held_behind(seq);
        if self.storage_tx.send(Batch { seq, ops, after_sync }).is_err() {
            error!(node = self.me.0, "the storage task is gone");
            return Ok(false);
        }
        self.note_issued(seq, submitted, reports);
        Ok(false)
    }

    fn note_issued(&mut self, seq: u64, submitted: Instant, reports: Vec<(LogIndex, Term)>) {
        self.issued_seq = seq;
        if std::mem::take(&mut self.open_has_term_vote) {
            self.term_vote_seq = seq;
        }
        self.batch_reports.push_back((seq, submitted, reports));
    }

    /// The datagrams held behind batch `seq` alone, for its storage thread to send: none
    /// unless it sends, and none that carry a promise (reported by the loop before its
    /// datagrams leave).
    fn take_held_behind(&mut self, seq: u64) -> storage::Datagrams {
        let mut out = Vec::new();
        if !self.sends_after_sync || !self.held.iter().any(|(b, (_, _, p))| *b == seq && p.is_none()) {
            return out;
        }
        let mut keep = VecDeque::with_capacity(self.held.len());
        for (b, (to, datagrams, promise)) in std::mem::take(&mut self.held) {
            if b == seq && promise.is_none() {
                out.extend(datagrams.into_iter().map(|d| (to, d)));
            } else {
                keep.push_back((b, (to, datagrams, promise)));
            }
        }
        self.held = keep;
        out
    }

    fn on_synced(&mut self, s: Synced) {
        self.metrics.observe_fsync(s.took, s.batches);
        self.durable_seq = self.durable_seq.max(s.seq);
        let now = self.now();
        let (sent, sent_bytes) = s.sent;
        self.metrics.datagrams_sent.inc_by(sent);
        self.transport.count_sent_many(sent, sent_bytes);
        for (to, d) in s.unsent {
            self.outbox.push((to, vec![d], None));
        }
        // Sends held behind these batches leave first (they were produced first); Raft then
        // hears which of its writes are durable.
        while self.held.front().is_some_and(|(b, _)| *b <= self.durable_seq) {
            if let Some((_, out)) = self.held.pop_front() {
                self.outbox.push(out);
            }
        }
        while self.batch_reports.front().is_some_and(|(seq, _, _)| *seq <= self.durable_seq) {
            let Some((_, submitted, reports)) = self.batch_reports.pop_front() else { break };
            self.metrics.storage_batch_seconds.observe(now.saturating_duration_since(submitted).as_secs_f64());
            for (index, term) in reports {
                self.raft.handle_persisted(now, index, term);
            }
        }
    }

    // ----- sending -----

    fn send_now(&mut self, to: SocketAddr, kind: Kind, body: &[u8]) {
        match self.transport.seal(kind, body) {
            Some(datagrams) => self.queue_now(to, datagrams),
            None => warn!(node = self.me.0, len = body.len(), "message over the transport limit"),
        }
    }

    fn queue_now(&mut self, to: SocketAddr, datagrams: Vec<Vec<u8>>) {
        self.outbox.push((to, datagrams, None));
    }

    /// Sends every datagram free to leave, in order.
    async fn flush_held(&mut self) {
        self.seal_answers();
        if self.outbox.is_empty() {
            return;
        }
        let outbox = std::mem::take(&mut self.outbox);
        // Every promise is reported before its datagrams leave, as one send at a time did.
        let mut batch = Vec::with_capacity(outbox.iter().map(|(_, d, _)| d.len()).sum());
        for (to, datagrams, promise) in &outbox {
            if let Some(p) = promise {
                self.report(p.clone());
            }
            for d in datagrams {
                batch.push((*to, d.as_slice()));
                self.transport.count_sent(d.len());
            }
        }
        self.metrics.datagrams_sent.inc_by(batch.len() as u64);
        for (to, e) in sys::send_batch(&self.socket, &batch).await {
            debug!(node = self.me.0, %to, error = %e, "send failed");
        }
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.term.set(self.raft.term().0 as i64);
        m.commit_index.set(self.raft.committed().0 as i64);
        m.applied_index.set(self.raft.applied().0 as i64);
        m.leader_id.set(self.raft.leader().map_or(0, |l| l.0 as i64));
        m.is_leader.set(i64::from(self.raft.role() == Role::Leader));
    }

    /// SWIM member counts: a walk over every member, so only on timer ticks.
    fn update_member_gauges(&self) {
        let m = &self.metrics;
        let mut counts = [0i64; 4];
        for mem in self.swim.members() {
            let i = match mem.state() {
                swim::State::Alive => 0,
                swim::State::Suspect => 1,
                swim::State::Down => 2,
                swim::State::Left => 3,
            };
            counts[i] += 1;
        }
        counts[0] += 1; // this node
        for (gauge, n) in m.member_states.iter().zip(counts) {
            gauge.set(n);
        }
    }

    // ----- stopping -----

    /// Starts a graceful stop: hand leadership over, leave SWIM. Returns the latest instant to
    /// finish by.
    fn begin_stop(&mut self) -> Instant {
        let now = self.now();
        self.stopping = true;
        info!(node = self.me.0, "stopping: leaving gracefully");
        if self.raft.role() == Role::Leader {
            if let Some(target) = self.best_transfer_target() {
                if let Err(e) = self.raft.transfer_leader(now, target) {
                    warn!(node = self.me.0, error = %e, "leadership transfer refused");
                }
            }
        }
        if let Err(e) = self.swim.leave(now) {
            debug!(node = self.me.0, error = %e, "swim leave refused");
        }
        now.saturating_add(Duration::from_secs(3))
    }

    fn stop_finished(&self) -> bool {
        let led_off = self.raft.role() != Role::Leader || self.raft.membership().voters.len() <= 1;
        // Alone, nobody needs to hear the leave.
        let left = self.left || self.swim.live_members() <= 1;
        led_off && left && self.held.is_empty()
    }

    async fn flush_storage(&mut self) -> Result<(), NodeError> {
        if let Some(hs) = self.lazy_hard_state.take() {
            self.open_ops.push(StorageOp::HardState(hs));
        }
        self.submit_batch().await?;
        while self.durable_seq < self.issued_seq {
            match self.synced_rx.recv().await {
                Some(Ok(s)) => self.on_synced(s),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        self.flush_held().await;
        Ok(())
    }
}
