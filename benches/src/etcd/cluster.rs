//! Three `etcd` members on loopback in a temporary directory, with etcd's default settings.
//!
//! Only what a three-member cluster needs is passed (names, data directories, URLs, the
//! initial cluster); timings, snapshot counts and fsync behaviour are etcd's defaults
//! (heartbeat 100 ms, election timeout 1000 ms, every raft write fsynced). The members are
//! killed and the directory removed on drop, so a failed run leaves nothing behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::grpc::{within, CallError, Connection};

/// One member's addresses and process.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

/// A cluster of `etcd` processes; killed and removed on drop.
pub struct EtcdCluster {
    exe: PathBuf,
    /// The temporary directory (data and logs).
    pub dir: PathBuf,
    members: Vec<Member>,
    token: String,
}

fn free_tcp_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl EtcdCluster {
    /// Picks ports for `n` members under a new temporary directory (nothing started yet).
    pub fn create(exe: &Path, n: usize) -> std::io::Result<EtcdCluster> {
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("kvbench-etcd-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            members.push(Member {
                name: format!("m{}", i + 1),
                client: free_tcp_port()?,
                peer: free_tcp_port()?,
                child: None,
            });
        }
        Ok(EtcdCluster { exe: exe.to_path_buf(), dir, members, token: format!("kvbench-{stamp}") })
    }

    /// The members' client addresses; member `i` listens at `[i]`.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// Starts member `i` (a restart reuses its data directory; etcd ignores the initial-cluster
    /// flags then). Logs go to `m<i>.log`.
    pub fn start(&mut self, i: usize) -> std::io::Result<()> {
        let initial: Vec<String> = self.members.iter().map(|m| format!("{}=http://{}", m.name, m.peer)).collect();
        let m = &self.members[i];
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{}.log", m.name)))?;
        let child = Command::new(&self.exe)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .arg("--listen-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial.join(","))
            .arg("--initial-cluster-token")
            .arg(&self.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Kills member `i` with `SIGKILL`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id of member `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s own status (a fresh connection, so it works across restarts).
    pub async fn status_of(&self, i: usize) -> Result<super::proto::StatusResponse, CallError> {
        let addr = self.members[i].client;
        within(Duration::from_millis(500), async {
            let c = Connection::connect(addr).await?;
            c.status().await
        })
        .await
    }

    /// Asks every member for its status; the index of the member all answering members agree
    /// leads, once at least `quorum_answers` members answer.
    pub async fn leader(&self, quorum_answers: usize) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for m in &self.members {
            if m.child.is_none() {
                ids.push(0);
                continue;
            }
            let answer = within(Duration::from_millis(500), async {
                let c = Connection::connect(m.client).await?;
                c.status().await
            })
            .await;
            match answer {
                Ok(s) => {
                    ids.push(s.header.member_id);
                    leaders.push(s.leader);
                }
                Err(_) => ids.push(0),
            }
        }
        let first = *leaders.first()?;
        if leaders.len() < quorum_answers || first == 0 || leaders.iter().any(|l| *l != first) {
            return None;
        }
        ids.iter().position(|id| *id == first)
    }

    /// Waits until every running member answers and they agree on a leader.
    pub async fn wait_for_leader(&self, within_time: Duration) -> Result<usize, CallError> {
        let start = tokio::time::Instant::now();
        let running = self.members.iter().filter(|m| m.child.is_some()).count();
        loop {
            if let Some(l) = self.leader(running).await {
                return Ok(l);
            }
            if start.elapsed() > within_time {
                return Err(CallError::Timeout(within_time));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
