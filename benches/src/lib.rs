//! Benchmark crate: criterion benches of the core against raft-rs (`benches/`), and `kvbench`,
//! the tool that drives a Quorate cluster or an etcd cluster with the same load
//! (`src/bin/kvbench.rs`, run by `benches/etcd-vs-quorate.sh`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod etcd;
