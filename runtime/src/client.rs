//! A client of a Quorate cluster: one request at a time, retried until answered.
//!
//! The client numbers its requests and resends a request with the same number until some node
//! answers it, following `NotLeader` redirects and moving to another node on silence. Because
//! the cluster remembers each client's last request (client sessions), a write resent after a
//! lost answer is applied at most once. A request that runs out of time is *unknown*, not lost:
//! it may still apply.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quorate_core::raft::LogIndex;
use quorate_core::{wire, NodeId};

use crate::protocol::{AdminOp, Batch, NodeStatus, Op, Reply, Request, Response, WriteOp};
use crate::sys::{self, Clock, UdpSocket};
use crate::transport::{ClusterKey, Kind, Transport, TransportLimits};

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("client socket: {0}")]
    Io(#[from] io::Error),
    /// No node answered in time. For a write the outcome is unknown.
    #[error("no answer within {0:?} (for a write, the outcome is unknown)")]
    Timeout(Duration),
    /// The cluster refused the request.
    #[error("refused: {0}")]
    Refused(String),
    /// An answer of an unexpected kind.
    #[error("unexpected reply: {0:?}")]
    Unexpected(Box<Reply>),
    /// A [`crate::mux::MuxClient`] session was asked for with id 0 (reserved) or an id that
    /// already has a live session on that socket.
    #[error("client id {0} is reserved or already has a session on this socket")]
    ClientIdInUse(u64),
    /// The task driving a [`crate::mux::MuxClient`]'s socket has ended.
    #[error("the multiplexed client's socket task has ended")]
    Closed,
}

/// A connection-less client bound to one local UDP socket.
pub struct Client {
    socket: Arc<UdpSocket>,
    rx: sys::DatagramRx,
    transport: Transport,
    cluster_id: u64,
    client_id: u64,
    seq: u64,
    nodes: Vec<SocketAddr>,
    next_node: usize,
    leader: Option<SocketAddr>,
    pinned: Option<SocketAddr>,
    clock: Clock,
    /// How long to wait for an answer before resending (doubles up to 1 s per resend).
    pub attempt_timeout: Duration,
    /// How long a request may take in all.
    pub deadline: Duration,
}

impl Client {
    /// A client of the nodes at `nodes`, with a unique `client_id` (not 0, which is reserved).
    pub async fn new(nodes: Vec<SocketAddr>, key: ClusterKey, cluster_id: u64, client_id: u64) -> io::Result<Client> {
        if nodes.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no node address given"));
        }
        let bind: SocketAddr = if nodes[0].is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let socket = Arc::new(sys::bind_udp(bind).await?);
        Ok(Client {
            rx: sys::DatagramRx::new(socket.clone()),
            socket,
            transport: Transport::new(key, TransportLimits::default(), client_id.rotate_left(32)),
            cluster_id,
            client_id: client_id.max(1),
            seq: 0,
            nodes,
            next_node: 0,
            leader: None,
            pinned: None,
            clock: Clock::start(),
            attempt_timeout: Duration::from_millis(200),
            deadline: Duration::from_secs(10),
        })
    }

    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The node the client believes leads, if any.
    pub fn leader(&self) -> Option<SocketAddr> {
        self.leader
    }

    /// Sends `op` and waits for its answer, retrying as needed. `Retry` and `NotLeader`
    /// answers are handled here; any other answer is returned.
    pub async fn request(&mut self, op: Op) -> Result<Reply, ClientError> {
        self.seq += 1;
        let req = Request { client_id: self.client_id, seq: self.seq, op };
        let body = wire::encode(self.cluster_id, NodeId::NONE, &req, usize::MAX)
            .map_err(|e| ClientError::Refused(e.to_string()))?;
        let datagrams = self
            .transport
            .seal(Kind::ClientRequest, &body)
            .ok_or_else(|| ClientError::Refused("request too large".into()))?;
        let start = tokio::time::Instant::now();
        let mut wait = self.attempt_timeout;
        let mut retries = 0u32;
        loop {
            if start.elapsed() >= self.deadline {
                return Err(ClientError::Timeout(self.deadline));
            }
            let to = self.pinned.or(self.leader).unwrap_or(self.nodes[self.next_node % self.nodes.len()]);
            for d in &datagrams {
                sys::send_to(&self.socket, d, to).await?;
            }
            let got = self.await_response(wait).await?;
            tracing::debug!(client = self.client_id, seq = self.seq, %to, reply = ?got.as_ref().map(reply_kind), "attempt");
            match got {
                Some(reply @ Reply::NotLeader { .. }) if self.pinned.is_some() => return Ok(reply),
                Some(Reply::NotLeader { addr: Some(addr), .. }) if Some(addr) != self.leader => {
                    self.leader = Some(addr)
                }
                Some(Reply::NotLeader { .. }) => {
                    self.forget_leader();
                    sys::sleep(Duration::from_millis(50)).await;
                }
                Some(Reply::Retry(_)) => {
                    // A node that keeps asking for a retry may be cut off: try another.
                    retries += 1;
                    if retries % 4 == 0 && self.pinned.is_none() {
                        self.forget_leader();
                    }
                    sys::sleep(Duration::from_millis(20)).await;
                }
                Some(reply) => return Ok(reply),
                None => {
                    self.forget_leader();
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    fn forget_leader(&mut self) {
        self.leader = None;
        self.next_node = self.next_node.wrapping_add(1);
    }

    async fn await_response(&mut self, wait: Duration) -> Result<Option<Reply>, ClientError> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let remaining = until.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Ok(None);
            }
            let (datagram, from) = match tokio::time::timeout(remaining, self.rx.recv()).await {
                Ok(r) => r?,
                Err(_) => return Ok(None),
            };
            let now = self.clock.now();
            let Ok(Some((kind, body))) = self.transport.open(now, from, &datagram) else { continue };
            // A node may coalesce answers to this address (say, to a request and its retry).
            for r in decode_responses(kind, &body, self.cluster_id) {
                if r.client_id == self.client_id && r.seq == self.seq {
                    if !matches!(r.reply, Reply::NotLeader { .. } | Reply::Retry(_)) {
                        self.leader.get_or_insert(from);
                    }
                    return Ok(Some(r.reply));
                }
            }
        }
    }
}

/// The typed operations of the cluster's client protocol, on top of one primitive (send a
/// request and wait for its answer); [`Client`] and [`crate::mux::Session`] both have them.
// The futures are used where the concrete client is known, which keeps their `Send`-ness.
#[allow(async_fn_in_trait)]
pub trait KvOps {
    /// Sends `op` and waits for its answer, retrying as the client's policy says.
    async fn request(&mut self, op: Op) -> Result<Reply, ClientError>;

    /// Sends every later request to `node` only (no redirects), or to the leader again.
    fn pin(&mut self, node: Option<SocketAddr>);

    /// Sets `key` to `value`; returns the log index it was applied at.
    async fn put(&mut self, key: &str, value: &[u8]) -> Result<LogIndex, ClientError> {
        written_index(self.request(put_op(key, value)).await?)
    }

    /// Deletes `key`; returns whether it existed.
    async fn delete(&mut self, key: &str) -> Result<bool, ClientError> {
        written_existed(self.request(Op::Write(WriteOp::Delete { key: key.into() })).await?)
    }

    /// Compare-and-swap; returns whether it swapped and what the key held.
    async fn cas(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Result<(bool, Option<Vec<u8>>), ClientError> {
        cas_outcome(self.request(cas_op(key, expected, value)).await?)
    }

    /// Reads `key` linearizably.
    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        value_of(self.request(Op::Get { key: key.into() }).await?)
    }

    /// Lists up to `limit` pairs under `prefix`, after `start_after`; and whether more follow.
    async fn list(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<(String, Vec<u8>)>, bool), ClientError> {
        listed(self.request(list_op(prefix, start_after, limit)).await?)
    }

    /// Sends `op` to `node` only (no redirects to other nodes), retrying until it answers.
    async fn request_to(&mut self, node: SocketAddr, op: Op) -> Result<Reply, ClientError> {
        self.pin(Some(node));
        let result = self.request(op).await;
        self.pin(None);
        result
    }

    /// The status of the node at `node` (asks that node, not the leader).
    async fn status_of(&mut self, node: SocketAddr) -> Result<NodeStatus, ClientError> {
        status(self.request_to(node, Op::Admin(AdminOp::Status)).await?)
    }

    /// An admin operation; returns the operator's line.
    async fn admin(&mut self, op: AdminOp) -> Result<String, ClientError> {
        done(self.request(Op::Admin(op)).await?)
    }
}

impl KvOps for Client {
    async fn request(&mut self, op: Op) -> Result<Reply, ClientError> {
        Client::request(self, op).await
    }

    fn pin(&mut self, node: Option<SocketAddr>) {
        self.pinned = node;
    }
}

/// The responses a datagram's body carries: one, several (a batch), or none if it is not a
/// response or does not decode (a client ignores what it cannot use).
pub(crate) fn decode_responses(kind: Kind, body: &[u8], cluster_id: u64) -> Vec<Response> {
    match kind {
        Kind::ClientResponse => {
            wire::decode::<Response>(body, cluster_id, usize::MAX).map(|env| vec![env.body]).unwrap_or_default()
        }
        Kind::ClientResponseBatch => {
            wire::decode::<Batch<Response>>(body, cluster_id, usize::MAX).map(|env| env.body.0).unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

pub(crate) fn put_op(key: &str, value: &[u8]) -> Op {
    Op::Write(WriteOp::Put { key: key.into(), value: value.to_vec() })
}

pub(crate) fn cas_op(key: &str, expected: Option<&[u8]>, value: Option<&[u8]>) -> Op {
    Op::Write(WriteOp::Cas {
        key: key.into(),
        expected: expected.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
    })
}

pub(crate) fn list_op(prefix: &str, start_after: Option<&str>, limit: u32) -> Op {
    Op::List { prefix: prefix.into(), start_after: start_after.map(str::to_string), limit }
}

pub(crate) fn written_index(reply: Reply) -> Result<LogIndex, ClientError> {
    match reply {
        Reply::Written { index, .. } => Ok(index),
        other => Err(refusal(other)),
    }
}

pub(crate) fn written_existed(reply: Reply) -> Result<bool, ClientError> {
    match reply {
        Reply::Written { existed, .. } => Ok(existed),
        other => Err(refusal(other)),
    }
}

pub(crate) fn cas_outcome(reply: Reply) -> Result<(bool, Option<Vec<u8>>), ClientError> {
    match reply {
        Reply::Cas { swapped, current, .. } => Ok((swapped, current)),
        other => Err(refusal(other)),
    }
}

pub(crate) fn value_of(reply: Reply) -> Result<Option<Vec<u8>>, ClientError> {
    match reply {
        Reply::Value(v) => Ok(v),
        other => Err(refusal(other)),
    }
}

/// Pairs listed, and whether more follow.
type Listing = (Vec<(String, Vec<u8>)>, bool);

pub(crate) fn listed(reply: Reply) -> Result<Listing, ClientError> {
    match reply {
        Reply::Listed { items, more } => Ok((items, more)),
        other => Err(refusal(other)),
    }
}

pub(crate) fn status(reply: Reply) -> Result<NodeStatus, ClientError> {
    match reply {
        Reply::Status(s) => Ok(*s),
        other => Err(refusal(other)),
    }
}

pub(crate) fn done(reply: Reply) -> Result<String, ClientError> {
    match reply {
        Reply::Done(line) => Ok(line),
        other => Err(refusal(other)),
    }
}

fn reply_kind(r: &Reply) -> String {
    match r {
        Reply::NotLeader { leader, addr } => format!("not leader ({leader:?} at {addr:?})"),
        Reply::Retry(why) => format!("retry: {why}"),
        Reply::Error(e) => format!("error: {e}"),
        _ => "answer".into(),
    }
}

fn refusal(reply: Reply) -> ClientError {
    match reply {
        Reply::Error(e) => ClientError::Refused(e),
        other => ClientError::Unexpected(Box::new(other)),
    }
}
