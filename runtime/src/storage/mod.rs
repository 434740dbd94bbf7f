//! Durable storage for a node: the write-ahead log, snapshots, and group commit.
//!
//! [`Storage`] owns a node's data directory: `wal/` (see [`wal`]) and `snap/` (see
//! [`snapshot`]). [`Storage::open`] is recovery: it loads the newest valid snapshot, replays the
//! log (cutting off a torn tail) and hands Raft what it needs to rebuild itself. Writes arrive as
//! [`Batch`]es of [`StorageOp`]s; [`run_group_commit`] applies every batch queued while the
//! previous fsync ran and covers them all with one fsync, so throughput grows with concurrency.
//! A real node runs [`run_group_commit_blocking`] on a thread of its own, or, when configured
//! for more than one sync in flight, [`run_group_commit_overlapped`], which lets a second
//! group's fsync start while the first one's is still running and reports them in order.
//! With one storage thread the storage is shared ([`SharedStorage`]), and a follower's loop
//! writes and syncs a batch itself ([`commit_inline`]) whenever the thread holds none.

pub mod snapshot;
pub mod vfs;
pub mod wal;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use quorate_core::raft::{Entry, HardState, LogIndex, Recovered, Snapshot};
use tokio::sync::mpsc;

use snapshot::SnapshotStore;
use vfs::{FileSync, Vfs, VfsFile};
use wal::{Wal, WalOptions, WalReport};

/// Why storage failed. After an IO error the node stops: it cannot keep its promises.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file system refused an operation.
    #[error("storage: cannot {doing}: {source}")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Data that was once durable fails its checksum before the log's tail.
    #[error("storage: {file} is corrupt at byte {offset} (not a torn tail); restore this node from a peer")]
    Corrupt {
        /// The file.
        file: String,
        /// Where the bad record starts.
        offset: u64,
    },
    /// A record could not be encoded.
    #[error("storage: cannot encode a record: {0}")]
    Encode(String),
    /// A thread panicked while it held the storage, so the log may be half written.
    #[error("storage: a thread panicked while writing the log; restart the node")]
    Poisoned,
}

impl StorageError {
    /// Wraps an IO error with what was being done.
    pub fn io(doing: &'static str) -> impl FnOnce(io::Error) -> StorageError {
        move |source| StorageError::Io { doing, source }
    }
}

/// Settings of a node's storage.
#[derive(Clone, Debug, Default)]
pub struct StorageOptions {
    /// WAL settings.
    pub wal: WalOptions,
    /// Planted bug for simulator self-tests: recover without verifying checksums.
    #[cfg(feature = "planted-bugs")]
    pub planted_skip_checksums: bool,
}

impl StorageOptions {
    fn verify_checksums(&self) -> bool {
        #[cfg(feature = "planted-bugs")]
        {
            !self.planted_skip_checksums
        }
        #[cfg(not(feature = "planted-bugs"))]
        {
            true
        }
    }
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// What the WAL replay did.
    pub wal: WalReport,
    /// Index of the snapshot loaded (0 if none).
    pub snapshot_index: u64,
    /// Entries handed to Raft.
    pub entries: usize,
}

/// One write for storage to carry out, in order.
#[derive(Clone, Debug)]
pub enum StorageOp {
    /// Persist the hard state.
    HardState(HardState),
    /// Replace the log from `first_index` with `entries`.
    Entries {
        /// Where the write starts.
        first_index: LogIndex,
        /// The entries (cheap clones of Raft's).
        entries: Vec<Entry>,
    },
    /// Store a snapshot, then mark it in the log.
    Snapshot(Box<Snapshot>),
    /// Delete log segments a durable snapshot covers, up to this index.
    Compact(LogIndex),
}

/// A node's storage: its WAL and snapshots.
pub struct Storage<V: Vfs> {
    wal: Wal<V>,
    snapshots: SnapshotStore<V>,
    compact_to: Option<LogIndex>,
}

impl<V: Vfs> Storage<V> {
    /// Opens `dir` (creating it) and recovers what Raft persisted there.
    pub fn open(
        vfs: V,
        dir: &Path,
        opts: StorageOptions,
    ) -> Result<(Storage<V>, Recovered, RecoveryReport), StorageError> {
        vfs.create_dir_all(dir).map_err(StorageError::io("create the data directory"))?;
        let verify = opts.verify_checksums();
        let (snapshots, snapshot) = SnapshotStore::open(vfs.clone(), &dir.join("snap"), verify)?;
        let (wal, state, wal_report) = Wal::open(vfs, &dir.join("wal"), opts.wal, verify)?;
        let snap_index = snapshot.as_ref().map_or(LogIndex(0), |s| s.meta.index);
        let entries: Vec<Entry> = state.entries.into_iter().filter(|e| e.index > snap_index).collect();
        let report = RecoveryReport { wal: wal_report, snapshot_index: snap_index.0, entries: entries.len() };
        let recovered = Recovered { hard_state: state.hard_state, snapshot, entries };
        Ok((Storage { wal, snapshots, compact_to: None }, recovered, report))
    }

    /// Carries out one write (buffered until [`Storage::sync`], except snapshots, which are
    /// made durable at once because the log marker that follows depends on them).
    pub fn apply(&mut self, op: &StorageOp) -> Result<(), StorageError> {
        match op {
            StorageOp::HardState(hs) => self.wal.append_hard_state(hs),
            StorageOp::Entries { first_index, entries } => self.wal.append_entries(*first_index, entries),
            StorageOp::Snapshot(s) => {
                self.snapshots.save(s)?;
                self.wal.append_snapshot_marker(s.meta.index, s.meta.term)
            }
            StorageOp::Compact(upto) => {
                self.compact_to = Some(self.compact_to.map_or(*upto, |c| c.max(*upto)));
                Ok(())
            }
        }
    }

    /// Hands every buffered write to the file system without waiting for durability.
    pub fn flush(&mut self) -> Result<(), StorageError> {
        self.wal.flush()
    }

    /// Makes every write so far durable with one fsync, then compacts what may be.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.wal.sync()?;
        if let Some(upto) = self.compact_to.take() {
            self.wal.compact(upto)?;
        }
        Ok(())
    }

    /// Like [`Storage::flush`], returning a handle whose sync (on any thread) makes the writes
    /// durable, or `None` when there is nothing to sync. Only when [`Storage::needs_inline_sync`]
    /// is false: compaction and segment rotation happen in [`Storage::sync`].
    pub fn flush_for_sync(&mut self) -> Result<Option<<V::File as VfsFile>::Sync>, StorageError> {
        self.wal.flush_for_sync()
    }

    /// True when the next sync has more to do than an fsync (compact the log, start a new
    /// segment), so it must run as [`Storage::sync`], after every sync in flight.
    pub fn needs_inline_sync(&self) -> bool {
        self.compact_to.is_some() || self.wal.wants_rotation()
    }

    /// Fsyncs of the log so far.
    pub fn syncs(&self) -> u64 {
        self.wal.syncs()
    }

    /// Log segments on disk.
    pub fn segment_count(&self) -> usize {
        self.wal.segment_count()
    }
}

/// Writes to carry out as one unit; `seq` numbers batches in the order they were sent.
#[derive(Debug)]
pub struct Batch {
    /// Increasing batch number.
    pub seq: u64,
    /// The writes, in order.
    pub ops: Vec<StorageOp>,
    /// Sealed datagrams that may leave only once this batch (and every one before it) is
    /// durable: a follower's acknowledgement of the entries in `ops`, say. A real node's
    /// storage thread sends them itself as soon as its fsync returns (see [`PostSyncSend`]),
    /// so they do not wait for the node's loop to hear of the fsync; what it does not send
    /// comes back in [`Synced::unsent`].
    pub after_sync: Datagrams,
}

/// Sealed datagrams and where each goes, in order.
pub type Datagrams = Vec<(SocketAddr, Vec<u8>)>;

/// Sends a group's [`Batch::after_sync`] datagrams from the storage thread, after the group's
/// fsync has returned and before it is reported.
pub trait PostSyncSend: Send {
    /// Sends what it can without blocking; returns the rest, in order.
    fn send(&mut self, datagrams: Datagrams) -> Datagrams;
}

impl PostSyncSend for std::net::UdpSocket {
    fn send(&mut self, datagrams: Datagrams) -> Datagrams {
        let mut rest = Vec::new();
        for (to, d) in datagrams {
            // The node's socket is non-blocking: a full send buffer, like any error, hands
            // the datagram back to the node's loop, which waits for room.
            if !rest.is_empty() || self.send_to(&d, to).is_err() {
                rest.push((to, d));
            }
        }
        rest
    }
}

/// A group of batches made durable by one fsync.
#[derive(Debug)]
pub struct Synced {
    /// Every batch up to this one is durable.
    pub seq: u64,
    /// Batches in the group.
    pub batches: usize,
    /// Time the writes and fsync took.
    pub took: Duration,
    /// The group's [`Batch::after_sync`] datagrams the storage thread did not send, in order:
    /// the node sends them. All of them where the group commit sends none itself.
    pub unsent: Datagrams,
    /// Datagrams and bytes of `after_sync` the storage thread sent.
    pub sent: (u64, u64),
}

/// Every `after_sync` datagram of `group`, in order.
fn after_sync_of(group: &mut [Batch]) -> Datagrams {
    group.iter_mut().flat_map(|b| std::mem::take(&mut b.after_sync)).collect()
}

/// Carries out every write of `group` in order and hands them to the file system (not yet
/// durable). Returns how many batches the group holds.
fn write_group<V: Vfs>(storage: &mut Storage<V>, group: &[Batch]) -> Result<usize, StorageError> {
    for b in group {
        for op in &b.ops {
            storage.apply(op)?;
        }
    }
    storage.flush()?;
    Ok(group.len())
}

/// The storage task: takes every batch queued while the last fsync ran, writes them, fsyncs
/// once, and reports. Ends when the sender is dropped or after reporting an error.
///
/// This is the simulator's form (each step a simulated task, with the simulated disk's latency
/// between write and sync, where a crash loses the group). A real node runs
/// [`run_group_commit_blocking`] on a thread of its own instead, see [`spawn_group_commit`].
pub async fn run_group_commit<V: Vfs>(
    storage: SharedStorage<V>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    done: mpsc::UnboundedSender<Result<Synced, StorageError>>,
) {
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while let Ok(b) = rx.try_recv() {
            group.push(b);
        }
        let start = tokio::time::Instant::now();
        let seq = group.last().map_or(0, |b| b.seq);
        let unsent = after_sync_of(&mut group);
        let result = write_then_sync(&storage, group, seq).await;
        let failed = result.is_err();
        let report = result.map(|batches| Synced { seq, batches, took: start.elapsed(), unsent, sent: (0, 0) });
        if done.send(report).is_err() || failed {
            return;
        }
    }
}

/// Writes `group`, waits the simulated disk's latency, syncs (each step off the event loop
/// for real, a step of the simulation under madsim). Returns how many batches it held.
async fn write_then_sync<V: Vfs>(
    storage: &SharedStorage<V>,
    group: Vec<Batch>,
    seq: u64,
) -> Result<usize, StorageError> {
    let shared = storage.clone();
    let batches = crate::sys::blocking(move || write_group(&mut *lock(&shared)?, &group)).await?;
    // The writes are in the file but not durable until the sync returns: a crash now (the
    // simulator's disk models this window) loses them.
    crate::sys::disk_latency(seq).await;
    let shared = storage.clone();
    crate::sys::blocking(move || lock(&shared)?.sync()).await?;
    Ok(batches)
}

/// The same group commit as [`run_group_commit`], on the calling thread, which it blocks.
///
/// On a thread of its own, a group goes from the queue through write and fsync to its report
/// without waiting for the node's loop to poll a task in between (on a busy node that wait
/// was as long as the fsync), and without handing each step to a pool thread and back.
///
/// With a `sender`, the group's [`Batch::after_sync`] datagrams leave from here the moment
/// its fsync returns: persist before send holds by construction, and a follower's
/// acknowledgement skips a wake-up of the node's loop on the way to the leader.
///
/// The storage is shared with the node's loop, which may [`commit_inline`] while this holds
/// no batch.
pub fn run_group_commit_blocking<V: Vfs>(
    storage: &SharedStorage<V>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    done: mpsc::UnboundedSender<Result<Synced, StorageError>>,
    mut sender: Option<Box<dyn PostSyncSend>>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while let Ok(b) = rx.try_recv() {
            group.push(b);
        }
        let start = std::time::Instant::now();
        let seq = group.last().map_or(0, |b| b.seq);
        let held = after_sync_of(&mut group);
        let result = commit_group(storage, &group);
        let failed = result.is_err();
        let report = result.map(|batches| {
            let took = start.elapsed();
            let (count, bytes) = (held.len(), held.iter().map(|(_, d)| d.len() as u64).sum::<u64>());
            let unsent = match sender.as_mut() {
                Some(s) if !held.is_empty() => s.send(held),
                _ => held,
            };
            let unsent_bytes: u64 = unsent.iter().map(|(_, d)| d.len() as u64).sum();
            let sent = ((count - unsent.len()) as u64, bytes - unsent_bytes);
            Synced { seq, batches, took, unsent, sent }
        });
        if done.send(report).is_err() || failed {
            return;
        }
    }
}

/// A node's storage, shared between its storage thread and its loop: the loop writes and
/// syncs a batch itself ([`commit_inline`]) only while the thread has nothing in hand.
pub type SharedStorage<V> = Arc<Mutex<Storage<V>>>;

fn lock<V: Vfs>(storage: &SharedStorage<V>) -> Result<MutexGuard<'_, Storage<V>>, StorageError> {
    storage.lock().map_err(|_| StorageError::Poisoned)
}

/// Writes and fsyncs `group` under the storage's lock. Returns how many batches it held.
fn commit_group<V: Vfs>(storage: &SharedStorage<V>, group: &[Batch]) -> Result<usize, StorageError> {
    let mut storage = lock(storage)?;
    let batches = write_group(&mut storage, group)?;
    storage.sync()?;
    Ok(batches)
}

/// Whether [`commit_inline`] may take a batch of `ops` now: only log entries and hard state,
/// and only while the next sync has nothing more to do than an fsync. Snapshots (a whole file
/// written and synced), compaction and a new segment stay on the storage thread, where they
/// do not hold up the caller's loop; so does everything while the thread holds the lock.
pub fn can_commit_inline<V: Vfs>(storage: &SharedStorage<V>, ops: &[StorageOp]) -> bool {
    let small = ops.iter().all(|op| matches!(op, StorageOp::HardState(_) | StorageOp::Entries { .. }));
    small && storage.try_lock().is_ok_and(|s| !s.needs_inline_sync())
}

/// Writes and fsyncs one batch on the calling thread, which it blocks for real (under madsim,
/// with the simulated disk's latency between write and sync, where a crash loses the batch),
/// and reports it as the storage thread would, every [`Batch::after_sync`] datagram unsent
/// (the caller sends them). On a multi-thread Tokio runtime the worker is handed over
/// (`block_in_place`) so that the runtime's other tasks go on meanwhile.
///
/// Only for a caller that knows the storage thread holds no batch: every batch handed to it has
/// been reported. Batches stay in order and the lock is never contended.
pub async fn commit_inline<V: Vfs>(storage: &SharedStorage<V>, mut batch: Batch) -> Result<Synced, StorageError> {
    let start = tokio::time::Instant::now();
    let unsent = std::mem::take(&mut batch.after_sync);
    let seq = batch.seq;
    #[cfg(not(madsim))]
    let batches = {
        let group = std::slice::from_ref(&batch);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi_thread {
            tokio::task::block_in_place(|| commit_group(storage, group))?
        } else {
            commit_group(storage, group)?
        }
    };
    #[cfg(madsim)]
    let batches = write_then_sync(storage, vec![batch], seq).await?;
    Ok(Synced { seq, batches, took: start.elapsed(), unsent, sent: (0, 0) })
}

/// Shares `storage` between a storage thread and the node's loop.
pub fn share<V: Vfs>(storage: Storage<V>) -> SharedStorage<V> {
    Arc::new(Mutex::new(storage))
}

/// How many fsyncs a real node's group commit keeps in flight unless `storage.syncs_in_flight`
/// says otherwise: one, synced on the storage thread itself.
///
/// The disk alone is faster with two (on this project's 2-core VM, 5 kB writes into a
/// preallocated file each followed by `fdatasync`: one thread 6.4k syncs/s, two 7.4k/s), but a
/// node with two hands each group from its writing thread to a sync thread and back, and on
/// saturated CPUs those wake-ups cost more than the overlap gains: 64 clients against three
/// nodes on loopback, 9 alternating rounds, 50.7k puts/s mean with two against 56.4k with one.
pub const DEFAULT_SYNCS_IN_FLIGHT: usize = 1;

/// Reports finished groups to the node strictly in the order they were written, whatever order
/// their syncs return in: a report says every batch up to its `seq` is durable.
struct InOrder {
    state: Mutex<InOrderState>,
    all_done: Condvar,
    done: mpsc::UnboundedSender<Result<Synced, StorageError>>,
}

struct InOrderState {
    /// The next ticket to report.
    next: u64,
    ready: BTreeMap<u64, Result<Synced, StorageError>>,
    failed: bool,
}

impl InOrder {
    fn new(done: mpsc::UnboundedSender<Result<Synced, StorageError>>) -> InOrder {
        InOrder {
            state: Mutex::new(InOrderState { next: 1, ready: BTreeMap::new(), failed: false }),
            all_done: Condvar::new(),
            done,
        }
    }

    fn lock(&self) -> MutexGuard<'_, InOrderState> {
        // Every update completes under the lock; a panic elsewhere leaves it consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ticket `ticket` finished; reports it and every later one already finished, in order.
    /// After an error nothing more is reported.
    fn complete(&self, ticket: u64, result: Result<Synced, StorageError>) {
        let mut st = self.lock();
        st.ready.insert(ticket, result);
        loop {
            let next = st.next;
            let Some(r) = st.ready.remove(&next) else { break };
            st.next += 1;
            if st.failed {
                continue;
            }
            // The error itself is reported (the node stops on it); nothing after it is.
            let is_err = r.is_err();
            st.failed = self.done.send(r).is_err() || is_err;
        }
        self.all_done.notify_all();
    }

    /// Blocks until every ticket before `ticket` is reported. False once something failed.
    fn wait_before(&self, ticket: u64) -> bool {
        let mut st = self.lock();
        while st.next < ticket && !st.failed {
            st = self.all_done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        !st.failed
    }

    fn failed(&self) -> bool {
        self.lock().failed
    }
}

struct SyncJob<S> {
    ticket: u64,
    handle: S,
    seq: u64,
    batches: usize,
    start: std::time::Instant,
    unsent: Datagrams,
}

/// The group commit of a real node, on the calling thread (which it blocks) plus
/// `syncs_in_flight` sync threads: it writes each group as [`run_group_commit_blocking`]
/// does, then hands its fsync to a free sync thread and takes the next group at once, waiting
/// only when every sync thread is busy. Groups are reported in the order written, each once
/// its own fsync and every earlier one has returned. A group that compacts the log or fills
/// its segment waits for the syncs in flight and syncs inline (see [`Storage::sync`]).
pub fn run_group_commit_overlapped<V: Vfs>(
    mut storage: Storage<V>,
    mut rx: mpsc::UnboundedReceiver<Batch>,
    done: mpsc::UnboundedSender<Result<Synced, StorageError>>,
    syncs_in_flight: usize,
) {
    let order = Arc::new(InOrder::new(done));
    // A rendezvous channel: a job is handed over only to a sync thread that is free.
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<SyncJob<<V::File as VfsFile>::Sync>>(0);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let mut threads = Vec::new();
    for _ in 0..syncs_in_flight.max(1) {
        let (order, job_rx) = (order.clone(), job_rx.clone());
        threads.push(std::thread::spawn(move || loop {
            let job = match job_rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            let result = job.handle.sync().map_err(StorageError::io("fsync the WAL")).map(|()| Synced {
                seq: job.seq,
                batches: job.batches,
                took: job.start.elapsed(),
                unsent: job.unsent,
                sent: (0, 0),
            });
            order.complete(job.ticket, result);
        }));
    }
    let mut ticket = 0u64;
    while let Some(first) = rx.blocking_recv() {
        if order.failed() {
            break;
        }
        let mut group = vec![first];
        while let Ok(b) = rx.try_recv() {
            group.push(b);
        }
        let start = std::time::Instant::now();
        let seq = group.last().map_or(0, |b| b.seq);
        // This form sends nothing itself: the node sends them once the report arrives.
        let unsent = after_sync_of(&mut group);
        ticket += 1;
        let batches = match write_group(&mut storage, &group) {
            Ok(n) => n,
            Err(e) => {
                order.complete(ticket, Err(e));
                break;
            }
        };
        let synced = |unsent| Synced { seq, batches, took: start.elapsed(), unsent, sent: (0, 0) };
        if storage.needs_inline_sync() {
            if !order.wait_before(ticket) {
                break;
            }
            order.complete(ticket, storage.sync().map(|()| synced(unsent)));
            continue;
        }
        match storage.flush_for_sync() {
            Ok(Some(handle)) => {
                if job_tx.send(SyncJob { ticket, handle, seq, batches, start, unsent }).is_err() {
                    break;
                }
            }
            Ok(None) => order.complete(ticket, Ok(synced(unsent))),
            Err(e) => {
                order.complete(ticket, Err(e));
                break;
            }
        }
    }
    drop(job_tx);
    for t in threads {
        let _ = t.join();
    }
}

/// Starts a node's group commit: on a dedicated thread for real, with `syncs_in_flight` fsyncs
/// that may overlap (1: [`run_group_commit_blocking`], otherwise
/// [`run_group_commit_overlapped`]); as a simulated task under madsim (whose disk never blocks
/// and whose scheduler must see every step).
///
/// With one sync in flight it also returns the storage, shared, for the node's loop to
/// [`commit_inline`] while the group commit is idle; `None` otherwise.
pub fn spawn_group_commit<V: Vfs>(
    storage: Storage<V>,
    rx: mpsc::UnboundedReceiver<Batch>,
    done: mpsc::UnboundedSender<Result<Synced, StorageError>>,
    syncs_in_flight: usize,
    sender: Option<Box<dyn PostSyncSend>>,
) -> (crate::sys::JoinHandle<()>, Option<SharedStorage<V>>) {
    #[cfg(not(madsim))]
    {
        if syncs_in_flight > 1 {
            let task =
                crate::sys::spawn_dedicated(move || run_group_commit_overlapped(storage, rx, done, syncs_in_flight));
            return (task, None);
        }
        let shared = share(storage);
        let theirs = shared.clone();
        let task = crate::sys::spawn_dedicated(move || run_group_commit_blocking(&theirs, rx, done, sender));
        (task, Some(shared))
    }
    #[cfg(madsim)]
    {
        let _ = (syncs_in_flight, sender);
        let shared = share(storage);
        (crate::sys::spawn(run_group_commit(shared.clone(), rx, done)), Some(shared))
    }
}

/// The paths of a node's data directory.
pub fn data_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("wal"), dir.join("snap"))
}

#[cfg(test)]
mod tests {
    use super::vfs::{SimFaults, SimVfs};
    use super::*;
    use bytes::Bytes;
    use quorate_core::raft::{Command, EntryPayload, Membership, SnapshotMeta, Term};
    use quorate_core::NodeId;
    use std::collections::BTreeSet;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            payload: EntryPayload::Command(Command::from(vec![index as u8; 10])),
        }
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let data = Bytes::from(vec![7u8; 100]);
        let meta = SnapshotMeta {
            index: LogIndex(index),
            term: Term(term),
            membership: Membership::with_voters([NodeId(1)]),
            size_bytes: 100,
            digest: quorate_core::fnv1a64(&data),
        };
        Snapshot { meta, data }
    }

    fn opts() -> StorageOptions {
        let mut o = StorageOptions::default();
        o.wal.segment_bytes_max = 300;
        o
    }

    /// Every write a node does, as the ops its batches carry, with what must survive after each.
    fn script() -> Vec<StorageOp> {
        let mut ops =
            vec![StorageOp::HardState(HardState { term: Term(1), vote: Some(NodeId(1)), commit: LogIndex(0) })];
        for i in 1..=12 {
            ops.push(StorageOp::Entries { first_index: LogIndex(i), entries: vec![entry(i, 1)] });
        }
        ops.push(StorageOp::Entries { first_index: LogIndex(10), entries: vec![entry(10, 2), entry(11, 2)] });
        ops.push(StorageOp::HardState(HardState { term: Term(2), vote: Some(NodeId(2)), commit: LogIndex(9) }));
        ops.push(StorageOp::Snapshot(Box::new(snapshot(8, 1))));
        ops.push(StorageOp::Compact(LogIndex(8)));
        for i in 12..=20 {
            ops.push(StorageOp::Entries { first_index: LogIndex(i), entries: vec![entry(i, 2)] });
        }
        // A snapshot from a leader that replaces the whole log, then entries after it.
        ops.push(StorageOp::Snapshot(Box::new(snapshot(30, 3))));
        ops.push(StorageOp::Compact(LogIndex(30)));
        for i in 31..=40 {
            ops.push(StorageOp::Entries { first_index: LogIndex(i), entries: vec![entry(i, 3)] });
        }
        ops
    }

    /// What Raft should recover after exactly `ops` were made durable.
    fn expected(ops: &[StorageOp]) -> (HardState, u64, Vec<Entry>) {
        let mut hs = HardState::default();
        let mut snap = 0u64;
        let mut log: Vec<Entry> = Vec::new();
        for op in ops {
            match op {
                StorageOp::HardState(h) => hs = *h,
                StorageOp::Entries { first_index, entries } => {
                    log.retain(|e| e.index < *first_index);
                    log.extend(entries.iter().cloned());
                }
                StorageOp::Snapshot(s) => {
                    let keep = log.iter().any(|e| e.index == s.meta.index && e.term == s.meta.term);
                    if keep {
                        log.retain(|e| e.index > s.meta.index);
                    } else {
                        log.clear();
                    }
                    snap = s.meta.index.0;
                }
                StorageOp::Compact(_) => {}
            }
        }
        (hs, snap, log)
    }

    #[test]
    fn a_crash_after_any_sync_loses_nothing_that_was_synced() {
        let ops = script();
        for synced in 0..=ops.len() {
            for seed in 0..3 {
                let faults = SimFaults { torn_write: 0.7, flip_bit: 0.5 };
                let vfs = SimVfs::new(seed, faults);
                let dir = Path::new("/node");
                let (mut st, _, _) = Storage::open(vfs.clone(), dir, opts()).unwrap();
                for op in &ops[..synced] {
                    st.apply(op).unwrap();
                    st.sync().unwrap();
                }
                // Writes after the last sync may be torn or lost.
                for op in ops[synced..].iter().take(2) {
                    if !matches!(op, StorageOp::Snapshot(_)) {
                        st.apply(op).unwrap();
                    }
                }
                drop(st);
                vfs.crash();
                let (_, rec, report) = Storage::open(vfs.clone(), dir, opts()).unwrap();
                let (hs, snap, log) = expected(&ops[..synced]);
                assert_eq!(rec.hard_state, hs, "after {synced} synced ops (seed {seed})");
                assert_eq!(rec.snapshot.as_ref().map_or(0, |s| s.meta.index.0), snap, "after {synced}");
                let want: Vec<Entry> = log.into_iter().filter(|e| e.index.0 > snap).collect();
                assert_eq!(rec.entries, want, "after {synced} synced ops (seed {seed}), report {report:?}");
            }
        }
    }

    #[test]
    fn a_crash_between_any_two_storage_steps_loses_nothing_acknowledged() {
        // Sync after every op, crash after each, reopen and continue: the durable history must
        // always equal the prefix that was synced.
        let ops = script();
        let vfs = SimVfs::new(9, SimFaults { torn_write: 1.0, flip_bit: 1.0 });
        let dir = Path::new("/node");
        for upto in 0..=ops.len() {
            let (mut st, rec, _) = Storage::open(vfs.clone(), dir, opts()).unwrap();
            let (hs, snap, log) = expected(&ops[..upto.saturating_sub(1)]);
            let want: Vec<Entry> = log.into_iter().filter(|e| e.index.0 > snap).collect();
            assert_eq!((rec.hard_state, rec.entries), (hs, want), "before step {upto}");
            if upto > 0 {
                st.apply(&ops[upto - 1]).unwrap();
                st.sync().unwrap();
            }
            if let Some(next) = ops.get(upto) {
                if !matches!(next, StorageOp::Snapshot(_)) {
                    st.apply(next).unwrap(); // written, never synced: torn by the crash
                }
            }
            drop(st);
            vfs.crash();
        }
    }

    #[test]
    fn compaction_deletes_whole_segments_behind_a_snapshot() {
        let vfs = SimVfs::new(1, SimFaults::default());
        let (mut st, _, _) = Storage::open(vfs.clone(), Path::new("/node"), opts()).unwrap();
        for op in script().iter().take(16) {
            st.apply(op).unwrap();
            st.sync().unwrap();
        }
        let before = st.segment_count();
        for op in script().iter().skip(16) {
            st.apply(op).unwrap();
            st.sync().unwrap();
        }
        assert!(
            st.segment_count() < before + 10,
            "segments behind snapshots are deleted: {before} -> {}",
            st.segment_count()
        );
        assert!(st.segment_count() <= 4, "{} segments", st.segment_count());
    }

    #[tokio::test]
    async fn group_commit_covers_every_queued_batch_with_one_fsync() {
        let vfs = SimVfs::new(1, SimFaults::default());
        let (st, _, _) = Storage::open(vfs.clone(), Path::new("/node"), StorageOptions::default()).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        for seq in 1..=50 {
            let ops = vec![StorageOp::Entries { first_index: LogIndex(seq), entries: vec![entry(seq, 1)] }];
            tx.send(Batch { seq, ops, after_sync: Vec::new() }).unwrap();
        }
        let syncs_before = vfs.syncs();
        let task = tokio::spawn(run_group_commit(share(st), rx, done_tx));
        let first = done_rx.recv().await.unwrap().unwrap();
        assert_eq!((first.seq, first.batches), (50, 50), "all 50 queued batches in one group");
        assert_eq!(vfs.syncs() - syncs_before, 1, "one fsync for the group");
        drop(tx);
        task.await.unwrap();
    }

    #[test]
    fn the_blocking_group_commit_covers_every_queued_batch_with_one_fsync_and_reports_in_order() {
        let vfs = SimVfs::new(2, SimFaults::default());
        let dir = Path::new("/node");
        let (st, _, _) = Storage::open(vfs.clone(), dir, StorageOptions::default()).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        for seq in 1..=50 {
            let ops = vec![StorageOp::Entries { first_index: LogIndex(seq), entries: vec![entry(seq, 1)] }];
            tx.send(Batch { seq, ops, after_sync: Vec::new() }).unwrap();
        }
        let syncs_before = vfs.syncs();
        let thread = std::thread::spawn(move || run_group_commit_blocking(&share(st), rx, done_tx, None));
        let first = done_rx.blocking_recv().unwrap().unwrap();
        assert_eq!((first.seq, first.batches), (50, 50), "all 50 queued batches in one group");
        assert_eq!(vfs.syncs() - syncs_before, 1, "one fsync for the group");
        // A later batch is its own group, reported after the first.
        let ops = vec![StorageOp::Entries { first_index: LogIndex(51), entries: vec![entry(51, 1)] }];
        tx.send(Batch { seq: 51, ops, after_sync: Vec::new() }).unwrap();
        let second = done_rx.blocking_recv().unwrap().unwrap();
        assert_eq!((second.seq, second.batches), (51, 1));
        drop(tx);
        thread.join().unwrap();
        // What was reported durable survives a crash.
        vfs.crash();
        let (_, rec, _) = Storage::open(vfs, dir, StorageOptions::default()).unwrap();
        assert_eq!(rec.entries.len(), 51);
    }

    #[tokio::test]
    async fn batches_synced_inline_between_the_storage_threads_stay_in_order_and_survive_a_crash() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..16 {
            let vfs = SimVfs::new(seed, SimFaults { torn_write: 0.5, flip_bit: 0.5 });
            let dir = Path::new("/node");
            let (st, _, _) = Storage::open(vfs.clone(), dir, StorageOptions::default()).unwrap();
            let shared = share(st);
            let theirs = shared.clone();
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, mut done_rx) = mpsc::unbounded_channel();
            let thread = std::thread::spawn(move || run_group_commit_blocking(&theirs, rx, done_tx, None));
            let batch = |seq: u64| Batch {
                seq,
                ops: vec![StorageOp::Entries { first_index: LogIndex(seq), entries: vec![entry(seq, 1)] }],
                after_sync: vec![("127.0.0.1:7004".parse().unwrap(), vec![seq as u8])],
            };
            // Odd batches go to the thread, even ones are synced inline once the thread reported.
            for seq in 1..=9u64 {
                let syncs_before = vfs.syncs();
                let report = if seq % 2 == 1 {
                    tx.send(batch(seq)).unwrap();
                    done_rx.recv().await.unwrap().unwrap()
                } else {
                    assert!(can_commit_inline(&shared, &batch(seq).ops), "the thread is idle");
                    commit_inline(&shared, batch(seq)).await.unwrap()
                };
                assert_eq!((report.seq, report.batches), (seq, 1));
                assert_eq!(report.unsent, batch(seq).after_sync, "held datagrams come back to the caller");
                assert_eq!(vfs.syncs(), syncs_before + 1, "batch {seq} had its own fsync before its report");
            }
            drop(tx);
            thread.join().unwrap();
            // Written but never synced: the crash may lose it, tear it or keep it, and nothing else.
            lock(&shared).unwrap().apply(&batch(10).ops[0]).unwrap();
            lock(&shared).unwrap().flush().unwrap();
            drop(shared);
            vfs.crash();
            let (_, rec, _) = Storage::open(vfs, dir, StorageOptions::default()).unwrap();
            let indexes: Vec<u64> = rec.entries.iter().map(|e| e.index.0).collect();
            let reported: Vec<u64> = (1..=9).collect();
            assert_eq!(indexes[..9], reported[..], "seed {seed}: every reported batch, in order");
            assert!(indexes.len() <= 10, "seed {seed}: {indexes:?}");
            outcomes.insert(indexes.len());
        }
        assert_eq!(outcomes.len(), 2, "the unsynced batch was lost in some crashes and kept in others");
    }

    #[test]
    fn snapshots_compaction_and_a_busy_storage_thread_keep_a_batch_off_the_loop() {
        let vfs = SimVfs::new(6, SimFaults::default());
        let (st, _, _) = Storage::open(vfs, Path::new("/node"), StorageOptions::default()).unwrap();
        let shared = share(st);
        let entries = [StorageOp::Entries { first_index: LogIndex(1), entries: vec![entry(1, 1)] }];
        let hard_state = [StorageOp::HardState(HardState::default())];
        assert!(can_commit_inline(&shared, &entries));
        assert!(can_commit_inline(&shared, &hard_state));
        assert!(!can_commit_inline(&shared, &[StorageOp::Snapshot(Box::new(snapshot(1, 1)))]));
        assert!(!can_commit_inline(&shared, &[entries[0].clone(), StorageOp::Compact(LogIndex(1))]));
        {
            let _held = lock(&shared).unwrap();
            assert!(!can_commit_inline(&shared, &entries), "the storage thread holds the lock");
        }
        lock(&shared).unwrap().apply(&StorageOp::Compact(LogIndex(1))).unwrap();
        assert!(!can_commit_inline(&shared, &entries), "a pending compaction runs on the storage thread");
        lock(&shared).unwrap().sync().unwrap();
        assert!(can_commit_inline(&shared, &entries));
    }

    /// Records what it is asked to send and how many fsyncs the disk had seen by then; sends
    /// the first `take` datagrams and hands the rest back.
    struct Recorder {
        vfs: SimVfs,
        take: usize,
        log: Arc<Mutex<Vec<(u64, Datagrams)>>>,
    }

    impl PostSyncSend for Recorder {
        fn send(&mut self, mut datagrams: Datagrams) -> Datagrams {
            let rest = datagrams.split_off(self.take.min(datagrams.len()));
            self.log.lock().unwrap().push((self.vfs.syncs(), datagrams));
            rest
        }
    }

    #[test]
    fn datagrams_held_behind_a_batch_leave_from_the_storage_thread_only_after_its_fsync() {
        let vfs = SimVfs::new(3, SimFaults::default());
        let (st, _, _) = Storage::open(vfs.clone(), Path::new("/node"), StorageOptions::default()).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let to: SocketAddr = "127.0.0.1:7002".parse().unwrap();
        for seq in 1..=3u64 {
            let ops = vec![StorageOp::Entries { first_index: LogIndex(seq), entries: vec![entry(seq, 1)] }];
            tx.send(Batch { seq, ops, after_sync: vec![(to, vec![seq as u8; 10])] }).unwrap();
        }
        let syncs_before = vfs.syncs();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sender = Recorder { vfs: vfs.clone(), take: 2, log: log.clone() };
        let thread =
            std::thread::spawn(move || run_group_commit_blocking(&share(st), rx, done_tx, Some(Box::new(sender))));
        let report = done_rx.blocking_recv().unwrap().unwrap();
        drop(tx);
        thread.join().unwrap();
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1, "one send for the group");
        let (syncs_at_send, sent) = &log[0];
        assert_eq!(*syncs_at_send, syncs_before + 1, "sent only after the group's fsync");
        assert_eq!(sent, &vec![(to, vec![1u8; 10]), (to, vec![2u8; 10])], "in batch order");
        assert_eq!(report.unsent, vec![(to, vec![3u8; 10])], "what the sender handed back goes to the node");
        assert_eq!(report.sent, (2, 20));
    }

    #[tokio::test]
    async fn the_simulated_group_commit_hands_every_held_datagram_back_to_the_node() {
        let vfs = SimVfs::new(4, SimFaults::default());
        let (st, _, _) = Storage::open(vfs.clone(), Path::new("/node"), StorageOptions::default()).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let to: SocketAddr = "127.0.0.1:7003".parse().unwrap();
        let ops = vec![StorageOp::Entries { first_index: LogIndex(1), entries: vec![entry(1, 1)] }];
        tx.send(Batch { seq: 1, ops, after_sync: vec![(to, vec![9; 4])] }).unwrap();
        let task = tokio::spawn(run_group_commit(share(st), rx, done_tx));
        let report = done_rx.recv().await.unwrap().unwrap();
        assert_eq!((report.unsent, report.sent), (vec![(to, vec![9; 4])], (0, 0)));
        drop(tx);
        task.await.unwrap();
    }

    #[test]
    fn the_overlapped_group_commit_reports_in_order_and_a_crash_then_loses_nothing_reported() {
        let ops = script();
        for upto in 0..=ops.len() {
            for seed in 0..2 {
                let vfs = SimVfs::new(seed, SimFaults { torn_write: 0.7, flip_bit: 0.5 });
                let dir = Path::new("/node");
                let (st, _, _) = Storage::open(vfs.clone(), dir, opts()).unwrap();
                let (tx, rx) = mpsc::unbounded_channel();
                let (done_tx, mut done_rx) = mpsc::unbounded_channel();
                let thread = std::thread::spawn(move || run_group_commit_overlapped(st, rx, done_tx, 2));
                // One batch per op, sent without waiting, so groups form and overlap as they may.
                for (i, op) in ops[..upto].iter().enumerate() {
                    tx.send(Batch { seq: i as u64 + 1, ops: vec![op.clone()], after_sync: Vec::new() }).unwrap();
                }
                let mut last = 0;
                while last < upto as u64 {
                    let s = done_rx.blocking_recv().unwrap().unwrap();
                    assert!(s.seq > last, "reports in order: {} after {last}", s.seq);
                    last = s.seq;
                }
                assert_eq!(last, upto as u64);
                drop(tx);
                thread.join().unwrap();
                vfs.crash();
                let (_, rec, report) = Storage::open(vfs.clone(), dir, opts()).unwrap();
                let (hs, snap, log) = expected(&ops[..upto]);
                assert_eq!(rec.hard_state, hs, "after {upto} reported ops (seed {seed})");
                assert_eq!(rec.snapshot.as_ref().map_or(0, |s| s.meta.index.0), snap, "after {upto}");
                let want: Vec<Entry> = log.into_iter().filter(|e| e.index.0 > snap).collect();
                assert_eq!(rec.entries, want, "after {upto} reported ops (seed {seed}), report {report:?}");
            }
        }
    }

    fn synced(seq: u64) -> Result<Synced, StorageError> {
        Ok(Synced { seq, batches: 1, took: Duration::ZERO, unsent: Vec::new(), sent: (0, 0) })
    }

    #[test]
    fn groups_are_reported_in_the_order_written_whatever_order_their_syncs_finish() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let order = InOrder::new(tx);
        order.complete(2, synced(20));
        order.complete(3, synced(30));
        assert!(rx.try_recv().is_err(), "nothing before ticket 1 finishes");
        order.complete(1, synced(10));
        let seqs: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok()).map(|r| r.unwrap().seq).collect();
        assert_eq!(seqs, vec![10, 20, 30]);
        assert!(order.wait_before(4), "every ticket before 4 is reported");
    }

    #[test]
    fn nothing_is_reported_after_a_failed_sync() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let order = InOrder::new(tx);
        order.complete(3, synced(30));
        order.complete(2, Err(StorageError::Encode("disk on fire".into())));
        order.complete(1, synced(10));
        assert_eq!(rx.try_recv().unwrap().unwrap().seq, 10);
        assert!(rx.try_recv().unwrap().is_err(), "the failure is reported");
        assert!(rx.try_recv().is_err(), "ticket 3 is not reported after the failure");
        assert!(order.failed());
        assert!(!order.wait_before(4));
    }
}
