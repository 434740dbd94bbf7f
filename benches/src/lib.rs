//! Benchmark crate.
