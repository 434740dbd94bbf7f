//! etcd as the benchmark's peer: its protobuf messages, a gRPC client, and a local cluster.
//!
//! - [`proto`]: the etcd v3 messages the benchmark sends and reads, encoded by hand (no
//!   `protoc` at build time);
//! - [`grpc`]: unary gRPC calls over HTTP/2 to a member's client port (etcd's native API);
//! - [`cluster`]: three `etcd` processes on loopback with default settings.

pub mod cluster;
pub mod grpc;
pub mod proto;
