//! Many logical clients over one socket (`MuxClient`), against nodes running in this process:
//! exactly-once writes through lost answers, redirects to the leader, batched datagrams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorate_runtime::client::{Client, KvOps};
use quorate_runtime::config::{InitialMember, NodeConfig};
use quorate_runtime::metrics::Metrics;
use quorate_runtime::mux::{MuxClient, Session};
use quorate_runtime::node::{self, NodeOptions};
use quorate_runtime::protocol::{AdminOp, Op, Reply, WriteOp};
use quorate_runtime::storage::vfs::FileVfs;
use quorate_runtime::transport::{ClusterKey, Kind};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x5a; 32])
}

fn temp_dir(tag: &str) -> PathBuf {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("quorate-mux-{tag}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A node of this process, and how to stop it.
struct Running {
    addr: SocketAddr,
    metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), node::NodeError>>>,
}

impl Running {
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("node task").expect("node stopped cleanly");
        }
    }
}

/// Starts nodes `1..=n` on loopback, all bootstrap voters when `n > 1`.
async fn start_nodes(dir: &std::path::Path, n: u64) -> (Vec<Running>, u64) {
    let mut sockets = Vec::new();
    for _ in 0..n {
        sockets.push(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().expect("addr")).collect();
    let mut nodes = Vec::new();
    let mut cluster_id = 0;
    for (i, socket) in sockets.into_iter().enumerate() {
        let id = i as u64 + 1;
        let data = dir.join(format!("n{id}"));
        std::fs::create_dir_all(&data).expect("data dir");
        let mut config = NodeConfig::new(id, addrs[i], data, dir.join("unused.key"));
        if n > 1 {
            config.initial_members =
                addrs.iter().enumerate().map(|(j, a)| InitialMember { id: j as u64 + 1, addr: *a }).collect();
            config.seeds = addrs.clone();
        }
        cluster_id = config.cluster_id();
        let metrics = Metrics::new();
        let (stop, stopped) = oneshot::channel();
        let opts = NodeOptions::new(config, key(), 17 + id);
        let task = tokio::spawn(node::run_on(FileVfs, opts, Arc::new(socket), stopped, metrics.clone()));
        nodes.push(Running { addr: addrs[i], metrics, stop: Some(stop), task: Some(task) });
    }
    (nodes, cluster_id)
}

/// Counts what passes a [`LossyProxy`].
#[derive(Default)]
struct ProxyStats {
    request_batches: AtomicU64,
    response_batches: AtomicU64,
    responses_dropped: AtomicU64,
}

/// A UDP relay between one client socket and one node that drops every `drop_every`-th
/// datagram the node sends back: answers are lost, requests are not.
async fn lossy_proxy(node: SocketAddr, drop_every: u64) -> (SocketAddr, Arc<ProxyStats>) {
    let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = front.local_addr().expect("addr");
    let stats = Arc::new(ProxyStats::default());
    let counts = stats.clone();
    tokio::spawn(async move {
        let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
        let mut client: Option<SocketAddr> = None;
        let mut answers = 0u64;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut a) => {
                    client = Some(from);
                    if a[0] == Kind::ClientRequestBatch as u8 {
                        counts.request_batches.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = back.send_to(&a[..n], node).await;
                }
                Ok((n, _)) = back.recv_from(&mut b) => {
                    if b[0] == Kind::ClientResponseBatch as u8 {
                        counts.response_batches.fetch_add(1, Ordering::Relaxed);
                    }
                    answers += 1;
                    if answers % drop_every == 0 {
                        counts.responses_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if let Some(c) = client {
                        let _ = front.send_to(&b[..n], c).await;
                    }
                }
            }
        }
    });
    (addr, stats)
}

/// `writes` fresh keys, each put once, and a counter advanced by compare-and-swap after each:
/// a write applied twice would show as a put that found its key, or a swap that failed.
async fn exactly_once_load(mut s: Session, writes: u64) -> Session {
    let me = s.client_id();
    let counter = format!("s{me}/count");
    for n in 0..writes {
        let op = Op::Write(WriteOp::Put { key: format!("s{me}/k{n}"), value: format!("v{me}-{n}").into_bytes() });
        match s.request(op).await.expect("put answered") {
            Reply::Written { existed, .. } => assert!(!existed, "session {me}: put {n} was applied twice"),
            other => panic!("session {me}: put {n}: {other:?}"),
        }
        let expected = (n > 0).then(|| n.to_string().into_bytes());
        let (swapped, current) =
            s.cas(&counter, expected.as_deref(), Some((n + 1).to_string().as_bytes())).await.expect("cas answered");
        assert!(swapped, "session {me}: cas {n} did not swap; the counter held {current:?}");
    }
    s
}

async fn check_load(reader: &mut Client, sessions: std::ops::Range<u64>, writes: u64) {
    for me in sessions {
        for n in 0..writes {
            let got = reader.get(&format!("s{me}/k{n}")).await.expect("get");
            assert_eq!(got, Some(format!("v{me}-{n}").into_bytes()), "session {me} key {n}");
        }
        let count = reader.get(&format!("s{me}/count")).await.expect("get");
        assert_eq!(count, Some(writes.to_string().into_bytes()), "session {me}'s counter");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_sharing_a_socket_write_exactly_once_when_answers_are_lost() {
    let dir = temp_dir("lossy");
    let (mut nodes, cluster_id) = start_nodes(&dir, 1).await;
    let node_addr = nodes[0].addr;
    let mut admin = Client::new(vec![node_addr], key(), cluster_id, 1).await.expect("client");
    admin.admin(AdminOp::Init).await.expect("init");

    // Every fifth datagram the node sends back is lost: the sessions it answered resend with
    // the same sequence number and must get the outcome of their first attempt.
    let (proxy, stats) = lossy_proxy(node_addr, 5).await;
    let mux = MuxClient::new(vec![proxy], key(), cluster_id).await.expect("mux");
    let (sessions, writes) = (100..132u64, 15u64);
    let mut tasks = Vec::new();
    for id in sessions.clone() {
        let mut s = mux.session(id).expect("session");
        s.attempt_timeout = Duration::from_millis(40);
        s.deadline = Duration::from_secs(30);
        tasks.push(tokio::spawn(exactly_once_load(s, writes)));
    }
    assert!(mux.session(100).is_err(), "a second live session with the same id is refused");
    assert!(mux.session(0).is_err(), "client id 0 is reserved");
    for t in tasks {
        t.await.expect("session task");
    }

    check_load(&mut admin, sessions, writes).await;
    assert!(stats.responses_dropped.load(Ordering::Relaxed) > 0, "the proxy lost answers");
    assert!(stats.request_batches.load(Ordering::Relaxed) > 0, "requests shared datagrams");
    assert!(stats.response_batches.load(Ordering::Relaxed) > 0, "answers shared datagrams");
    assert!(nodes[0].metrics.request_batches.get() > 0);
    assert!(nodes[0].metrics.response_batches.get() > 0);
    for n in &mut nodes {
        n.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_find_the_leader_of_three_nodes_through_redirects_and_read_their_writes() {
    let dir = temp_dir("three");
    let (mut nodes, cluster_id) = start_nodes(&dir, 3).await;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut admin = Client::new(addrs.clone(), key(), cluster_id, 1).await.expect("client");
    admin.deadline = Duration::from_secs(30);
    let leader = loop {
        let status = admin.status_of(addrs[0]).await.expect("status");
        if let Some(l) = status.leader {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // List the followers first, so the sessions start at a node that redirects them.
    let leader_addr = addrs[leader.0 as usize - 1];
    let mut order: Vec<SocketAddr> = addrs.iter().copied().filter(|a| *a != leader_addr).collect();
    order.push(leader_addr);
    let mux = MuxClient::new(order, key(), cluster_id).await.expect("mux");
    let (sessions, writes) = (200..224u64, 10u64);
    let mut tasks = Vec::new();
    for id in sessions.clone() {
        let mut s = mux.session(id).expect("session");
        s.deadline = Duration::from_secs(30);
        tasks.push(tokio::spawn(async move {
            let mut s = exactly_once_load(s, writes).await;
            // Linearizable reads through the same socket see the session's own writes.
            let me = s.client_id();
            for n in 0..writes {
                assert_eq!(s.get(&format!("s{me}/k{n}")).await.expect("get"), Some(format!("v{me}-{n}").into_bytes()));
            }
        }));
    }
    for t in tasks {
        t.await.expect("session task");
    }
    assert!(mux.leader().is_some_and(|l| addrs.contains(&l)), "the sessions learned a leader");
    check_load(&mut admin, sessions, writes).await;
    let i = leader.0 as usize - 1;
    assert!(nodes[i].metrics.request_batches.get() > 0, "the leader received batches");
    assert!(nodes[i].metrics.response_batches.get() > 0, "the leader answered in batches");
    for n in &mut nodes {
        n.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
