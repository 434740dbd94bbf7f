//! Real `quorate` processes on loopback: kills, restarts and membership changes under load.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate_core::NodeId;
use quorate_runtime::client::{Client, ClientError, KvOps};
use quorate_runtime::demo::Cluster;
use quorate_runtime::protocol::AdminOp;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_quorate"))
}

/// What the writers had acknowledged: key -> value (each writer owns its keys).
type Acked = Arc<Mutex<BTreeMap<String, String>>>;

/// Writes acknowledged after `marked` was set.
#[derive(Default)]
struct After {
    marked: std::sync::atomic::AtomicBool,
    writes: std::sync::atomic::AtomicU64,
}

/// Starts `clients` writers that each put their own keys until `stop` is set. A write that
/// times out has an unknown outcome and is not recorded; every acknowledged one is.
fn start_writers(
    c: &Cluster,
    clients: u64,
    acked: Acked,
    stop: Arc<std::sync::atomic::AtomicBool>,
    after: Arc<After>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..clients)
        .map(|w| {
            let (acked, stop, after) = (acked.clone(), stop.clone(), after.clone());
            let (addrs, key, cluster_id) =
                (c.addrs.clone(), c.key.clone(), quorate_runtime::config::cluster_id(&c.cluster));
            tokio::spawn(async move {
                let mut client = Client::new(addrs, key, cluster_id, 1000 + w).await.expect("client socket");
                client.deadline = Duration::from_secs(3);
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Keys are overwritten in a cycle, so a read must see the *latest* acked value.
                    let key = format!("w{w}/k{}", n % 20);
                    let value = format!("w{w}-v{n}");
                    match client.put(&key, value.as_bytes()).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(key, value);
                            if after.marked.load(std::sync::atomic::Ordering::Relaxed) {
                                after.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                        Err(ClientError::Timeout(_)) => {
                            // Unknown outcome: the key may now hold this value or the last acked
                            // one. Drop it from the check rather than guess.
                            acked.lock().unwrap().remove(&key);
                        }
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                    n += 1;
                }
                n
            })
        })
        .collect()
}

async fn check_all_readable(c: &Cluster, acked: &Acked) {
    let mut reader = c.client(9).await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "the load did write: {} keys acked", acked.len());
    for (k, v) in &acked {
        let got = reader.get(k).await.unwrap_or_else(|e| panic!("read {k}: {e}"));
        assert_eq!(got.as_deref(), Some(v.as_bytes()), "acknowledged write of {k} lost");
    }
}

async fn wait_caught_up(c: &Cluster, client: &mut Client, node: usize, within: Duration) {
    let (_, leader) = c.wait_for_leader(client, Duration::from_secs(10)).await.expect("a leader");
    let start = tokio::time::Instant::now();
    loop {
        if let Ok(s) = client.status_of(c.addrs[node]).await {
            if s.applied >= leader.commit {
                return;
            }
        }
        assert!(
            start.elapsed() < within,
            "node {} did not catch up to {} within {within:?}",
            node + 1,
            leader.commit.0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_leader_killed_mid_load_and_the_restarted_node_catches_up() {
    let mut c = Cluster::create(exe(), 3, "kill").unwrap();
    for i in 0..3 {
        c.start(i).unwrap();
    }
    let mut admin = c.client(1).await.unwrap();
    let (leader, _) = c.wait_for_leader(&mut admin, Duration::from_secs(15)).await.expect("a leader is elected");
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after_kill = Arc::new(After::default());
    let writers = start_writers(&c, 4, acked.clone(), stop.clone(), after_kill.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.kill(leader);
    after_kill.marked.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.start(leader).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        total += w.await.expect("writer finished");
    }
    let after = after_kill.writes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        total > 50 && after > 20,
        "writers made progress across the failover: {total} writes, {after} after the kill"
    );
    check_all_readable(&c, &acked).await;
    wait_caught_up(&c, &mut admin, leader, Duration::from_secs(15)).await;
    // Every node, including the restarted one, holds the same applied state.
    let statuses: Vec<_> = {
        let mut v = Vec::new();
        for a in &c.addrs {
            v.push(admin.status_of(*a).await.unwrap());
        }
        v
    };
    assert!(statuses.iter().all(|s| s.keys == statuses[0].keys), "nodes disagree on the key count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_added_and_another_removed_while_clients_write() {
    let mut c = Cluster::create(exe(), 3, "members").unwrap();
    for i in 0..3 {
        c.start(i).unwrap();
    }
    let mut admin = c.client(1).await.unwrap();
    admin.deadline = Duration::from_secs(40);
    c.wait_for_leader(&mut admin, Duration::from_secs(15)).await.expect("a leader is elected");
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after_changes = Arc::new(After::default());
    let writers = start_writers(&c, 3, acked.clone(), stop.clone(), after_changes.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let new = c.add_slot().unwrap();
    c.start(new).unwrap();
    let line = admin.admin(AdminOp::AddNode { id: NodeId(new as u64 + 1), addr: Some(c.addrs[new]) }).await.unwrap();
    assert!(line.contains("voter"), "{line}");
    // Remove a follower that is not the new node.
    let (leader, _) = c.wait_for_leader(&mut admin, Duration::from_secs(10)).await.unwrap();
    let victim = (0..3).find(|i| *i != leader).unwrap();
    let line = admin.admin(AdminOp::RemoveNode { id: NodeId(victim as u64 + 1) }).await.unwrap();
    assert!(line.contains("removed"), "{line}");
    after_changes.marked.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer finished");
    }
    assert!(after_changes.writes.load(std::sync::atomic::Ordering::Relaxed) > 10, "writes go on after the changes");
    check_all_readable(&c, &acked).await;
    let (_, status) = c.wait_for_leader(&mut admin, Duration::from_secs(10)).await.unwrap();
    let voters: Vec<u64> = status.members.iter().filter(|m| m.raft == "voter").map(|m| m.id.0).collect();
    assert!(voters.contains(&(new as u64 + 1)), "the new node is a voter: {voters:?}");
    assert!(!voters.contains(&(victim as u64 + 1)), "the removed node is not: {voters:?}");
    wait_caught_up(&c, &mut admin, new, Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_over_and_leaves_gracefully() {
    let mut c = Cluster::create(exe(), 3, "term").unwrap();
    for i in 0..3 {
        c.start(i).unwrap();
    }
    let mut admin = c.client(1).await.unwrap();
    let (leader, before) = c.wait_for_leader(&mut admin, Duration::from_secs(15)).await.expect("a leader");
    // Let SWIM see everyone alive first.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acked: Acked = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let after = Arc::new(After::default());
    let writers = start_writers(&c, 2, acked.clone(), stop.clone(), after.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(c.terminate(leader, Duration::from_secs(10)), "the leader exits on SIGTERM");
    after.marked.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer finished");
    }
    assert!(after.writes.load(std::sync::atomic::Ordering::Relaxed) > 5, "writes go on under the new leader");
    check_all_readable(&c, &acked).await;
    let (_, now) = c.wait_for_leader(&mut admin, Duration::from_secs(5)).await.expect("a new leader");
    assert!(now.term > before.term);
    let gone = now.members.iter().find(|m| m.id.0 == leader as u64 + 1).expect("still a Raft member");
    assert_eq!(gone.swim, "left", "peers saw a graceful leave, not a failure: {gone:?}");
}
