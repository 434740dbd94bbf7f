//! Replication of vector entries (work in progress: versions and conflict modes).

pub mod merkle;
pub mod state;
pub mod store;
pub mod version;
