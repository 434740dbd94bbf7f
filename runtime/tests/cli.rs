//! The `quorate` binary as an operator uses it: config errors, keygen, init, kv, status, metrics.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn quorate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quorate")).args(args).output().expect("run quorate")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

struct Dir(PathBuf);

/// Kills the node when the test ends, so a failed assertion leaves no process behind.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp(tag: &str) -> Dir {
    let d = std::env::temp_dir().join(format!("quorate-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Dir(d)
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn config_errors_name_the_field_and_exit_nonzero() {
    let d = temp("badcfg");
    let cfg = d.0.join("node.toml");
    let cases = [
        ("id = 0\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"x\"\ncluster_key_file = \"k\"\n", "`id`"),
        ("id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"x\"\ncluster_key_file = \"k\"\n[raft]\nheartbeat_interval_ms = 500\n", "raft.heartbeat_interval_ms"),
        ("id = 1\nlisten = \"nowhere\"\ndata_dir = \"x\"\ncluster_key_file = \"k\"\n", "listen"),
        ("id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"x\"\ncluster_key_file = \"k\"\ncolour = 1\n", "colour"),
        ("id = 1\nlisten = \"127.0.0.1:7001\"\ndata_dir = \"x\"\ncluster_key_file = \"/nonexistent/key\"\n", "cluster_key_file"),
    ];
    for (body, field) in cases {
        std::fs::write(&cfg, body).unwrap();
        let out = quorate(&["node", "--config", cfg.to_str().unwrap()]);
        assert!(!out.status.success(), "{body:?} must be refused");
        assert!(text(&out).contains(field), "{body:?}: the error names {field}: {}", text(&out));
    }
    let out = quorate(&["node"]);
    assert!(!out.status.success() && text(&out).contains("--config"), "{}", text(&out));
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[test]
fn one_node_is_initialized_written_read_and_observed_through_the_cli() {
    let d = temp("single");
    let key = d.0.join("cluster.key");
    let out = quorate(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);
    let out = quorate(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!out.status.success(), "keygen never overwrites a key");

    let (port, metrics) = (free_port(), free_tcp_port());
    let cfg = d.0.join("node.toml");
    let body = format!(
        "id = 1\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ncluster_key_file = \"{}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
        d.0.join("data").display(),
        key.display()
    );
    std::fs::write(&cfg, body).unwrap();
    let cfg = cfg.to_str().unwrap();
    let mut node = Reaper(
        Command::new(env!("CARGO_BIN_EXE_quorate"))
            .args(["node", "--config", cfg])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", cfg]);
        quorate(&all)
    };
    let out = run(&["cluster", "init"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("initialized"), "{}", text(&out));
    let out = run(&["cluster", "init"]);
    assert!(!out.status.success(), "a second init is refused: {}", text(&out));
    let out = run(&["kv", "put", "svc/a", "one"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["kv", "get", "svc/a", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["value"], "one");
    let out = run(&["kv", "list", "svc/"]);
    assert!(text(&out).contains("svc/a\tone"), "{}", text(&out));
    let out = run(&["kv", "delete", "svc/a"]);
    assert!(text(&out).contains("deleted"), "{}", text(&out));
    let out = run(&["kv", "get", "svc/a"]);
    assert!(!out.status.success(), "a missing key exits 1");
    let out = run(&["cluster", "health"]);
    assert!(out.status.success() && text(&out).contains("healthy: yes"), "{}", text(&out));
    let out = run(&["cluster", "leader", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["leader"], 1);
    let out = run(&["cluster", "status"]);
    assert!(text(&out).contains("leader"), "{}", text(&out));
    let out = run(&["node", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v[0]["raft"], "voter");
    let out = run(&["leader", "transfer"]);
    assert!(!out.status.success(), "nobody to transfer to: {}", text(&out));
    let metrics_text = http_get(metrics, "/metrics");
    assert!(metrics_text.contains("quorate_raft_is_leader 1"), "{metrics_text}");
    assert!(metrics_text.contains("quorate_wal_fsync_seconds_count"), "{metrics_text}");
    assert!(metrics_text.contains("quorate_request_seconds_count{kind=\"write\"}"), "{metrics_text}");
    // The writes above went through both of the leader's stages, and their log entries
    // through the storage batches whose durability the node heard of.
    let names = ["queued", "replicated"]
        .map(|stage| format!("quorate_write_stage_seconds_count{{stage=\"{stage}\"}} "))
        .into_iter()
        .chain(["quorate_storage_batch_seconds_count ".to_string()]);
    for name in names {
        let count = metrics_text
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(count >= 1.0, "{name}: {metrics_text}");
    }

    // A wrong key is dropped and counted, never answered.
    let wrong = d.0.join("wrong.key");
    std::fs::write(&wrong, "ab".repeat(32)).unwrap();
    let out = quorate(&[
        "kv",
        "get",
        "svc/a",
        "--node",
        &format!("127.0.0.1:{port}"),
        "--key-file",
        wrong.to_str().unwrap(),
        "--timeout",
        "0.5",
    ]);
    assert!(!out.status.success() && text(&out).contains("no answer"), "{}", text(&out));
    let metrics_text = http_get(metrics, "/metrics");
    assert!(metrics_text.contains("quorate_datagrams_dropped_total{reason=\"bad_tag\"}"), "{metrics_text}");

    let _ = Command::new("kill").arg("-TERM").arg(node.0.id().to_string()).status();
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = node.0.try_wait().unwrap() {
            assert!(status.success(), "SIGTERM stops the node cleanly: {status:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "the node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Path::new(cfg);
}
