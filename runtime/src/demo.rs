//! `quorate demo`: three real `quorate` processes on loopback, a leader killed mid-run.
//!
//! Starts three nodes in a temporary directory, writes, kills the leader with `SIGKILL`,
//! measures how long until a write succeeds again, writes more, reads every acknowledged write
//! back, restarts the killed node and waits for it to catch up, then stops everything and
//! removes the directory. The integration tests drive the same [`Cluster`] helper.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::client::{Client, ClientError, KvOps};
use crate::config;
use crate::mux::MuxClient;
use crate::protocol::NodeStatus;
use crate::transport::ClusterKey;

/// What the demo measured.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Milliseconds from killing the leader to the first write accepted again.
    pub failover_ms: u64,
    /// Acknowledged writes that could not be read back (must be 0).
    pub lost_writes: usize,
    /// Acknowledged writes read back.
    pub writes_checked: usize,
}

/// A cluster of `quorate` processes in a temporary directory; killed and removed on drop.
pub struct Cluster {
    exe: PathBuf,
    /// The temporary directory.
    pub dir: PathBuf,
    /// Node addresses; node `i + 1` listens at `addrs[i]`.
    pub addrs: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    /// The cluster key.
    pub key: ClusterKey,
    /// The cluster name.
    pub cluster: String,
    keep: bool,
}

fn free_udp_port() -> std::io::Result<SocketAddr> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    s.local_addr()
}

impl Cluster {
    /// Writes configs for `n` nodes (all bootstrap voters) under a new temporary directory.
    pub fn create(exe: &Path, n: usize, tag: &str) -> std::io::Result<Cluster> {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("quorate-{tag}-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = (stamp >> (i % 16 * 8)) as u8 ^ i as u8;
        }
        let key = ClusterKey::from_bytes(key);
        std::fs::write(dir.join("cluster.key"), key.to_hex())?;
        let addrs = (0..n).map(|_| free_udp_port()).collect::<std::io::Result<Vec<_>>>()?;
        let cluster = format!("{tag}-{stamp}");
        let c = Cluster {
            exe: exe.to_path_buf(),
            dir,
            addrs,
            children: (0..n).map(|_| None).collect(),
            key,
            cluster,
            keep: false,
        };
        for i in 0..n {
            c.write_config(i, true)?;
        }
        Ok(c)
    }

    /// Writes node `i`'s config; `bootstrap` makes it one of the initial voters.
    pub fn write_config(&self, i: usize, bootstrap: bool) -> std::io::Result<()> {
        let members: Vec<String> = if bootstrap {
            self.addrs
                .iter()
                .enumerate()
                .take(3)
                .map(|(j, a)| format!("{{ id = {}, addr = \"{a}\" }}", j + 1))
                .collect()
        } else {
            Vec::new()
        };
        let seeds: Vec<String> =
            self.addrs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, a)| format!("\"{a}\"")).collect();
        let text = format!(
            "id = {}\nlisten = \"{}\"\ndata_dir = \"{}\"\ncluster_key_file = \"{}\"\ncluster = \"{}\"\nseeds = [{}]\ninitial_members = [{}]\n",
            i + 1,
            self.addrs[i],
            self.dir.join(format!("n{}", i + 1)).display(),
            self.dir.join("cluster.key").display(),
            self.cluster,
            seeds.join(", "),
            members.join(", "),
        );
        std::fs::write(self.config_path(i), text)
    }

    /// Adds a slot for one more node (not started, not a bootstrap voter).
    pub fn add_slot(&mut self) -> std::io::Result<usize> {
        self.addrs.push(free_udp_port()?);
        self.children.push(None);
        let i = self.addrs.len() - 1;
        self.write_config(i, false)?;
        Ok(i)
    }

    /// Node `i`'s config file.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.toml", i + 1))
    }

    /// Starts node `i` (logs go to `n<i>.log` in the directory).
    pub fn start(&mut self, i: usize) -> std::io::Result<()> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("n{}.log", i + 1)))?;
        let child = Command::new(&self.exe)
            .arg("node")
            .arg("--config")
            .arg(self.config_path(i))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Kills node `i` with `SIGKILL` (no chance to flush anything).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks node `i` to stop with `SIGTERM` and waits up to `wait` for it to exit.
    pub fn terminate(&mut self, i: usize, wait: Duration) -> bool {
        let Some(mut c) = self.children[i].take() else { return true };
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        let start = std::time::Instant::now();
        while start.elapsed() < wait {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// True while node `i`'s process runs.
    pub fn running(&mut self, i: usize) -> bool {
        matches!(self.children[i].as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// A client of every node.
    pub async fn client(&self, client_id: u64) -> std::io::Result<Client> {
        Client::new(self.addrs.clone(), self.key.clone(), config::cluster_id(&self.cluster), client_id).await
    }

    /// A socket for many logical clients of every node.
    pub async fn mux(&self) -> Result<MuxClient, ClientError> {
        MuxClient::new(self.addrs.clone(), self.key.clone(), config::cluster_id(&self.cluster)).await
    }

    /// Waits until some running node reports a leader that every answering node agrees on.
    pub async fn wait_for_leader(&self, client: &mut Client, within: Duration) -> Option<(usize, NodeStatus)> {
        let start = tokio::time::Instant::now();
        let saved = client.deadline;
        client.deadline = Duration::from_millis(300);
        let mut found = None;
        while start.elapsed() < within && found.is_none() {
            for (i, a) in self.addrs.iter().enumerate() {
                if let Ok(s) = client.status_of(*a).await {
                    if s.role == "leader" {
                        found = Some((i, s));
                        break;
                    }
                }
            }
            if found.is_none() {
                crate::sys::sleep(Duration::from_millis(50)).await;
            }
        }
        client.deadline = saved;
        found
    }

    /// Keep the directory on drop (for debugging).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs the demo with the `quorate` binary at `exe`, narrating to `out`.
pub async fn run(exe: &Path, writes: u32, out: &mut impl Write) -> Result<DemoReport, String> {
    let say = |out: &mut dyn Write, line: String| {
        let _ = writeln!(out, "demo: {line}");
    };
    let mut c = Cluster::create(exe, 3, "demo").map_err(|e| format!("cannot set up the demo directory: {e}"))?;
    for i in 0..3 {
        c.start(i).map_err(|e| format!("cannot start node {}: {e}", i + 1))?;
    }
    let list: Vec<String> = c.addrs.iter().map(|a| a.to_string()).collect();
    say(out, format!("started 3 nodes on {} (data and logs in {})", list.join(", "), c.dir.display()));
    let mut client = c.client(7).await.map_err(|e| e.to_string())?;
    let (leader, status) =
        c.wait_for_leader(&mut client, Duration::from_secs(15)).await.ok_or("no leader was elected within 15 s")?;
    say(out, format!("node {} is the leader (term {})", leader + 1, status.term.0));
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..writes {
        let (k, v) = (format!("demo/{i:05}"), format!("value-{i}"));
        client.put(&k, v.as_bytes()).await.map_err(|e| format!("write {k}: {e}"))?;
        acked.push((k, v));
    }
    say(out, format!("wrote {writes} keys, each acknowledged by a quorum"));
    c.kill(leader);
    let killed_at = tokio::time::Instant::now();
    say(out, format!("killed the leader, node {}, with SIGKILL", leader + 1));
    let mut i = writes;
    loop {
        let (k, v) = (format!("demo/{i:05}"), format!("value-{i}"));
        match client.put(&k, v.as_bytes()).await {
            Ok(_) => {
                acked.push((k, v));
                i += 1;
                break;
            }
            Err(_) if killed_at.elapsed() < Duration::from_secs(20) => continue,
            Err(e) => return Err(format!("no write succeeded within 20 s of the kill: {e}")),
        }
    }
    let failover_ms = killed_at.elapsed().as_millis() as u64;
    let (new_leader, status) =
        c.wait_for_leader(&mut client, Duration::from_secs(5)).await.ok_or("the new leader does not answer")?;
    say(
        out,
        format!(
            "node {} leads (term {}); the first write was accepted {failover_ms} ms after the kill",
            new_leader + 1,
            status.term.0
        ),
    );
    for _ in 0..writes.saturating_sub(1) {
        let (k, v) = (format!("demo/{i:05}"), format!("value-{i}"));
        client.put(&k, v.as_bytes()).await.map_err(|e| format!("write {k}: {e}"))?;
        acked.push((k, v));
        i += 1;
    }
    say(out, format!("wrote {} more keys on two nodes", writes.saturating_sub(1) + 1));
    let mut lost = 0usize;
    for (k, v) in &acked {
        match client.get(k).await {
            Ok(Some(got)) if got == v.as_bytes() => {}
            _ => lost += 1,
        }
    }
    say(out, format!("read back {} of {} acknowledged writes", acked.len() - lost, acked.len()));
    c.start(leader).map_err(|e| format!("cannot restart node {}: {e}", leader + 1))?;
    let restarted_at = tokio::time::Instant::now();
    let target = status.commit;
    let mut caught_up = None;
    while restarted_at.elapsed() < Duration::from_secs(15) {
        if let Ok(s) = client.status_of(c.addrs[leader]).await {
            if s.applied >= target {
                caught_up = Some(s.applied);
                break;
            }
        }
        crate::sys::sleep(Duration::from_millis(50)).await;
    }
    match caught_up {
        Some(applied) => say(
            out,
            format!(
                "restarted node {}; it caught up to index {} in {} ms",
                leader + 1,
                applied.0,
                restarted_at.elapsed().as_millis()
            ),
        ),
        None => say(out, format!("restarted node {}; it did not catch up within 15 s", leader + 1)),
    }
    for n in 0..3 {
        c.terminate(n, Duration::from_secs(5));
    }
    say(out, format!("stopped every node with SIGTERM; removing {}", c.dir.display()));
    let report = DemoReport { failover_ms, lost_writes: lost, writes_checked: acked.len() };
    drop(c);
    if lost > 0 {
        say(out, format!("FAILED: {lost} acknowledged writes were lost"));
    } else {
        say(out, "every acknowledged write survived the failover".into());
    }
    Ok(report)
}
