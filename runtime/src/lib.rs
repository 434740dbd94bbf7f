//! The Quorate node: the core's Raft and SWIM machines driven for real, over UDP, with durable
//! storage.
//!
//! - [`transport`]: one UDP socket per node; every datagram authenticated with the cluster key;
//!   large messages split and reassembled in bounded buffers.
//! - [`storage`]: a segmented, checksummed write-ahead log with group commit, snapshots written
//!   atomically, recovery that cuts off a torn tail; written against a small file-system trait
//!   ([`storage::vfs`]) with a real and a simulated implementation.
//! - [`node`]: the driving loop (receive, step with `now`, carry out actions in order, persist
//!   before send), client sessions, admin operations, graceful leave.
//! - [`client`]: the client library the `quorate` binary, tests and benchmarks use.
//! - [`mux`]: many logical clients over one socket, their requests and answers coalesced
//!   into shared datagrams.
//! - [`sys`]: the only place that touches tokio directly, so the same code runs under madsim.
//!
//! # Example
//! A one-node cluster on loopback, a write and a linearizable read:
//!
//! ```
//! use quorate_runtime::client::{Client, KvOps};
//! use quorate_runtime::config::NodeConfig;
//! use quorate_runtime::node::{self, NodeOptions};
//! use quorate_runtime::protocol::AdminOp;
//! use quorate_runtime::storage::vfs::FileVfs;
//! use quorate_runtime::transport::ClusterKey;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! rt.block_on(async {
//!     let dir = std::env::temp_dir().join(format!("quorate-doc-{}", std::process::id()));
//!     let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
//!     let addr = socket.local_addr()?;
//!     let key = ClusterKey::from_bytes([7; 32]);
//!     let config = NodeConfig::new(1, addr, dir.clone(), dir.join("unused.key"));
//!     let cluster_id = config.cluster_id();
//!     let opts = NodeOptions::new(config, key.clone(), 1);
//!     let (stop, stopped) = tokio::sync::oneshot::channel();
//!     let running = tokio::spawn(node::run_on(FileVfs, opts, socket.into(), stopped, Default::default()));
//!
//!     let mut client = Client::new(vec![addr], key, cluster_id, 42).await?;
//!     client.admin(AdminOp::Init).await?;
//!     client.put("config/replicas", b"3").await?;
//!     assert_eq!(client.get("config/replicas").await?, Some(b"3".to_vec()));
//!
//!     let _ = stop.send(());
//!     running.await??;
//!     std::fs::remove_dir_all(&dir)?;
//!     Ok(())
//! })
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod demo;
pub mod kv;
pub mod metrics;
pub mod mux;
pub mod node;
pub mod protocol;
pub mod storage;
pub mod sys;
pub mod transport;
