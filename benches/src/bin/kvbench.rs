//! `kvbench`: the same closed-loop load against a three-node Quorate cluster or a three-member
//! etcd cluster, both on loopback, both fsyncing every write.
//!
//! Each run starts a fresh cluster in a temporary directory (Quorate through
//! `quorate_runtime::demo::Cluster` with the `quorate` binary's defaults, pre-vote and
//! check-quorum on; etcd through [`EtcdCluster`] with etcd's defaults), waits for a leader, runs
//! one workload, prints what it measured and a final `kvbench: key=value ...` line (which
//! `etcd-vs-quorate.sh` turns into a table), and removes everything.
//!
//! - `put` / `get`: `--clients` closed-loop clients (each waits for its answer before sending
//!   the next request), 128-byte values by default, every request timed on the monotonic clock;
//!   the first `--warmup` seconds are not counted. Keys cycle per client, so both stores
//!   overwrite the same small key set. etcd clients talk to the leader (its best case: a
//!   follower would forward); Quorate clients find the leader through redirects. On both
//!   sides the clients share `--conns` connections (default `min(clients, 8)`): etcd's
//!   HTTP/2 connections, Quorate's UDP sockets (sessions of a `MuxClient`, whose requests
//!   that are ready together share datagrams); each client still waits for its own answer.
//! - `failover`: one client writes sequentially; the leader is killed with `SIGKILL` and the
//!   time to the first acknowledged write is measured; the killed node is restarted and allowed
//!   to catch up before the next of `--trials` kills. Both sides retry with the same per-attempt
//!   timeout (`--attempt-timeout-ms`).
//!
//! For a look inside, the tool also reports the fsyncs each server did (from their metrics
//! endpoints) and the CPU time each process used, per 1000 operations.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use quorate_benches::etcd::cluster::EtcdCluster;
use quorate_benches::etcd::grpc::{within, CallError, Connection};
use quorate_runtime::client::{Client, KvOps};
use quorate_runtime::demo::Cluster;
use quorate_runtime::mux::Session;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

// The load generator shares the two cores with the cluster it drives, so every microsecond it
// spends is taken from the servers: it uses the same allocator as the `quorate` binary, for
// both targets alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which store to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    Quorate,
    Etcd,
}

/// How Quorate's load clients reach the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum QuorateClient {
    /// Sessions of a few shared `MuxClient` sockets.
    Mux,
    /// One `Client` (and socket) per load client.
    Single,
}

/// What load to apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// Puts of `--value-bytes` values.
    Put,
    /// Linearizable gets of keys written beforehand.
    Get,
    /// Leader killed with SIGKILL; time to the first acknowledged write.
    Failover,
}

/// Drives a local Quorate or etcd cluster with a closed-loop load.
#[derive(Parser, Debug)]
#[command(name = "kvbench")]
struct Args {
    /// The store to benchmark.
    #[arg(long, value_enum)]
    target: Target,
    /// The workload.
    #[arg(long, value_enum, default_value = "put")]
    workload: Workload,
    /// Concurrent closed-loop clients (put and get).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Stop after this many measured operations instead (still at most `--seconds`).
    #[arg(long)]
    ops: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 128)]
    value_bytes: usize,
    /// Distinct keys each client cycles through.
    #[arg(long, default_value_t = 100)]
    keys_per_client: u64,
    /// Leader kills (failover).
    #[arg(long, default_value_t = 7)]
    trials: usize,
    /// Per-attempt timeout of the failover client, on both targets.
    #[arg(long, default_value_t = 50)]
    attempt_timeout_ms: u64,
    /// Failover: let the Quorate client back off as it does by default (its wait doubles
    /// after each silent attempt) instead of one attempt per call like the etcd prober.
    #[arg(long)]
    client_backoff: bool,
    /// The `quorate` binary (default: next to this one).
    #[arg(long)]
    quorate_bin: Option<PathBuf>,
    /// The `etcd` binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Connections the clients share, on both targets: etcd's clients share HTTP/2
    /// connections, Quorate's share UDP sockets (a `MuxClient` each). Default: one per
    /// client, at most 8, which measured best for etcd (one connection serializes, 64 add
    /// per-connection overhead).
    #[arg(long)]
    conns: Option<usize>,
    /// The same as `--conns`, for etcd only (overrides it there).
    #[arg(long)]
    etcd_conns: Option<usize>,
    /// Quorate's load clients: logical sessions sharing `--conns` sockets (`mux`), or one
    /// `Client` and socket each (`single`, as kvbench did before multiplexing).
    #[arg(long, value_enum, default_value = "mux")]
    quorate_client: QuorateClient,
    /// Record the leader with `perf record -g` into this file while measuring.
    #[arg(long)]
    perf: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvbench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvbench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.clients == 0 || args.value_bytes == 0 || args.keys_per_client == 0 {
        return Err("--clients, --value-bytes and --keys-per-client must be at least 1".into());
    }
    println!("kvbench: load average before: {}", loadavg());
    let mut servers = Servers::start(&args).await?;
    println!("kvbench: {:?} cluster up in {}", args.target, servers.dir().display());
    let result = match args.workload {
        Workload::Put | Workload::Get => load(&args, &mut servers).await,
        Workload::Failover => failover(&args, &mut servers).await,
    };
    servers.stop();
    println!("kvbench: load average after: {}", loadavg());
    result
}

// ----- the two clusters behind one interface -----

enum Servers {
    Quorate { cluster: Cluster, metrics: Vec<SocketAddr> },
    Etcd(EtcdCluster),
}

/// A load client of either store.
enum KvClient {
    Quorate(Box<Client>),
    QuorateMux(Box<Session>),
    Etcd(Connection),
}

impl KvClient {
    async fn put(&mut self, key: &str, value: &[u8]) -> Result<(), String> {
        match self {
            KvClient::Quorate(c) => c.put(key, value).await.map(|_| ()).map_err(|e| e.to_string()),
            KvClient::QuorateMux(c) => c.put(key, value).await.map(|_| ()).map_err(|e| e.to_string()),
            KvClient::Etcd(c) => c.put(key.as_bytes(), value).await.map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            KvClient::Quorate(c) => c.get(key).await.map_err(|e| e.to_string()),
            KvClient::QuorateMux(c) => c.get(key).await.map_err(|e| e.to_string()),
            KvClient::Etcd(c) => c
                .get(key.as_bytes())
                .await
                .map(|r| r.kvs.into_iter().next().map(|kv| kv.value))
                .map_err(|e| e.to_string()),
        }
    }
}

fn free_tcp_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())
}

impl Servers {
    async fn start(args: &Args) -> Result<Servers, String> {
        match args.target {
            Target::Quorate => {
                let exe = match &args.quorate_bin {
                    Some(p) => p.clone(),
                    None => std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("quorate"),
                };
                if !exe.exists() {
                    return Err(format!(
                        "no quorate binary at {} (cargo build --release -p quorate-runtime)",
                        exe.display()
                    ));
                }
                let mut cluster = Cluster::create(&exe, 3, "kvbench").map_err(|e| e.to_string())?;
                // The metrics endpoint is the only addition to the defaults: it serves only
                // when scraped (before and after the measurement).
                let mut metrics = Vec::new();
                for i in 0..3 {
                    let addr = free_tcp_addr()?;
                    let path = cluster.config_path(i);
                    let mut text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                    text.push_str(&format!("metrics_listen = \"{addr}\"\n"));
                    std::fs::write(&path, text).map_err(|e| e.to_string())?;
                    metrics.push(addr);
                }
                for i in 0..3 {
                    cluster.start(i).map_err(|e| format!("start node {}: {e}", i + 1))?;
                }
                let servers = Servers::Quorate { cluster, metrics };
                servers.leader().await?;
                Ok(servers)
            }
            Target::Etcd => {
                let mut cluster = EtcdCluster::create(&args.etcd_bin, 3).map_err(|e| e.to_string())?;
                for i in 0..3 {
                    cluster.start(i).map_err(|e| format!("start etcd member {}: {e}", i + 1))?;
                }
                cluster.wait_for_leader(Duration::from_secs(30)).await.map_err(|e| format!("etcd: no leader: {e}"))?;
                Ok(Servers::Etcd(cluster))
            }
        }
    }

    fn dir(&self) -> &Path {
        match self {
            Servers::Quorate { cluster, .. } => &cluster.dir,
            Servers::Etcd(c) => &c.dir,
        }
    }

    /// The index of the node every running node agrees leads.
    async fn leader(&self) -> Result<usize, String> {
        match self {
            Servers::Quorate { cluster, .. } => {
                let mut admin = cluster.client(1).await.map_err(|e| e.to_string())?;
                cluster
                    .wait_for_leader(&mut admin, Duration::from_secs(30))
                    .await
                    .map(|(i, _)| i)
                    .ok_or_else(|| "quorate: no leader within 30 s".to_string())
            }
            Servers::Etcd(c) => c.wait_for_leader(Duration::from_secs(30)).await.map_err(|e| e.to_string()),
        }
    }

    fn pid(&self, i: usize) -> Option<u32> {
        match self {
            Servers::Quorate { cluster, .. } => pid_with_arg(&cluster.config_path(i).to_string_lossy()),
            Servers::Etcd(c) => c.pid(i),
        }
    }

    fn kill(&mut self, i: usize) {
        match self {
            Servers::Quorate { cluster, .. } => cluster.kill(i),
            Servers::Etcd(c) => c.kill(i),
        }
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        match self {
            Servers::Quorate { cluster, .. } => cluster.start(i),
            Servers::Etcd(c) => c.start(i),
        }
        .map_err(|e| format!("restart node {}: {e}", i + 1))
    }

    /// Waits until every node runs under one leader and node `i` has caught up with it.
    async fn wait_caught_up(&self, i: usize, within_time: Duration) -> Result<(), String> {
        let start = Instant::now();
        while start.elapsed() < within_time {
            let leader = self.leader().await?;
            let caught_up = match self {
                Servers::Quorate { cluster, .. } => {
                    let mut admin = cluster.client(1).await.map_err(|e| e.to_string())?;
                    admin.deadline = Duration::from_millis(500);
                    match (admin.status_of(cluster.addrs[leader]).await, admin.status_of(cluster.addrs[i]).await) {
                        (Ok(l), Ok(s)) => s.applied >= l.commit,
                        _ => false,
                    }
                }
                Servers::Etcd(c) => match (c.status_of(leader).await, c.status_of(i).await) {
                    (Ok(l), Ok(s)) => s.leader == l.leader && s.raft_index >= l.raft_index,
                    _ => false,
                },
            };
            if caught_up {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("node {} did not catch up within {within_time:?}", i + 1))
    }

    /// `clients` load clients; etcd's share `conns` connections to the leader, Quorate's
    /// (with `mux`) `conns` sockets, which find the leader through redirects.
    async fn clients(&self, clients: usize, conns: usize, leader: usize, mux: bool) -> Result<Vec<KvClient>, String> {
        let mut out = Vec::with_capacity(clients);
        match self {
            Servers::Quorate { cluster, .. } if mux => {
                let mut shared = Vec::new();
                for _ in 0..conns.clamp(1, clients) {
                    shared.push(cluster.mux().await.map_err(|e| e.to_string())?);
                }
                for i in 0..clients {
                    let s = shared[i % shared.len()].session(1000 + i as u64).map_err(|e| e.to_string())?;
                    out.push(KvClient::QuorateMux(Box::new(s)));
                }
            }
            Servers::Quorate { cluster, .. } => {
                for i in 0..clients {
                    let c = cluster.client(1000 + i as u64).await.map_err(|e| e.to_string())?;
                    out.push(KvClient::Quorate(Box::new(c)));
                }
            }
            Servers::Etcd(c) => {
                let addr = c.client_addrs()[leader];
                let mut shared = Vec::new();
                for _ in 0..conns.clamp(1, clients) {
                    shared.push(Connection::connect(addr).await.map_err(|e| e.to_string())?);
                }
                for i in 0..clients {
                    out.push(KvClient::Etcd(shared[i % shared.len()].clone()));
                }
            }
        }
        Ok(out)
    }

    /// The metrics endpoint of node `i`, and the names of its fsync count and seconds.
    fn metrics_source(&self, i: usize) -> (SocketAddr, &'static str, &'static str) {
        match self {
            Servers::Quorate { metrics, .. } => {
                (metrics[i], "quorate_wal_fsync_seconds_count", "quorate_wal_fsync_seconds_sum")
            }
            Servers::Etcd(c) => (
                c.client_addrs()[i],
                "etcd_disk_wal_fsync_duration_seconds_count",
                "etcd_disk_wal_fsync_duration_seconds_sum",
            ),
        }
    }

    fn stop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

/// What one node did during the measurement.
#[derive(Clone, Copy, Debug, Default)]
struct NodeSample {
    cpu_ticks: u64,
    fsyncs: f64,
    fsync_seconds: f64,
    /// Client requests answered and the seconds they spent inside the node (Quorate only).
    served: f64,
    served_seconds: f64,
    /// Datagrams the node sent and received (Quorate only).
    sent: f64,
    received: f64,
    /// Writes through each of a leader's stages (queued, replicated) and their seconds there
    /// (Quorate only).
    stage_count: [f64; 2],
    stage_seconds: [f64; 2],
    /// Storage batches made durable and their seconds from submission (Quorate only).
    batches: f64,
    batch_seconds: f64,
}

async fn sample_node(servers: &Servers, i: usize) -> NodeSample {
    let (addr, count, sum) = servers.metrics_source(i);
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    let served = |suffix: &str| -> f64 {
        ["read", "write"]
            .iter()
            .filter_map(|kind| metric(&text, &format!("quorate_request_seconds_{suffix}{{kind=\"{kind}\"}}")))
            .sum()
    };
    let stage = |suffix: &str| -> [f64; 2] {
        quorate_runtime::metrics::WRITE_STAGES.map(|stage| {
            metric(&text, &format!("quorate_write_stage_seconds_{suffix}{{stage=\"{stage}\"}}")).unwrap_or(0.0)
        })
    };
    NodeSample {
        cpu_ticks: servers.pid(i).and_then(cpu_ticks).unwrap_or(0),
        fsyncs: metric(&text, count).unwrap_or(0.0),
        fsync_seconds: metric(&text, sum).unwrap_or(0.0),
        served: served("count"),
        served_seconds: served("sum"),
        sent: metric(&text, "quorate_datagrams_sent_total").unwrap_or(0.0),
        received: metric(&text, "quorate_datagrams_received_total").unwrap_or(0.0),
        stage_count: stage("count"),
        stage_seconds: stage("sum"),
        batches: metric(&text, "quorate_storage_batch_seconds_count").unwrap_or(0.0),
        batch_seconds: metric(&text, "quorate_storage_batch_seconds_sum").unwrap_or(0.0),
    }
}

// ----- put and get -----

/// The clock marks every client shares.
struct Window {
    warm_end: Instant,
    end: Instant,
    ops_target: Option<u64>,
    measured: AtomicU64,
    stop: AtomicBool,
}

#[derive(Default)]
struct ClientResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    last_end: Option<Instant>,
    first_error: Option<String>,
}

async fn load(args: &Args, servers: &mut Servers) -> Result<(), String> {
    let leader = servers.leader().await?;
    let conns = args.conns.unwrap_or(args.clients.min(8));
    let conns = if args.target == Target::Etcd { args.etcd_conns.unwrap_or(conns) } else { conns };
    let mux = args.quorate_client == QuorateClient::Mux;
    let mut clients = servers.clients(args.clients, conns, leader, mux).await?;
    let conns_used = if args.target == Target::Quorate && !mux { args.clients } else { conns.clamp(1, args.clients) };
    let value: Arc<[u8]> = (0..args.value_bytes).map(|i| b'a' + (i % 26) as u8).collect::<Vec<u8>>().into();
    if args.workload == Workload::Get {
        // Every key a reader asks for exists (written once, by its own client, all at once).
        let mut preload = Vec::new();
        for (i, mut c) in clients.into_iter().enumerate() {
            let (value, keys) = (value.clone(), args.keys_per_client);
            preload.push(tokio::spawn(async move {
                for k in 0..keys {
                    c.put(&key(i, k), &value).await?;
                }
                Ok::<KvClient, String>(c)
            }));
        }
        clients = Vec::new();
        for t in preload {
            clients.push(t.await.map_err(|e| e.to_string())?.map_err(|e| format!("preload: {e}"))?);
        }
    }
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup);
    // With --ops the window closes when enough operations are counted, or after --seconds.
    let window = Arc::new(Window {
        warm_end,
        end: warm_end + Duration::from_secs_f64(args.seconds),
        ops_target: args.ops,
        measured: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let samples_task = {
        // Samples are taken at the window's edges by a task of its own, so no client waits.
        let pids: Vec<Option<u32>> = (0..3).map(|i| servers.pid(i)).collect();
        let leader_pid = pids[leader];
        let perf = args.perf.clone();
        let window = window.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(window.warm_end).await;
            let perf = match (perf, leader_pid) {
                (Some(file), Some(pid)) => start_perf(&file, pid),
                _ => None,
            };
            let self_before = cpu_ticks(std::process::id());
            (perf, self_before)
        })
    };
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (window, value, workload, keys) = (window.clone(), value.clone(), args.workload, args.keys_per_client);
        tasks.push(tokio::spawn(client_loop(i, c, window, value, workload, keys)));
    }
    // The nodes' counters at the start of the window (their endpoints answer quickly).
    tokio::time::sleep_until(warm_end).await;
    let mut before = Vec::new();
    for i in 0..3 {
        before.push(sample_node(servers, i).await);
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.map_err(|e| format!("client task: {e}"))?);
    }
    let (perf, self_before) = samples_task.await.map_err(|e| e.to_string())?;
    let self_after = cpu_ticks(std::process::id());
    let mut after = Vec::new();
    for i in 0..3 {
        after.push(sample_node(servers, i).await);
    }
    if let Some(p) = perf {
        stop_perf(p);
    }

    // The whole window, unless --ops closed it early at the last counted answer.
    let closed_at = if window.stop.load(Ordering::Relaxed) {
        results.iter().filter_map(|r| r.last_end).max().unwrap_or(window.end).min(window.end)
    } else {
        window.end
    };
    let span = closed_at.max(warm_end + Duration::from_millis(1)) - warm_end;
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let first_error = results.iter().find_map(|r| r.first_error.clone());
    let mut all: Vec<u64> = results.into_iter().flat_map(|r| r.latencies_ns).collect();
    all.sort_unstable();
    let n = all.len() as u64;
    if n == 0 {
        return Err(format!("no operation completed in the window ({errors} errors; first: {first_error:?})"));
    }
    let ops_per_s = n as f64 / span.as_secs_f64();
    let ms = |ns: u64| ns as f64 / 1e6;
    println!(
        "kvbench: {n} {:?}s from {} clients in {:.2} s: {ops_per_s:.0}/s; latency p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {errors} errors{}",
        args.workload,
        args.clients,
        span.as_secs_f64(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
        ms(all[all.len() - 1]),
        first_error.map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    let per_kop = |x: f64| x * 1000.0 / n as f64;
    for i in 0..3 {
        let (b, a) = (before[i], after[i]);
        let fsyncs = a.fsyncs - b.fsyncs;
        let mean_fsync_ms = if fsyncs > 0.0 { (a.fsync_seconds - b.fsync_seconds) * 1e3 / fsyncs } else { 0.0 };
        let batches = a.batches - b.batches;
        let durable = if batches > 0.0 {
            format!(", batches durable {:.3} ms after submission", (a.batch_seconds - b.batch_seconds) * 1e3 / batches)
        } else {
            String::new()
        };
        let served = a.served - b.served;
        let mut inside = if served > 0.0 {
            format!(
                "; answered {served:.0} requests, mean {:.3} ms inside the node",
                (a.served_seconds - b.served_seconds) * 1e3 / served
            )
        } else {
            String::new()
        };
        let stage_ms = |k: usize| {
            let count = a.stage_count[k] - b.stage_count[k];
            (count > 0.0).then(|| (a.stage_seconds[k] - b.stage_seconds[k]) * 1e3 / count)
        };
        if let (Some(queued), Some(replicated)) = (stage_ms(0), stage_ms(1)) {
            inside.push_str(&format!(
                " (writes: {queued:.3} ms queued before their proposal, {replicated:.3} ms from proposal to apply)"
            ));
        }
        if a.sent > b.sent {
            inside.push_str(&format!(
                "; datagrams per op: {:.2} sent, {:.2} received",
                (a.sent - b.sent) / n as f64,
                (a.received - b.received) / n as f64
            ));
        }
        println!(
            "kvbench: node {}{}: {:.0} fsyncs ({:.2} ops per fsync, mean {mean_fsync_ms:.3} ms{durable}), cpu {:.1} ms per 1000 ops{inside}",
            i + 1,
            if i == leader { " (leader)" } else { "" },
            fsyncs,
            if fsyncs > 0.0 { n as f64 / fsyncs } else { 0.0 },
            per_kop(ticks_ms(a.cpu_ticks.saturating_sub(b.cpu_ticks)))
        );
    }
    if let (Some(b), Some(a)) = (self_before, self_after) {
        println!("kvbench: the load generator: cpu {:.1} ms per 1000 ops", per_kop(ticks_ms(a.saturating_sub(b))));
    }
    println!(
        "kvbench: target={} workload={} clients={} conns={conns_used} value_bytes={} ops={n} seconds={:.2} errors={errors} ops_per_s={ops_per_s:.0} p50_ms={:.3} p99_ms={:.3}",
        lower(args.target),
        if args.workload == Workload::Get { "get" } else { "put" },
        args.clients,
        args.value_bytes,
        span.as_secs_f64(),
        ms(percentile(&all, 0.50)),
        ms(percentile(&all, 0.99)),
    );
    Ok(())
}

fn key(client: usize, k: u64) -> String {
    format!("kvbench/c{client}/k{k}")
}

async fn client_loop(
    id: usize,
    mut client: KvClient,
    window: Arc<Window>,
    value: Arc<[u8]>,
    workload: Workload,
    keys: u64,
) -> ClientResult {
    let mut r = ClientResult::default();
    let mut n = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= window.end || window.stop.load(Ordering::Relaxed) {
            break;
        }
        let k = key(id, n % keys);
        let outcome = match workload {
            Workload::Get => match client.get(&k).await {
                Ok(Some(v)) if v.len() == value.len() => Ok(()),
                Ok(other) => Err(format!("get {k}: unexpected value {other:?}")),
                Err(e) => Err(e),
            },
            _ => client.put(&k, &value).await,
        };
        let t1 = Instant::now();
        n += 1;
        if t0 < window.warm_end || t1 > window.end {
            continue;
        }
        match outcome {
            Ok(()) => {
                r.latencies_ns.push((t1 - t0).as_nanos() as u64);
                r.last_end = Some(t1);
                let counted = window.measured.fetch_add(1, Ordering::Relaxed) + 1;
                if window.ops_target.is_some_and(|t| counted >= t) {
                    window.stop.store(true, Ordering::Relaxed);
                }
            }
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert(e);
            }
        }
    }
    r
}

/// The `q`-quantile of sorted `v` (nearest rank).
fn percentile(v: &[u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let rank = ((v.len() as f64) * q).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

// ----- failover -----

/// The failover client of either store: writes until one is acknowledged.
enum Prober {
    Quorate(Box<Client>),
    Etcd { addrs: Vec<SocketAddr>, conns: Vec<Option<Connection>>, current: usize, attempt: Duration },
}

impl Prober {
    /// One write, retried (per-attempt timeout, moving to another node) until acknowledged.
    async fn put(&mut self, key: &str, value: &[u8], give_up: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if start.elapsed() > give_up {
                return Err(format!("no write acknowledged within {give_up:?}"));
            }
            match self {
                Prober::Quorate(c) => {
                    if c.put(key, value).await.is_ok() {
                        return Ok(());
                    }
                }
                Prober::Etcd { addrs, conns, current, attempt } => {
                    let i = *current;
                    let conn = match &conns[i] {
                        Some(c) => Ok(c.clone()),
                        None => within(*attempt, Connection::connect(addrs[i])).await,
                    };
                    let result = match conn {
                        Ok(c) => {
                            conns[i] = Some(c.clone());
                            within(*attempt, c.put(key.as_bytes(), value)).await.map(|_| ())
                        }
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            if e.is_broken() {
                                conns[i] = None;
                            }
                            if matches!(e, CallError::Status { .. }) {
                                // An answer that says "not now" (no leader yet): like Quorate's
                                // client, pause briefly before asking again.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            *current = (i + 1) % addrs.len();
                        }
                    }
                }
            }
        }
    }

    fn aim_at(&mut self, leader: usize) {
        if let Prober::Etcd { current, .. } = self {
            *current = leader;
        }
    }
}

async fn failover(args: &Args, servers: &mut Servers) -> Result<(), String> {
    let attempt = Duration::from_millis(args.attempt_timeout_ms.max(1));
    let mut prober = match &*servers {
        Servers::Quorate { cluster, .. } => {
            let mut c = cluster.client(7).await.map_err(|e| e.to_string())?;
            c.attempt_timeout = attempt;
            // One attempt per call (plus the redirects it is answered with), retried at once
            // by `Prober::put`: the same policy as the etcd prober. With a longer deadline the
            // client doubles its wait after each silent attempt (50, 100, 200, 400 ms), and
            // the measurement lands on those steps instead of on the election.
            c.deadline = if args.client_backoff { attempt * 10 } else { attempt };
            Prober::Quorate(Box::new(c))
        }
        Servers::Etcd(c) => {
            let addrs = c.client_addrs();
            Prober::Etcd { conns: vec![None; addrs.len()], addrs, current: 0, attempt }
        }
    };
    let value = vec![b'v'; args.value_bytes];
    let mut took_ms = Vec::new();
    let mut n = 0u64;
    for trial in 0..args.trials {
        let leader = servers.leader().await?;
        prober.aim_at(leader);
        // A second of steady sequential writes, so the kill lands at a random point of the
        // leader's heartbeat cycle with the client attached to it.
        let steady = Instant::now();
        while steady.elapsed() < Duration::from_secs(1) {
            prober.put(&key(0, n % 100), &value, Duration::from_secs(10)).await?;
            n += 1;
        }
        let killed_at = Instant::now();
        servers.kill(leader);
        prober.put(&key(0, n % 100), &value, Duration::from_secs(30)).await?;
        let ms = killed_at.elapsed().as_secs_f64() * 1e3;
        n += 1;
        let new_leader = servers.leader().await?;
        println!(
            "kvbench: trial {}: killed node {}; first write acknowledged after {ms:.1} ms; node {} leads",
            trial + 1,
            leader + 1,
            new_leader + 1
        );
        took_ms.push(ms);
        servers.restart(leader)?;
        servers.wait_caught_up(leader, Duration::from_secs(60)).await?;
    }
    let mut sorted = took_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let list: Vec<String> = took_ms.iter().map(|m| format!("{m:.0}")).collect();
    println!(
        "kvbench: target={} workload=failover trials={} attempt_timeout_ms={} median_ms={median:.0} min_ms={:.0} max_ms={:.0} all_ms={}",
        lower(args.target),
        took_ms.len(),
        attempt.as_millis(),
        sorted.first().copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
        list.join(","),
    );
    Ok(())
}

// ----- the host: /proc, metrics endpoints, perf -----

fn lower(t: Target) -> &'static str {
    match t {
        Target::Quorate => "quorate",
        Target::Etcd => "etcd",
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// User plus system CPU time of process `pid`, in clock ticks (`/proc/<pid>/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks to milliseconds (Linux's USER_HZ is 100 on every mainstream architecture).
fn ticks_ms(ticks: u64) -> f64 {
    ticks as f64 * 10.0
}

/// The process whose command line has `arg` as one of its arguments.
fn pid_with_arg(arg: &str) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        if cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// A plain HTTP/1.0 GET (both metrics endpoints speak it).
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        String::from_utf8(body).ok()
    };
    tokio::time::timeout(Duration::from_secs(2), fetch).await.ok().flatten()
}

/// The value of the unlabelled sample `name` in a Prometheus text page.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn start_perf(file: &Path, pid: u32) -> Option<std::process::Child> {
    std::process::Command::new("perf")
        .args(["record", "-g", "-q", "-o"])
        .arg(file)
        .arg("-p")
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()
}

fn stop_perf(mut child: std::process::Child) {
    // perf writes its file on SIGINT.
    let _ = std::process::Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
    let _ = child.wait();
}
