//! The seam between the runtime and its host: sockets, clock, tasks and blocking work.
//!
//! Everything here is `tokio` in a normal build and madsim's simulated `tokio` under
//! `--cfg madsim` (the dependency is `madsim-tokio`, which is plain tokio unless that flag is
//! set). The few places where the two differ live in this module and nowhere else, so the
//! node's code is the same in production and in the deterministic simulator.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
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
pub async fn send_to(socket: &Arc<UdpSocket>, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
    #[cfg(not(madsim))]
    {
        socket.send_to(datagram, to).await.map(|_| ())
    }
    #[cfg(madsim)]
    {
        // madsim charges every send a tick of virtual time, where a kernel queues the datagram
        // at once; sent in order from the loop, a burst of fragments would stall the node for
        // tens of virtual milliseconds and make SWIM suspect a healthy node. A task per
        // datagram keeps the loop as fast as it is for real (UDP may reorder them anyway).
        let (socket, datagram) = (socket.clone(), datagram.to_vec());
        tokio::spawn(async move {
            let _ = socket.send_to(to, &datagram).await;
        });
        Ok(())
    }
}

/// The receiving side of a socket, safe to use in `select!`: a receive that loses the race
/// to another branch never loses a datagram.
///
/// tokio's `recv_from` is cancel-safe, so in production this is the socket itself. madsim's
/// is not (a datagram already handed to a dropped receive is gone), so there a task of its own
/// receives and queues datagrams for the loop.
pub struct DatagramRx {
    #[cfg(not(madsim))]
    socket: Arc<UdpSocket>,
    #[cfg(not(madsim))]
    buf: Vec<u8>,
    #[cfg(madsim)]
    rx: tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>,
}

impl DatagramRx {
    /// Receives from `socket` (datagrams up to 64 KiB).
    pub fn new(socket: Arc<UdpSocket>) -> DatagramRx {
        #[cfg(not(madsim))]
        {
            DatagramRx { socket, buf: vec![0u8; 65_536] }
        }
        #[cfg(madsim)]
        {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                    if tx.send((buf[..n].to_vec(), from)).is_err() {
                        return;
                    }
                }
            });
            DatagramRx { rx }
        }
    }

    /// The next datagram and its sender. Cancel-safe.
    pub async fn recv(&mut self) -> io::Result<(Vec<u8>, SocketAddr)> {
        #[cfg(not(madsim))]
        {
            let (n, from) = self.socket.recv_from(&mut self.buf).await?;
            Ok((self.buf[..n].to_vec(), from))
        }
        #[cfg(madsim)]
        {
            self.rx.recv().await.ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "socket closed"))
        }
    }

    /// A datagram only if one is already waiting.
    pub fn try_recv(&mut self) -> Option<(Vec<u8>, SocketAddr)> {
        #[cfg(not(madsim))]
        {
            let (n, from) = self.socket.try_recv_from(&mut self.buf).ok()?;
            Some((self.buf[..n].to_vec(), from))
        }
        #[cfg(madsim)]
        {
            self.rx.try_recv().ok()
        }
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

/// The time an fsync takes. A real disk takes it inside the sync call; under madsim the
/// simulated disk is instant, so this sleeps a varying 0.3 to 3 ms of virtual time between
/// writing a group and syncing it, which is the window a crash loses unsynced writes in.
pub async fn disk_latency(salt: u64) {
    #[cfg(not(madsim))]
    {
        let _ = salt;
    }
    #[cfg(madsim)]
    {
        let micros = 300 + salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 2700;
        tokio::time::sleep(Duration::from_micros(micros)).await;
    }
}

/// A task's handle: awaiting it waits for the task to end.
pub type JoinHandle<T> = tokio::task::JoinHandle<T>;

/// Runs `f` on a thread of its own for as long as it takes (a node's storage loop), not on
/// the event loop. Only for real: under madsim every task must be a simulated one.
#[cfg(not(madsim))]
pub fn spawn_dedicated<F, R>(f: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    // A blocking-pool thread held for the closure's whole life: the thread of its own, with
    // a handle the node can await when it stops.
    tokio::task::spawn_blocking(f)
}

/// Spawns a task on the current runtime (node).
pub fn spawn<F>(f: F) -> JoinHandle<F::Output>
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
