//! Prometheus metrics of a node, and the tiny HTTP endpoint that serves them.
//!
//! The node updates atomic handles as it goes; the endpoint encodes the registry in the
//! Prometheus text format on `GET /metrics`. Nothing here blocks the node's loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `reason` or `kind` label.
pub type Labels = Vec<(&'static str, &'static str)>;

/// Every metric a node exports.
#[derive(Clone)]
pub struct Metrics {
    /// Current Raft term.
    pub term: Gauge,
    /// Highest committed index.
    pub commit_index: Gauge,
    /// Highest applied index.
    pub applied_index: Gauge,
    /// Known leader's id (0 if none).
    pub leader_id: Gauge,
    /// 1 while this node leads.
    pub is_leader: Gauge,
    /// SWIM members by state.
    pub members: Family<Labels, Gauge>,
    /// Datagrams sent.
    pub datagrams_sent: Counter,
    /// Datagrams received.
    pub datagrams_received: Counter,
    /// Datagrams dropped, by reason.
    pub datagrams_dropped: Family<Labels, Counter>,
    /// Datagrams received that carried a batch of client requests.
    pub request_batches: Counter,
    /// Datagrams sent that carried a batch of responses.
    pub response_batches: Counter,
    /// Seconds each group commit (writes plus one fsync) took.
    pub fsync_seconds: Histogram,
    /// Batches covered by each fsync.
    pub fsync_batches: Histogram,
    /// Seconds from handing a storage batch to the group commit to the loop hearing it is
    /// durable: `fsync_seconds` plus the wait behind earlier groups and the hand-offs.
    pub storage_batch_seconds: Histogram,
    /// Seconds from receiving a client request to answering it, by kind.
    pub request_seconds: Family<Labels, Histogram>,
    /// `request_seconds` of writes, reads and admin requests (looked up once, not per request).
    pub request_kinds: [Histogram; 3],
    /// `members` by state: alive, suspect, down, left.
    pub member_states: [Gauge; 4],
    /// Seconds a leader's client write spent in each stage, by stage (see [`WRITE_STAGES`]).
    pub write_stage_seconds: Family<Labels, Histogram>,
    /// `write_stage_seconds` by stage (looked up once, not per write).
    pub write_stages: [Histogram; 2],
    registry: Arc<Registry>,
}

/// Index of a request kind in [`Metrics::request_kinds`].
pub const REQUEST_KINDS: [&str; 3] = ["write", "read", "admin"];
/// Index of a stage in [`Metrics::write_stages`]: `queued` is from receiving a write to
/// proposing it (a leader defers proposals while a storage batch is in flight), `replicated`
/// from proposing it to applying it (its fsyncs and a quorum's acks).
pub const WRITE_STAGES: [&str; 2] = ["queued", "replicated"];
/// Index of a SWIM state in [`Metrics::member_states`].
pub const MEMBER_STATES: [&str; 4] = ["alive", "suspect", "down", "left"];

fn latency_histogram() -> Histogram {
    // 50 µs to about 3 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("quorate");
        let m = Metrics {
            term: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            leader_id: Gauge::default(),
            is_leader: Gauge::default(),
            members: Family::default(),
            datagrams_sent: Counter::default(),
            datagrams_received: Counter::default(),
            datagrams_dropped: Family::default(),
            request_batches: Counter::default(),
            response_batches: Counter::default(),
            fsync_seconds: latency_histogram(),
            fsync_batches: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            storage_batch_seconds: latency_histogram(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            request_kinds: [latency_histogram(), latency_histogram(), latency_histogram()],
            member_states: Default::default(),
            write_stage_seconds: Family::new_with_constructor(latency_histogram),
            write_stages: [latency_histogram(), latency_histogram()],
            registry: Arc::new(Registry::default()),
        };
        let request_kinds = REQUEST_KINDS.map(|k| m.request_seconds.get_or_create(&vec![("kind", k)]).clone());
        let write_stages = WRITE_STAGES.map(|k| m.write_stage_seconds.get_or_create(&vec![("stage", k)]).clone());
        let member_states = MEMBER_STATES.map(|s| m.members.get_or_create(&vec![("state", s)]).clone());
        r.register("raft_term", "Current Raft term", m.term.clone());
        r.register("raft_commit_index", "Highest committed log index", m.commit_index.clone());
        r.register("raft_applied_index", "Highest applied log index", m.applied_index.clone());
        r.register("raft_leader_id", "Id of the known leader (0 if none)", m.leader_id.clone());
        r.register("raft_is_leader", "1 while this node leads", m.is_leader.clone());
        r.register("swim_members", "SWIM members by state", m.members.clone());
        r.register("datagrams_sent", "Datagrams sent", m.datagrams_sent.clone());
        r.register("datagrams_received", "Datagrams received", m.datagrams_received.clone());
        r.register("datagrams_dropped", "Datagrams dropped before the core, by reason", m.datagrams_dropped.clone());
        r.register(
            "client_request_batches",
            "Datagrams received with several client requests",
            m.request_batches.clone(),
        );
        r.register("client_response_batches", "Datagrams sent with several responses", m.response_batches.clone());
        r.register("wal_fsync_seconds", "Seconds per group commit (writes and one fsync)", m.fsync_seconds.clone());
        r.register("wal_fsync_batches", "Batches covered by one fsync", m.fsync_batches.clone());
        r.register(
            "storage_batch_seconds",
            "Seconds from submitting a storage batch to hearing it is durable",
            m.storage_batch_seconds.clone(),
        );
        r.register("request_seconds", "Seconds from a client request to its answer", m.request_seconds.clone());
        r.register(
            "write_stage_seconds",
            "Seconds a leader's client write spent queued before its proposal, and from proposal to apply",
            m.write_stage_seconds.clone(),
        );
        Metrics { registry: Arc::new(r), request_kinds, member_states, write_stages, ..m }
    }

    /// Records one group commit.
    pub fn observe_fsync(&self, took: Duration, batches: usize) {
        self.fsync_seconds.observe(took.as_secs_f64());
        self.fsync_batches.observe(batches as f64);
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Serves `GET /metrics` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let metrics = metrics.clone();
        crate::sys::spawn(async move {
            // Read the request head (it may arrive in pieces), up to a bound and a deadline.
            let mut buf = Vec::with_capacity(1024);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                let mut chunk = [0u8; 1024];
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match tokio::time::timeout(left, stream.read(&mut chunk)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let n = buf.len();
            let request = String::from_utf8_lossy(&buf[..n]);
            let ok = request.starts_with("GET /metrics ") || request.starts_with("GET / ");
            let (status, body) =
                if ok { ("200 OK", metrics.render()) } else { ("404 Not Found", "try /metrics\n".into()) };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_prometheus_text_format() {
        let m = Metrics::new();
        m.term.set(7);
        m.datagrams_dropped.get_or_create(&vec![("reason", "bad_tag")]).inc();
        m.observe_fsync(Duration::from_micros(300), 4);
        let text = m.render();
        assert!(text.contains("quorate_raft_term 7"), "{text}");
        assert!(text.contains("quorate_datagrams_dropped_total{reason=\"bad_tag\"} 1"), "{text}");
        assert!(text.contains("quorate_wal_fsync_seconds_count 1"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
