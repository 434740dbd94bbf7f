//! The seam between the runtime and its host: sockets, clock, tasks and blocking work.
//!
//! Everything here is `tokio` in a normal build and madsim's simulated `tokio` under
//! `--cfg madsim` (the dependency is `madsim-tokio`, which is plain tokio unless that flag is
//! set). The few places where the two differ live in this module and nowhere else, so the
//! node's code is the same in production and in the deterministic simulator.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use quorate_core::Instant;

pub use tokio::net::UdpSocket;

/// Bytes asked of the OS for each socket buffer: bursts of fragments (a large append, a
/// snapshot chunk) must not overflow the default (~200 KiB on Linux) and cost retransmits.
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket with large send and receive buffers (the OS may grant less).
pub async fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    #[cfg(not(madsim))]
    {
        let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
        let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        // Best effort: a smaller buffer only costs retransmits under bursts.
        let _ = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = s.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        UdpSocket::from_std(s.into())
    }
    #[cfg(madsim)]
    {
        UdpSocket::bind(addr).await
    }
}

/// Sends one datagram. (madsim's `send_to` takes the address first and returns no length.)
pub async fn send_to(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
    #[cfg(not(madsim))]
    {
        socket.send_to(datagram, to).await.map(|_| ())
    }
    #[cfg(madsim)]
    {
        socket.send_to(to, datagram).await
    }
}

/// Receives one datagram into `buf`.
pub async fn recv_from(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    socket.recv_from(buf).await
}

/// Receives a datagram only if one is already waiting.
pub fn try_recv_from(socket: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    #[cfg(not(madsim))]
    {
        socket.try_recv_from(buf).ok()
    }
    #[cfg(madsim)]
    {
        // The simulated socket has no non-blocking receive; the loop simply takes one at a time.
        let _ = (socket, buf);
        None
    }
}

/// The node's monotonic clock, as the core's [`Instant`] (nanoseconds since the clock's start).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn start() -> Clock {
        Clock { origin: tokio::time::Instant::now() }
    }

    /// Now, as the core sees time.
    pub fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }

    /// The host instant of a core instant (for sleeping until it).
    pub fn to_host(&self, at: Instant) -> tokio::time::Instant {
        self.origin + Duration::from_nanos(at.as_nanos().min(u64::MAX / 2))
    }
}

/// Sleeps until `deadline` on the host clock.
pub async fn sleep_until(deadline: tokio::time::Instant) {
    tokio::time::sleep_until(deadline).await
}

/// Sleeps for `d`.
pub async fn sleep(d: Duration) {
    tokio::time::sleep(d).await
}

/// Runs blocking work (file IO) off the event loop. Under madsim the simulated disk never
/// blocks, so the work runs as an ordinary simulated task.
pub async fn blocking<F, R>(f: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    #[cfg(not(madsim))]
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    #[cfg(madsim)]
    {
        f()
    }
}

/// Spawns a task on the current runtime (node).
pub fn spawn<F>(f: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(f)
}

/// Resolves when the process is asked to stop: `SIGTERM` or Ctrl-C (Ctrl-C only under madsim).
pub async fn shutdown_signal() {
    #[cfg(all(unix, not(madsim)))]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(any(not(unix), madsim))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
