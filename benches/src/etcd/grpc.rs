//! A minimal unary gRPC client for etcd's native API, over plaintext HTTP/2 (`h2`).
//!
//! This is the same wire path `etcdctl` and the Go client take: an HTTP/2 connection with
//! prior knowledge to the member's client port, one stream per call, a `POST` to
//! `/etcdserverpb.<Service>/<Method>` with `content-type: application/grpc`, the request in a
//! 5-byte-framed message, the answer in one framed message and `grpc-status` in the trailers
//! (or, for an immediate error, in the headers). No JSON gateway, so no extra proxy hop.
//! One [`Connection`] carries any number of concurrent calls (clone it).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::TcpStream;

use super::proto::{self, ProtoError, PutResponse, RangeResponse, StatusResponse};

/// The largest response body accepted (range answers of the benchmark are one key).
const RESPONSE_BYTES_MAX: usize = 4 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The TCP connection could not be made.
    #[error("connect: {0}")]
    Connect(#[from] io::Error),
    /// The HTTP/2 connection or stream failed (e.g. the member died).
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    /// An HTTP status other than 200.
    #[error("http status {0}")]
    Http(u16),
    /// A gRPC error status from etcd (e.g. 14 with "etcdserver: no leader").
    #[error("grpc status {code}: {message}")]
    Status {
        /// The gRPC status code.
        code: u32,
        /// `grpc-message`.
        message: String,
    },
    /// The answer did not decode.
    #[error("decode: {0}")]
    Proto(#[from] ProtoError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be built (a bug).
    #[error("request: {0}")]
    Request(String),
}

impl CallError {
    /// True when the connection is gone and a new one is needed.
    pub fn is_broken(&self) -> bool {
        matches!(self, CallError::Connect(_) | CallError::H2(_))
    }
}

/// An HTTP/2 connection to one etcd member; cheap to clone, shared by concurrent calls.
#[derive(Clone)]
pub struct Connection {
    send: SendRequest<Bytes>,
    authority: String,
    /// The member's client address.
    pub addr: SocketAddr,
}

impl Connection {
    /// Connects to the member at `addr` and starts the task that drives the connection.
    pub async fn connect(addr: SocketAddr) -> Result<Connection, CallError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = h2::client::handshake(tcp).await?;
        tokio::spawn(async move {
            // Ends when the member closes the connection or every handle is dropped.
            let _ = conn.await;
        });
        Ok(Connection { send, authority: addr.to_string(), addr })
    }

    /// One unary call of `path` with the encoded `message`; returns the encoded answer.
    pub async fn unary(&self, path: &str, message: &[u8]) -> Result<Bytes, CallError> {
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}{path}", self.authority))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| CallError::Request(e.to_string()))?;
        let mut send = self.send.clone().ready().await?;
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(Bytes::from(proto::grpc_frame(message)), true)?;
        let response = response.await?;
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(CallError::Http(parts.status.as_u16()));
        }
        // A "trailers-only" answer carries the status in its headers and has no body.
        check_status(&parts.headers)?;
        let mut buf = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if buf.len() + chunk.len() > RESPONSE_BYTES_MAX {
                return Err(CallError::Proto(ProtoError::Frame("response too large")));
            }
            buf.extend_from_slice(&chunk);
        }
        if let Some(trailers) = body.trailers().await? {
            check_status(&trailers)?;
        }
        Ok(Bytes::copy_from_slice(proto::grpc_unframe(&buf)?))
    }

    /// `KV.Put(key, value)`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<PutResponse, CallError> {
        let answer = self.unary("/etcdserverpb.KV/Put", &proto::encode_put_request(key, value)).await?;
        Ok(PutResponse::decode(&answer)?)
    }

    /// `KV.Range(key)`, linearizable.
    pub async fn get(&self, key: &[u8]) -> Result<RangeResponse, CallError> {
        let answer = self.unary("/etcdserverpb.KV/Range", &proto::encode_range_request(key)).await?;
        Ok(RangeResponse::decode(&answer)?)
    }

    /// `Maintenance.Status`: who this member is and whom it believes leads.
    pub async fn status(&self) -> Result<StatusResponse, CallError> {
        let answer = self.unary("/etcdserverpb.Maintenance/Status", &proto::encode_status_request()).await?;
        Ok(StatusResponse::decode(&answer)?)
    }
}

fn check_status(headers: &http::HeaderMap) -> Result<(), CallError> {
    let Some(code) = headers.get("grpc-status") else { return Ok(()) };
    let code: u32 = code.to_str().ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    if code == 0 {
        return Ok(());
    }
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("").to_string();
    Err(CallError::Status { code, message })
}

/// `f` with a deadline.
pub async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, CallError>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout(limit)),
    }
}
