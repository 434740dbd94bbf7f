//! `quorate`: run a node, administer a cluster, read and write its metadata.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use quorate_core::NodeId;
use quorate_runtime::client::{Client, KvOps};
use quorate_runtime::config::{self, NodeConfig};
use quorate_runtime::metrics::{self, Metrics};
use quorate_runtime::node::{self, NodeOptions};
use quorate_runtime::protocol::{AdminOp, NodeStatus, Op, Reply};
use quorate_runtime::storage::vfs::FileVfs;
use quorate_runtime::transport::ClusterKey;
use quorate_runtime::{demo, sys};

// Why not the system allocator: see the `mimalloc` entry in Cargo.toml.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "quorate", version, about = "Quorate: a Raft- and SWIM-coordinated metadata cluster node")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node (`quorate node --config node.toml`), or list, add and remove members.
    Node(NodeArgs),
    /// Cluster-wide views and bootstrap.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Leadership.
    Leader {
        #[command(subcommand)]
        cmd: LeaderCmd,
    },
    /// The replicated metadata map.
    Kv {
        #[command(subcommand)]
        cmd: KvCmd,
    },
    /// Print a new random cluster key (64 hex digits), or write it to --out.
    Keygen {
        /// Where to write the key (created with mode 0600); prints it if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Start a three-node cluster on loopback, write, kill the leader, show the failover.
    Demo {
        /// Writes before and after the failover.
        #[arg(long, default_value_t = 100)]
        writes: u32,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct NodeArgs {
    /// The node's configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<NodeCmd>,
}

#[derive(Subcommand)]
enum NodeCmd {
    /// The members: Raft role, SWIM state, address, replication progress.
    List(Conn),
    /// Add a node (as a learner, promoted to voter once caught up).
    Add {
        /// The new node's id.
        id: u64,
        /// Its address, if the cluster's SWIM does not know it yet.
        #[arg(long)]
        addr: Option<SocketAddr>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Remove a node from the Raft membership.
    Remove {
        /// The node's id.
        id: u64,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Bootstrap a new cluster on one empty node (it becomes the first voter).
    Init(Conn),
    /// Every member's Raft state.
    Status(Conn),
    /// Is there a leader, are all voters reachable and in agreement? Exits 1 if not.
    Health(Conn),
    /// The current leader.
    Leader(Conn),
}

#[derive(Subcommand)]
enum LeaderCmd {
    /// Hand leadership to another voter.
    Transfer {
        /// The target (default: the most caught-up voter).
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
enum KvCmd {
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Read a key (linearizable).
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List keys under a prefix (linearizable).
    List {
        /// The prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// Most keys to list.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        conn: Conn,
    },
}

/// How to reach the cluster.
#[derive(Args, Clone)]
struct Conn {
    /// A node to contact (repeat for several); default: the config's listen address and seeds.
    #[arg(long = "node", value_name = "ADDR")]
    nodes: Vec<SocketAddr>,
    /// A node.toml to take the key file, cluster name and addresses from.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster key file (overrides the config's).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The cluster name (overrides the config's).
    #[arg(long)]
    cluster: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

type Failure = String;

fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

impl Conn {
    async fn client(&self) -> Result<Client, Failure> {
        let cfg = match &self.config {
            Some(p) => Some(NodeConfig::load(&p.to_string_lossy()).map_err(|e| e.to_string())?),
            None => None,
        };
        let key_file = self
            .key_file
            .clone()
            .or_else(|| cfg.as_ref().map(|c| c.cluster_key_file.clone()))
            .ok_or("give --key-file or --config (the cluster key is needed to talk to the cluster)")?;
        let key = ClusterKey::load(&key_file.to_string_lossy()).map_err(|e| e.to_string())?;
        let cluster = self
            .cluster
            .clone()
            .or_else(|| cfg.as_ref().map(|c| c.cluster.clone()))
            .unwrap_or_else(|| "default".into());
        let mut nodes = self.nodes.clone();
        if nodes.is_empty() {
            if let Some(c) = &cfg {
                nodes.push(c.listen);
                nodes.extend(c.seeds.iter().copied());
                nodes.extend(c.initial_members.iter().map(|m| m.addr));
            }
        }
        nodes.dedup();
        if nodes.is_empty() {
            return Err("give --node ADDR or --config (no node to contact)".into());
        }
        let mut client =
            Client::new(nodes, key, config::cluster_id(&cluster), random_u64() | 1).await.map_err(|e| e.to_string())?;
        client.deadline = Duration::from_secs_f64(self.timeout.max(0.1));
        Ok(client)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node is one loop: on a current-thread runtime the loop also polls the sockets, so a
    // datagram never needs a cross-thread wake-up. The storage thread runs on the blocking
    // pool; a node that is not leading fsyncs its log on the loop itself (see `node::run_on`).
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cmd: Cmd) -> Result<ExitCode, Failure> {
    match cmd {
        Cmd::Node(NodeArgs { config: Some(path), cmd: None }) => run_node(path).await,
        Cmd::Node(NodeArgs { cmd: Some(cmd), .. }) => node_cmd(cmd).await,
        Cmd::Node(NodeArgs { config: None, cmd: None }) => {
            Err("`quorate node` needs --config node.toml (to run a node) or a subcommand: list, add, remove".into())
        }
        Cmd::Cluster { cmd } => cluster_cmd(cmd).await,
        Cmd::Leader { cmd: LeaderCmd::Transfer { to, conn } } => {
            let mut c = conn.client().await?;
            let line = c.admin(AdminOp::TransferLeader { to: to.map(NodeId) }).await.map_err(|e| e.to_string())?;
            print_line(&conn, &line);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Kv { cmd } => kv_cmd(cmd).await,
        Cmd::Keygen { out } => keygen(out),
        Cmd::Demo { writes } => {
            let exe = std::env::current_exe().map_err(|e| format!("cannot find the quorate binary: {e}"))?;
            let report = demo::run(&exe, writes, &mut std::io::stdout()).await?;
            Ok(if report.lost_writes == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}

async fn run_node(path: PathBuf) -> Result<ExitCode, Failure> {
    init_logs();
    let cfg = NodeConfig::load(&path.to_string_lossy()).map_err(|e| e.to_string())?;
    let key = ClusterKey::load(&cfg.cluster_key_file.to_string_lossy())
        .map_err(|e| format!("config field `cluster_key_file`: {e}"))?;
    let metrics = Metrics::new();
    if let Some(addr) = cfg.metrics_listen {
        let m = metrics.clone();
        sys::spawn(async move {
            if let Err(e) = metrics::serve(addr, m).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let socket = sys::bind_udp(cfg.listen).await.map_err(|e| format!("config field `listen` ({}): {e}", cfg.listen))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    sys::spawn(async move {
        sys::shutdown_signal().await;
        let _ = stop_tx.send(());
    });
    let opts = NodeOptions::new(cfg, key, random_u64());
    node::run_on(FileVfs, opts, socket.into(), stop_rx, metrics).await.map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn keygen(out: Option<PathBuf>) -> Result<ExitCode, Failure> {
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&random_u64().to_le_bytes());
    }
    let hex = ClusterKey::from_bytes(bytes).to_hex();
    match out {
        None => println!("{hex}"),
        Some(path) => {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes()).map_err(|e| e.to_string())?;
            println!("wrote a new cluster key to {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_line(conn: &Conn, line: &str) {
    if conn.json {
        println!("{}", serde_json::json!({ "result": line }));
    } else {
        println!("{line}");
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode JSON: {e}"),
    }
}

/// Asks the contacted node for its status, then each member it knows for theirs.
async fn statuses(
    c: &mut Client,
    conn: &Conn,
) -> Result<(NodeStatus, Vec<(NodeId, Option<SocketAddr>, Option<NodeStatus>)>), Failure> {
    let mut first = None;
    for addr in conn_nodes(c, conn) {
        if let Ok(s) = c.status_of(addr).await {
            first = Some(s);
            break;
        }
    }
    let first = first.ok_or("no node answered")?;
    c.deadline = Duration::from_millis(1500);
    let mut all = Vec::new();
    for m in &first.members {
        let s = match m.addr {
            Some(a) if m.id == first.id => Some(first.clone()).filter(|_| a == first.addr),
            Some(a) => c.status_of(a).await.ok(),
            None => None,
        };
        all.push((m.id, m.addr, s));
    }
    Ok((first, all))
}

fn conn_nodes(c: &Client, conn: &Conn) -> Vec<SocketAddr> {
    let mut v = conn.nodes.clone();
    if let Some(l) = c.leader() {
        v.insert(0, l);
    }
    if v.is_empty() {
        if let Some(cfg) = conn.config.as_ref().and_then(|p| NodeConfig::load(&p.to_string_lossy()).ok()) {
            v.push(cfg.listen);
            v.extend(cfg.seeds);
            v.extend(cfg.initial_members.iter().map(|m| m.addr));
        }
    }
    v
}

async fn cluster_cmd(cmd: ClusterCmd) -> Result<ExitCode, Failure> {
    match cmd {
        ClusterCmd::Init(conn) => {
            let mut c = conn.client().await?;
            let target = conn_nodes(&c, &conn).first().copied().ok_or("give --node ADDR of the node to initialize")?;
            let line = match c.request_to(target, Op::Admin(AdminOp::Init)).await.map_err(|e| e.to_string())? {
                Reply::Done(line) => line,
                Reply::Error(e) => return Err(e),
                other => return Err(format!("unexpected reply: {other:?}")),
            };
            print_line(&conn, &line);
            Ok(ExitCode::SUCCESS)
        }
        ClusterCmd::Status(conn) => {
            let mut c = conn.client().await?;
            let (_, all) = statuses(&mut c, &conn).await?;
            if conn.json {
                let rows: Vec<_> = all
                    .iter()
                    .map(|(id, addr, s)| serde_json::json!({"id": id.0, "addr": addr, "status": s}))
                    .collect();
                print_json(&rows);
            } else {
                println!(
                    "{:<6} {:<22} {:<14} {:>6} {:>7} {:>9} {:>9}",
                    "NODE", "ADDR", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED"
                );
                for (id, addr, s) in &all {
                    let addr = addr.map_or("-".into(), |a| a.to_string());
                    match s {
                        Some(s) => println!(
                            "{:<6} {:<22} {:<14} {:>6} {:>7} {:>9} {:>9}",
                            id.0,
                            addr,
                            s.role,
                            s.term.0,
                            s.leader.map_or("-".into(), |l| l.0.to_string()),
                            s.commit.0,
                            s.applied.0
                        ),
                        None => println!("{:<6} {:<22} unreachable", id.0, addr),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCmd::Health(conn) => {
            let mut c = conn.client().await?;
            let (first, all) = statuses(&mut c, &conn).await?;
            let voters: Vec<_> = first.members.iter().filter(|m| m.raft == "voter").map(|m| m.id).collect();
            let reachable: Vec<_> = all.iter().filter(|(_, _, s)| s.is_some()).map(|(id, _, _)| *id).collect();
            let leaders: Vec<Option<NodeId>> =
                all.iter().filter_map(|(_, _, s)| s.as_ref().map(|s| s.leader)).collect();
            let leader = leaders.first().copied().flatten();
            let agree = leader.is_some() && leaders.iter().all(|l| *l == leader);
            let voters_up = voters.iter().filter(|v| reachable.contains(v)).count();
            let quorum = voters.len() / 2 + 1;
            let healthy = agree && voters_up >= quorum;
            let count = |state: &str| first.members.iter().filter(|m| m.swim == state).count();
            if conn.json {
                print_json(&serde_json::json!({
                    "healthy": healthy, "leader": leader.map(|l| l.0), "leader_agreed": agree,
                    "voters": voters.len(), "voters_reachable": voters_up,
                    "swim": {"alive": count("alive"), "suspect": count("suspect"), "down": count("down"), "left": count("left")},
                }));
            } else {
                println!("healthy: {}", if healthy { "yes" } else { "no" });
                println!(
                    "leader: {}{}",
                    leader.map_or("none".into(), |l| l.0.to_string()),
                    if agree { "" } else { " (members disagree)" }
                );
                println!("voters reachable: {voters_up} of {} (quorum {quorum})", voters.len());
                println!(
                    "swim: {} alive, {} suspect, {} down, {} left",
                    count("alive"),
                    count("suspect"),
                    count("down"),
                    count("left")
                );
            }
            Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        ClusterCmd::Leader(conn) => {
            let mut c = conn.client().await?;
            let (first, _) = statuses(&mut c, &conn).await?;
            let addr = first.leader.and_then(|l| first.members.iter().find(|m| m.id == l)).and_then(|m| m.addr);
            if conn.json {
                print_json(
                    &serde_json::json!({"leader": first.leader.map(|l| l.0), "addr": addr, "term": first.term.0}),
                );
            } else {
                match first.leader {
                    Some(l) => println!(
                        "leader: {} at {} (term {})",
                        l.0,
                        addr.map_or("?".into(), |a| a.to_string()),
                        first.term.0
                    ),
                    None => println!("no leader known (term {})", first.term.0),
                }
            }
            Ok(if first.leader.is_some() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

async fn node_cmd(cmd: NodeCmd) -> Result<ExitCode, Failure> {
    match cmd {
        NodeCmd::List(conn) => {
            let mut c = conn.client().await?;
            let (mut first, _) = statuses(&mut c, &conn).await?;
            // The leader knows every member's progress: ask it when another node answered first.
            if let Some(l) = first.leader.filter(|l| *l != first.id) {
                if let Some(a) = first.members.iter().find(|m| m.id == l).and_then(|m| m.addr) {
                    if let Ok(s) = c.status_of(a).await {
                        first = s;
                    }
                }
            }
            if conn.json {
                print_json(&first.members);
            } else {
                println!("{:<6} {:<22} {:<8} {:<8} {:>9}", "NODE", "ADDR", "RAFT", "SWIM", "MATCHED");
                for m in &first.members {
                    let addr = m.addr.map_or("-".into(), |a| a.to_string());
                    let matched = m.matched.map_or("-".into(), |i| i.0.to_string());
                    println!("{:<6} {:<22} {:<8} {:<8} {:>9}", m.id.0, addr, m.raft, m.swim, matched);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NodeCmd::Add { id, addr, conn } => {
            let mut c = conn.client().await?;
            c.deadline = c.deadline.max(Duration::from_secs(40));
            let line = c.admin(AdminOp::AddNode { id: NodeId(id), addr }).await.map_err(|e| e.to_string())?;
            print_line(&conn, &line);
            Ok(ExitCode::SUCCESS)
        }
        NodeCmd::Remove { id, conn } => {
            let mut c = conn.client().await?;
            let line = c.admin(AdminOp::RemoveNode { id: NodeId(id) }).await.map_err(|e| e.to_string())?;
            print_line(&conn, &line);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn kv_cmd(cmd: KvCmd) -> Result<ExitCode, Failure> {
    match cmd {
        KvCmd::Put { key, value, conn } => {
            let mut c = conn.client().await?;
            let index = c.put(&key, value.as_bytes()).await.map_err(|e| e.to_string())?;
            if conn.json {
                print_json(&serde_json::json!({"key": key, "index": index.0}));
            } else {
                println!("OK (index {})", index.0);
            }
            Ok(ExitCode::SUCCESS)
        }
        KvCmd::Get { key, conn } => {
            let mut c = conn.client().await?;
            let v = c.get(&key).await.map_err(|e| e.to_string())?;
            let text = v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
            if conn.json {
                print_json(&serde_json::json!({"key": key, "value": text}));
            } else {
                match text {
                    Some(t) => println!("{t}"),
                    None => {
                        eprintln!("(not found)");
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KvCmd::Delete { key, conn } => {
            let mut c = conn.client().await?;
            let existed = c.delete(&key).await.map_err(|e| e.to_string())?;
            if conn.json {
                print_json(&serde_json::json!({"key": key, "existed": existed}));
            } else {
                println!("{}", if existed { "deleted" } else { "(was not there)" });
            }
            Ok(ExitCode::SUCCESS)
        }
        KvCmd::List { prefix, limit, conn } => {
            let mut c = conn.client().await?;
            let (items, more) = c.list(&prefix, None, limit).await.map_err(|e| e.to_string())?;
            if conn.json {
                let rows: Vec<_> = items
                    .iter()
                    .map(|(k, v)| serde_json::json!({"key": k, "value": String::from_utf8_lossy(v)}))
                    .collect();
                print_json(&serde_json::json!({"items": rows, "more": more}));
            } else {
                for (k, v) in &items {
                    println!("{k}\t{}", String::from_utf8_lossy(v));
                }
                if more {
                    println!("(more; raise --limit)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
