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

/// A second handle on `socket` for the storage thread to send what waited on its fsync
/// ([`crate::storage::PostSyncSend`]); `None` where that cannot be (under madsim, whose
/// sockets are simulated, or if the descriptor cannot be duplicated: the loop sends then).
pub fn post_sync_sender(socket: &Arc<UdpSocket>) -> Option<Box<dyn crate::storage::PostSyncSend>> {
    #[cfg(not(madsim))]
    {
        use std::os::fd::AsFd;
        let fd = socket.as_fd().try_clone_to_owned().ok()?;
        Some(Box::new(std::net::UdpSocket::from(fd)))
    }
    #[cfg(madsim)]
    {
        let _ = socket;
        None
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

/// The largest UDP payload the route to `to` carries without IP fragmentation, as the OS knows
/// it (the outgoing interface's MTU, or a smaller path MTU it learned), less the IP and UDP
/// headers; `None` where it cannot tell (other systems, IPv6, madsim). Asks through a
/// throwaway connected socket: nothing is sent.
pub fn path_payload_max(to: SocketAddr) -> Option<usize> {
    #[cfg(all(target_os = "linux", not(madsim)))]
    {
        use nix::sys::socket::{getsockopt, sockopt::IpMtu};
        let SocketAddr::V4(_) = to else { return None };
        let s = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        s.connect(to).ok()?;
        let mtu = getsockopt(&s, IpMtu).ok()?;
        // An IPv4 header without options, and UDP's.
        usize::try_from(mtu).ok()?.checked_sub(20 + 8)
    }
    #[cfg(not(all(target_os = "linux", not(madsim))))]
    {
        let _ = to;
        None
    }
}

/// Datagrams handed to the OS per `sendmmsg`.
#[cfg(all(target_os = "linux", not(madsim)))]
const SEND_BATCH: usize = 64;

/// Sends `batch` in order, and returns the datagrams that failed with their errors (a failed
/// datagram is skipped; the rest still go).
///
/// On Linux many datagrams go per system call (`sendmmsg`): a leader's step answers dozens of
/// clients and feeds every follower, and one datagram per call cost a syscall each plus a
/// context switch whenever the woken receiver preempted the sender mid-burst. Elsewhere, and
/// under madsim, one [`send_to`] per datagram.
pub async fn send_batch(socket: &Arc<UdpSocket>, batch: &[(SocketAddr, &[u8])]) -> Vec<(SocketAddr, io::Error)> {
    let mut failed = Vec::new();
    #[cfg(all(target_os = "linux", not(madsim)))]
    {
        use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
        use std::io::IoSlice;
        use std::os::fd::AsRawFd;
        if batch.len() == 1 {
            let (to, d) = batch[0];
            if let Err(e) = send_to(socket, d, to).await {
                failed.push((to, e));
            }
            return failed;
        }
        let mut at = 0;
        while at < batch.len() {
            let chunk = &batch[at..batch.len().min(at + SEND_BATCH)];
            let addrs: Vec<Option<SockaddrStorage>> =
                chunk.iter().map(|(a, _)| Some(SockaddrStorage::from(*a))).collect();
            let iovs: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
            let fd = socket.as_raw_fd();
            let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
                // Built per call: the headers hold raw pointers, so they may not live across
                // the await below (the node's future must stay `Send`).
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
                sendmmsg(fd, &mut headers, &iovs, &addrs, [], MsgFlags::empty())
                    .map(|r| r.count())
                    .map_err(io::Error::from)
            });
            match sent {
                // The kernel takes at least one datagram or fails the call.
                Ok(n) => at += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = socket.writable().await {
                        failed.extend(batch[at..].iter().map(|(to, _)| (*to, io::Error::new(e.kind(), e.to_string()))));
                        return failed;
                    }
                }
                // The first datagram of the call failed (say, a refused destination).
                Err(e) => {
                    failed.push((chunk[0].0, e));
                    at += 1;
                }
            }
        }
    }
    #[cfg(not(all(target_os = "linux", not(madsim))))]
    {
        for (to, d) in batch {
            if let Err(e) = send_to(socket, d, *to).await {
                failed.push((*to, e));
            }
        }
    }
    failed
}

/// Bytes of one receive buffer: the largest UDP datagram fits.
const RECV_BUFFER_BYTES: usize = 65_536;
/// Datagrams taken from the OS per `recvmmsg`.
#[cfg(all(target_os = "linux", not(madsim)))]
const RECV_BATCH: usize = 32;

/// Tasks receiving from one socket under madsim. Every madsim receive sleeps at least one
/// virtual millisecond, so one task takes at most 1,000 datagrams a second: a leader of 7
/// nodes and 16 clients gets more, and its backlog (which madsim does not serve in order)
/// starved single requests for seconds, a limit no kernel has. Several tasks lift it; the
/// order they hand datagrams on may differ from arrival, as UDP's may.
#[cfg(madsim)]
pub const SIM_RECEIVERS: usize = 16;

/// The receiving side of a socket, safe to use in `select!`: a receive that loses the race
/// to another branch never loses a datagram.
///
/// tokio's `recv_from` is cancel-safe, so in production this is the socket itself. madsim's
/// is not (a datagram already handed to a dropped receive is gone), so there tasks of their own
/// receive and queue datagrams for the loop (`SIM_RECEIVERS` of them).
pub struct DatagramRx {
    #[cfg(not(madsim))]
    socket: Arc<UdpSocket>,
    #[cfg(not(madsim))]
    buf: Vec<u8>,
    /// `RECV_BATCH` buffers end to end for [`DatagramRx::drain`], allocated on first use.
    #[cfg(all(target_os = "linux", not(madsim)))]
    batch: Vec<u8>,
    #[cfg(madsim)]
    rx: tokio::sync::mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>,
    /// A datagram [`DatagramRx::ready`] took from the queue, for the next drain.
    #[cfg(madsim)]
    ready: Option<(Vec<u8>, SocketAddr)>,
}

impl DatagramRx {
    /// Receives from `socket` (datagrams up to 64 KiB).
    pub fn new(socket: Arc<UdpSocket>) -> DatagramRx {
        #[cfg(not(madsim))]
        {
            DatagramRx {
                socket,
                buf: vec![0u8; RECV_BUFFER_BYTES],
                #[cfg(target_os = "linux")]
                batch: Vec::new(),
            }
        }
        #[cfg(madsim)]
        {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            for _ in 0..SIM_RECEIVERS {
                let (socket, tx) = (socket.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
                    loop {
                        // Once the receiver is gone, nothing is lost by dropping a receive;
                        // ending here releases the socket (and its port) at once, instead of
                        // when each task's next datagram arrives, which may be never.
                        let got = tokio::select! {
                            got = socket.recv_from(&mut buf) => got,
                            () = tx.closed() => return,
                        };
                        let Ok((n, from)) = got else { return };
                        if tx.send((buf[..n].to_vec(), from)).is_err() {
                            return;
                        }
                    }
                });
            }
            DatagramRx { rx, ready: None }
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
            if let Some(d) = self.ready.take() {
                return Ok(d);
            }
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
            self.ready.take().or_else(|| self.rx.try_recv().ok())
        }
    }

    /// Resolves once a datagram is waiting (then [`DatagramRx::drain`] takes it). Cancel-safe.
    pub async fn ready(&mut self) -> io::Result<()> {
        #[cfg(not(madsim))]
        {
            self.socket.readable().await
        }
        #[cfg(madsim)]
        {
            if self.ready.is_none() {
                let d = self.rx.recv().await;
                self.ready = Some(d.ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "socket closed"))?);
            }
            Ok(())
        }
    }

    /// Hands up to `max` datagrams that are already waiting to `f`, in arrival order, without
    /// waiting or copying them; returns how many. (Linux takes up to 32 per system call with
    /// `recvmmsg`; a busy leader receives a request per client write.) Returns 0 after a
    /// spurious [`DatagramRx::ready`].
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8], SocketAddr)) -> usize {
        let mut n = 0;
        #[cfg(all(target_os = "linux", not(madsim)))]
        {
            use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
            use std::io::IoSliceMut;
            use std::os::fd::AsRawFd;
            if self.batch.is_empty() {
                self.batch = vec![0u8; RECV_BATCH * RECV_BUFFER_BYTES];
            }
            let fd = self.socket.as_raw_fd();
            while n < max {
                let want = (max - n).min(RECV_BATCH);
                let mut got: [(usize, Option<SocketAddr>); RECV_BATCH] = [(0, None); RECV_BATCH];
                let batch = &mut self.batch;
                let received = self.socket.try_io(tokio::io::Interest::READABLE, || {
                    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                        batch.chunks_mut(RECV_BUFFER_BYTES).take(want).map(|b| [IoSliceMut::new(b)]).collect();
                    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(want, None);
                    let results = recvmmsg(fd, &mut headers, iovs.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                        .map_err(io::Error::from)?;
                    let mut k = 0;
                    for (slot, r) in got.iter_mut().zip(results) {
                        let from = r.address.as_ref().and_then(|a: &SockaddrStorage| {
                            a.as_sockaddr_in()
                                .map(|v4| SocketAddr::V4((*v4).into()))
                                .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into())))
                        });
                        *slot = (r.bytes, from);
                        k += 1;
                    }
                    Ok(k)
                });
                let Ok(k) = received else { break };
                for (i, (len, from)) in got[..k].iter().enumerate() {
                    // A datagram without an IP sender cannot be answered: not ours.
                    if let Some(from) = from {
                        let at = i * RECV_BUFFER_BYTES;
                        f(&self.batch[at..at + (*len).min(RECV_BUFFER_BYTES)], *from);
                    }
                }
                n += k;
                if k < want {
                    break;
                }
            }
        }
        #[cfg(not(all(target_os = "linux", not(madsim))))]
        {
            while n < max {
                let Some((d, from)) = self.try_recv() else { break };
                f(&d, from);
                n += 1;
            }
        }
        n
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

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn loopback_carries_large_datagrams_whole() {
        // Linux's loopback MTU is 64 KiB unless someone lowered it; a real interface is less.
        let max = path_payload_max("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(max >= 1400, "payload max {max}");
        assert_eq!(path_payload_max("[::1]:9".parse().unwrap()), None, "IPv6 is not asked");
    }

    #[tokio::test]
    async fn a_batch_sent_in_one_go_is_drained_in_order_within_the_limit() {
        let rx_socket = Arc::new(bind_udp("127.0.0.1:0".parse().unwrap()).await.unwrap());
        let tx_socket = Arc::new(bind_udp("127.0.0.1:0".parse().unwrap()).await.unwrap());
        let (to, from) = (rx_socket.local_addr().unwrap(), tx_socket.local_addr().unwrap());
        // More than one sendmmsg and one recvmmsg call take, of varying sizes.
        let datagrams: Vec<Vec<u8>> = (0..150u32).map(|i| vec![i as u8; 1 + (i as usize * 37) % 1400]).collect();
        let batch: Vec<(SocketAddr, &[u8])> = datagrams.iter().map(|d| (to, d.as_slice())).collect();
        assert!(send_batch(&tx_socket, &batch).await.is_empty());
        let mut rx = DatagramRx::new(rx_socket);
        let mut got: Vec<Vec<u8>> = Vec::new();
        while got.len() < datagrams.len() {
            rx.ready().await.unwrap();
            let before = got.len();
            let n = rx.drain(100, |d, sender| {
                assert_eq!(sender, from);
                got.push(d.to_vec());
            });
            assert!(n <= 100, "drained {n}, over the limit");
            assert_eq!(n, got.len() - before);
        }
        assert_eq!(got, datagrams);
        // Nothing left: a drain now takes nothing and does not wait.
        assert_eq!(rx.drain(10, |_, _| panic!("no datagram is left")), 0);
    }

    #[tokio::test]
    async fn a_refused_destination_fails_alone_and_the_rest_still_go() {
        let rx_socket = Arc::new(bind_udp("127.0.0.1:0".parse().unwrap()).await.unwrap());
        let tx_socket = Arc::new(bind_udp("127.0.0.1:0".parse().unwrap()).await.unwrap());
        let to = rx_socket.local_addr().unwrap();
        // Port 0 cannot be sent to.
        let bad: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let batch: Vec<(SocketAddr, &[u8])> = vec![(to, b"a"), (bad, b"x"), (to, b"b"), (to, b"c")];
        let failed = send_batch(&tx_socket, &batch).await;
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, bad);
        let mut rx = DatagramRx::new(rx_socket);
        let mut got = Vec::new();
        while got.len() < 3 {
            rx.ready().await.unwrap();
            rx.drain(10, |d, _| got.push(d.to_vec()));
        }
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }
}
