//! Many logical clients over one UDP socket: [`MuxClient`] and its [`Session`]s.
//!
//! A [`crate::client::Client`] owns a socket, so a process with many concurrent callers pays a
//! datagram, a MAC and a wake-up on each side per request. A `MuxClient` owns one socket and a
//! task that drives it; each [`Session`] is a logical client with its own client id and
//! sequence numbers (so the cluster's client sessions, Raft dissertation §6.3, apply each of
//! its writes at most once, exactly as for a `Client`). Requests that sessions hand over while
//! the task is busy leave together, packed into as few datagrams as fit
//! ([`crate::protocol::pack`]), and the nodes answer a socket's requests of one turn of their
//! loop in as few datagrams as fit.
//!
//! A session behaves like a `Client`: one request at a time, resent with the same sequence
//! number until answered, following `NotLeader` redirects and moving to another node on
//! silence. The leader a session learns is shared by every session of the socket.
//!
//! ```no_run
//! # async fn example(nodes: Vec<std::net::SocketAddr>, key: quorate_runtime::transport::ClusterKey, cluster_id: u64)
//! # -> Result<(), quorate_runtime::client::ClientError> {
//! use quorate_runtime::client::KvOps;
//! use quorate_runtime::mux::MuxClient;
//!
//! let mux = MuxClient::new(nodes, key, cluster_id).await?;
//! let mut tasks = Vec::new();
//! for id in 1..=16u64 {
//!     let mut session = mux.session(id)?;
//!     tasks.push(tokio::spawn(async move { session.put(&format!("k{id}"), b"v").await }));
//! }
//! for t in tasks {
//!     t.await.expect("task").map(|_| ())?;
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_core::NodeId;
use tokio::sync::{mpsc, oneshot};

use crate::client::{self, ClientError};
use crate::protocol::{self, Op, Packed, Reply, Request};
use crate::sys::{self, Clock, UdpSocket};
use crate::transport::{ClusterKey, Kind, Transport, TransportLimits};

/// Datagrams the driving task takes from the socket per wake-up.
const RECV_BURST: usize = 256;
/// Most times the driving task yields to gather the requests of the sessions it just answered.
const GATHER_YIELDS: usize = 16;

/// An answer and the node it came from.
type Answer = (Reply, SocketAddr);

enum Cmd {
    /// Send `request` to `to`; hand its answer to `answer`.
    Send { to: SocketAddr, request: Request, answer: oneshot::Sender<Answer> },
    /// The session `client_id` ended: forget what it waits for.
    Forget { client_id: u64 },
}

/// Where the sessions of one socket send: the nodes, the leader they learned, and which
/// client ids have a live session.
struct Route {
    nodes: Vec<SocketAddr>,
    state: Mutex<RouteState>,
}

struct RouteState {
    leader: Option<SocketAddr>,
    next_node: usize,
    live: BTreeSet<u64>,
}

impl Route {
    fn lock(&self) -> std::sync::MutexGuard<'_, RouteState> {
        // A panic while holding the lock leaves only a hint behind: keep using it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn target(&self) -> SocketAddr {
        let s = self.lock();
        s.leader.unwrap_or(self.nodes[s.next_node % self.nodes.len()])
    }

    fn forget_leader(&self, was: SocketAddr) {
        let mut s = self.lock();
        // Another session may have learned a new leader since this one sent to `was`.
        if s.leader.is_none_or(|l| l == was) {
            s.leader = None;
            s.next_node = s.next_node.wrapping_add(1);
        }
    }
}

/// One UDP socket shared by many [`Session`]s; see the module docs. Sessions keep the socket's
/// task alive: it ends when the `MuxClient` and every session are dropped.
pub struct MuxClient {
    cmds: mpsc::UnboundedSender<Cmd>,
    route: Arc<Route>,
    local_addr: SocketAddr,
}

impl MuxClient {
    /// A socket for clients of the nodes at `nodes` of cluster `cluster_id`, and the task that
    /// drives it.
    pub async fn new(nodes: Vec<SocketAddr>, key: ClusterKey, cluster_id: u64) -> Result<MuxClient, ClientError> {
        if nodes.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no node address given").into());
        }
        let bind: SocketAddr = if nodes[0].is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let socket = Arc::new(sys::bind_udp(bind).await?);
        let local_addr = socket.local_addr()?;
        let clock = Clock::start();
        // Fragment ids only need to differ between the sockets a node hears from.
        let seed = u64::from(local_addr.port()).rotate_left(48) ^ clock.now().as_nanos();
        let transport = Transport::new(key, TransportLimits::default(), seed);
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            socket: socket.clone(),
            rx: sys::DatagramRx::new(socket),
            transport,
            cluster_id,
            clock,
            waiting: HashMap::new(),
            outgoing: BTreeMap::new(),
        };
        sys::spawn(driver.run(cmd_rx));
        let route =
            Route { nodes, state: Mutex::new(RouteState { leader: None, next_node: 0, live: BTreeSet::new() }) };
        Ok(MuxClient { cmds, route: Arc::new(route), local_addr })
    }

    /// The local address of the shared socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node the sessions believe leads, if any.
    pub fn leader(&self) -> Option<SocketAddr> {
        self.route.lock().leader
    }

    /// A logical client with id `client_id`: unique across every client of the cluster, not
    /// 0 (reserved), and with no other live session on this socket.
    pub fn session(&self, client_id: u64) -> Result<Session, ClientError> {
        if client_id == 0 || !self.route.lock().live.insert(client_id) {
            return Err(ClientError::ClientIdInUse(client_id));
        }
        Ok(Session {
            cmds: self.cmds.clone(),
            route: self.route.clone(),
            client_id,
            seq: 0,
            pinned: None,
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(10),
        })
    }
}

/// A logical client over a [`MuxClient`]'s socket: one request at a time, retried until
/// answered, like [`crate::client::Client`].
pub struct Session {
    cmds: mpsc::UnboundedSender<Cmd>,
    route: Arc<Route>,
    client_id: u64,
    seq: u64,
    pinned: Option<SocketAddr>,
    /// How long to wait for an answer before resending (doubles up to 1 s per resend).
    pub attempt_timeout: Duration,
    /// How long a request may take in all.
    pub deadline: Duration,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.route.lock().live.remove(&self.client_id);
        let _ = self.cmds.send(Cmd::Forget { client_id: self.client_id });
    }
}

impl Session {
    /// This session's client id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Sends `op` and waits for its answer, retrying as needed. `Retry` and `NotLeader`
    /// answers are handled here; any other answer is returned.
    pub async fn request(&mut self, op: Op) -> Result<Reply, ClientError> {
        let request = Request { client_id: self.client_id, seq: self.seq + 1, op };
        // Refused here, before it takes a sequence number, rather than lost in the task.
        let bytes =
            postcard::experimental::serialized_size(&request).map_err(|e| ClientError::Refused(e.to_string()))?;
        if bytes > TransportLimits::default().message_bytes_max {
            return Err(ClientError::Refused("request too large".into()));
        }
        self.seq += 1;
        let start = tokio::time::Instant::now();
        let mut wait = self.attempt_timeout;
        let mut retries = 0u32;
        loop {
            if start.elapsed() >= self.deadline {
                return Err(ClientError::Timeout(self.deadline));
            }
            let to = self.pinned.unwrap_or_else(|| self.route.target());
            let (answer, answered) = oneshot::channel();
            self.cmds.send(Cmd::Send { to, request: request.clone(), answer }).map_err(|_| ClientError::Closed)?;
            let got = match tokio::time::timeout(wait, answered).await {
                Ok(Ok(answer)) => Some(answer),
                Ok(Err(_)) => return Err(ClientError::Closed),
                Err(_) => None,
            };
            match got {
                Some((reply @ Reply::NotLeader { .. }, _)) if self.pinned.is_some() => return Ok(reply),
                Some((Reply::NotLeader { addr: Some(addr), .. }, _)) if addr != to => {
                    self.route.lock().leader = Some(addr);
                }
                Some((Reply::NotLeader { .. }, _)) => {
                    self.route.forget_leader(to);
                    sys::sleep(Duration::from_millis(50)).await;
                }
                Some((Reply::Retry(_), _)) => {
                    retries += 1;
                    if retries % 4 == 0 && self.pinned.is_none() {
                        self.route.forget_leader(to);
                    }
                    sys::sleep(Duration::from_millis(20)).await;
                }
                Some((reply, from)) => {
                    if self.pinned.is_none() {
                        self.route.lock().leader.get_or_insert(from);
                    }
                    return Ok(reply);
                }
                None => {
                    if self.pinned.is_none() {
                        self.route.forget_leader(to);
                    }
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

impl client::KvOps for Session {
    async fn request(&mut self, op: Op) -> Result<Reply, ClientError> {
        Session::request(self, op).await
    }

    fn pin(&mut self, node: Option<SocketAddr>) {
        self.pinned = node;
    }
}

/// The task that owns the socket: packs what sessions hand it, hands answers back.
struct Driver {
    socket: Arc<UdpSocket>,
    rx: sys::DatagramRx,
    transport: Transport,
    cluster_id: u64,
    clock: Clock,
    /// Per session, the sequence number it waits on and where its answer goes. A session has
    /// one request at a time, so this holds at most one entry per session.
    waiting: HashMap<u64, (u64, oneshot::Sender<Answer>)>,
    /// Requests to send at the end of this wake-up, by destination, in order.
    outgoing: BTreeMap<SocketAddr, Vec<Request>>,
}

impl Driver {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_cmd(cmd),
                    // The MuxClient and every session are gone.
                    None => return,
                },
                r = self.rx.ready() => match r {
                    Ok(()) => {
                        let answered = self.receive();
                        self.gather(&mut cmds, answered).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "mux client: receive failed");
                        sys::sleep(Duration::from_millis(1)).await;
                    }
                },
            }
            while let Ok(cmd) = cmds.try_recv() {
                self.on_cmd(cmd);
            }
            self.flush().await;
        }
    }

    /// Takes every datagram waiting and hands its answers to their sessions; returns how
    /// many sessions were answered.
    fn receive(&mut self) -> usize {
        let now = self.clock.now();
        let (transport, waiting, cluster_id) = (&mut self.transport, &mut self.waiting, self.cluster_id);
        let mut answered = 0;
        self.rx.drain(RECV_BURST, |datagram, from| {
            let Ok(Some((kind, body))) = transport.open(now, from, datagram) else { return };
            for r in client::decode_responses(kind, &body, cluster_id) {
                // Anything else is late: an answer to an attempt already answered.
                if waiting.get(&r.client_id).is_some_and(|(seq, _)| *seq == r.seq) {
                    if let Some((_, answer)) = waiting.remove(&r.client_id) {
                        answered += usize::from(answer.send((r.reply, from)).is_ok());
                    }
                }
            }
        });
        answered
    }

    /// Sessions just answered usually send their next request at once: let them run before
    /// sending, so those requests share datagrams. Yields while they keep coming, until as
    /// many requests arrived as sessions were answered, for at most `GATHER_YIELDS` yields.
    async fn gather(&mut self, cmds: &mut mpsc::UnboundedReceiver<Cmd>, answered: usize) {
        let mut got = 0;
        let mut idle = 0;
        for _ in 0..GATHER_YIELDS {
            if got >= answered || idle >= 2 {
                break;
            }
            tokio::task::yield_now().await;
            let before = got;
            while let Ok(cmd) = cmds.try_recv() {
                got += usize::from(matches!(cmd, Cmd::Send { .. }));
                self.on_cmd(cmd);
            }
            idle = if got == before { idle + 1 } else { 0 };
        }
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send { to, request, answer } => {
                self.waiting.insert(request.client_id, (request.seq, answer));
                self.outgoing.entry(to).or_default().push(request);
            }
            Cmd::Forget { client_id } => {
                self.waiting.remove(&client_id);
            }
        }
    }

    async fn flush(&mut self) {
        if self.outgoing.is_empty() {
            return;
        }
        let body_max = self.transport.limits().body_bytes_max();
        let mut datagrams: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        for (to, requests) in std::mem::take(&mut self.outgoing) {
            let packed = match protocol::pack(self.cluster_id, NodeId::NONE, &requests, body_max) {
                Ok(p) => p,
                Err(e) => {
                    self.refuse(&requests, &e.to_string(), to);
                    continue;
                }
            };
            for p in packed {
                let (kind, body) = match p {
                    Packed::Single(body) => (Kind::ClientRequest, body),
                    Packed::Batch(body) => (Kind::ClientRequestBatch, body),
                };
                match self.transport.seal(kind, &body) {
                    Some(sealed) => datagrams.extend(sealed.into_iter().map(|d| (to, d))),
                    // Sessions refuse requests over the message limit before they get here.
                    None => tracing::warn!(len = body.len(), "mux client: request over the transport limit"),
                }
            }
        }
        let batch: Vec<(SocketAddr, &[u8])> = datagrams.iter().map(|(to, d)| (*to, d.as_slice())).collect();
        for (to, e) in sys::send_batch(&self.socket, &batch).await {
            // A lost send is a lost datagram: the session resends after its timeout.
            tracing::debug!(%to, error = %e, "mux client: send failed");
        }
    }

    /// Answers the sessions of `requests` that still wait with an error of their own making
    /// (requests of a failed packing), as if `from` had refused them.
    fn refuse(&mut self, requests: &[Request], why: &str, from: SocketAddr) {
        for r in requests {
            if self.waiting.get(&r.client_id).is_some_and(|(seq, _)| *seq == r.seq) {
                if let Some((_, answer)) = self.waiting.remove(&r.client_id) {
                    let _ = answer.send((Reply::Error(why.to_string()), from));
                }
            }
        }
    }
}
