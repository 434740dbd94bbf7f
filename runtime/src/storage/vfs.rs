//! The file operations storage needs, behind a trait: real files, or a simulated disk.
//!
//! The write-ahead log and the snapshot store are written once, against [`Vfs`], so the code
//! that recovers from a torn tail in production is the code the simulator crashes. [`FileVfs`]
//! is the real file system; [`SimVfs`] is an in-memory disk per node that survives a restart,
//! loses what was not synced when the node crashes, and can tear the unsynced tail or flip
//! bits in it.
//!
//! Files can be preallocated: extended with zeros ahead of the appends
//! ([`VfsFile::preallocate`]), so an append overwrites blocks the file already owns and an
//! `fdatasync` has no file size to journal. Both implementations model it, and a crash may
//! leave a zeroed tail after the last record, which the WAL's recovery must tell apart from a
//! torn write (see [`crate::storage::wal`]).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

/// A handle that makes a file's written bytes durable from another thread, so a second fsync
/// can start while the first is still running.
pub trait FileSync: Clone + Send + 'static {
    /// Makes every byte written to the file before this call durable.
    fn sync(&self) -> io::Result<()>;
}

/// A file opened for appending.
pub trait VfsFile: Send + 'static {
    /// Its [`FileSync`] handle.
    type Sync: FileSync;
    /// Appends `bytes` (not durable until [`VfsFile::sync`]).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes every byte appended so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Extends the file with zero bytes to `len` bytes (nothing if it is that long already)
    /// without moving where the next append lands; durable, like appends, after a sync.
    fn preallocate(&mut self, len: u64) -> io::Result<()>;
    /// A handle that syncs this file from another thread.
    fn sync_handle(&self) -> io::Result<Self::Sync>;
}

/// The file system operations of the storage layer. Paths are plain; directories are created
/// with [`Vfs::create_dir_all`]. Names in a directory become durable with [`Vfs::sync_dir`].
pub trait Vfs: Clone + Send + Sync + 'static {
    /// An open, appendable file.
    type File: VfsFile;

    /// Creates a directory and its parents (durable at once).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// File names in `dir`, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Opens `path` for appending, creating it empty if missing.
    fn open_append(&self, path: &Path) -> io::Result<Self::File>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Renames a file (durable once the directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Deletes a file (durable once the directory is synced).
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the names in `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileVfs;

/// A real file opened for appending. Not opened with `O_APPEND`: appends land at `pos`, which
/// may be before the end once the file is preallocated.
#[derive(Debug)]
pub struct RealFile {
    file: std::fs::File,
    /// Where the next append lands (the file's cursor is kept there).
    pos: u64,
    /// The file's length, zero tail included.
    len: u64,
}

/// Syncs a [`RealFile`] through a duplicate of its descriptor.
#[derive(Clone, Debug)]
pub struct RealFileSync(Arc<std::fs::File>);

impl FileSync for RealFileSync {
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl VfsFile for RealFile {
    type Sync = RealFileSync;

    fn sync_handle(&self) -> io::Result<RealFileSync> {
        Ok(RealFileSync(Arc::new(self.file.try_clone()?)))
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        self.len = self.len.max(self.pos);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        // Data and the length the appends changed; other metadata is not needed to recover.
        self.file.sync_data()
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        if len <= self.len {
            return Ok(());
        }
        // Real zeros, not `fallocate`: unwritten extents would still cost a metadata update
        // when the appends convert them (measured: no faster than plain appends).
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        self.file.seek(SeekFrom::Start(self.len))?;
        let mut left = len - self.len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.file.write_all(&ZEROS[..n])?;
            left -= n as u64;
        }
        self.len = len;
        self.file.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }
}

impl Vfs for FileVfs {
    type File = RealFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<RealFile> {
        let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(path)?;
        let len = file.seek(SeekFrom::End(0))?;
        Ok(RealFile { file, pos: len, len })
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Faults a simulated disk injects when its node crashes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SimFaults {
    /// Chance that a file's unsynced tail is partly kept (a torn write) instead of lost.
    pub torn_write: f64,
    /// Chance that one bit of a kept unsynced tail is flipped.
    pub flip_bit: f64,
}

/// A simulated file: `data` then `zeros` zero bytes (a preallocated tail, not stored).
/// Appends land at the end of `data`, overwriting the zero tail.
#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    /// How much of `data` is durable.
    synced_len: usize,
    /// Length of the zero tail after `data`.
    zeros: usize,
    /// The file's length as of its last sync: after a crash, whatever lies between the kept
    /// data and this length reads as zeros again (lost overwrites of a preallocated tail).
    synced_end: usize,
}

impl Inode {
    fn len(&self) -> usize {
        self.data.len() + self.zeros
    }
}

#[derive(Debug)]
struct Disk {
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// Names as the running node sees them.
    names: BTreeMap<PathBuf, u64>,
    /// Names as they would be after a crash (as of each directory's last sync).
    durable_names: BTreeMap<PathBuf, u64>,
    dirs: BTreeSet<PathBuf>,
    faults: SimFaults,
    rng: ChaCha8Rng,
    syncs: u64,
}

/// An in-memory disk for one simulated node. Clones share the disk, so the simulator keeps a
/// clone across the node's restarts and calls [`SimVfs::crash`] when it kills the node.
#[derive(Clone, Debug)]
pub struct SimVfs {
    disk: Arc<Mutex<Disk>>,
}

impl SimVfs {
    /// An empty disk whose crash faults draw from `seed`.
    pub fn new(seed: u64, faults: SimFaults) -> SimVfs {
        let disk = Disk {
            inodes: BTreeMap::new(),
            next_inode: 1,
            names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            dirs: BTreeSet::new(),
            faults,
            rng: ChaCha8Rng::seed_from_u64(seed),
            syncs: 0,
        };
        SimVfs { disk: Arc::new(Mutex::new(disk)) }
    }

    fn lock(&self) -> MutexGuard<'_, Disk> {
        // A panic while holding the lock poisons it; the disk's state is still consistent
        // (every operation completes or does nothing), so keep using it.
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node crashed: names revert to their last directory sync, every file loses what was
    /// not synced (or keeps a torn, possibly bit-flipped part of it).
    pub fn crash(&self) {
        let mut d = self.lock();
        d.names = d.durable_names.clone();
        let live: BTreeSet<u64> = d.names.values().copied().collect();
        d.inodes.retain(|id, _| live.contains(id));
        let faults = d.faults;
        let ids: Vec<u64> = d.inodes.keys().copied().collect();
        for id in ids {
            let torn = chance(&mut d.rng, faults.torn_write);
            let flip = chance(&mut d.rng, faults.flip_bit);
            let pick = d.rng.next_u64();
            let bit = d.rng.next_u64();
            let Some(inode) = d.inodes.get_mut(&id) else { continue };
            let unsynced = inode.data.len() - inode.synced_len;
            tracing::trace!(inode = id, unsynced, len = inode.data.len(), "crash");
            if unsynced == 0 {
                // Unsynced preallocation is lost; a synced zero tail stays.
                inode.zeros = inode.synced_end.saturating_sub(inode.data.len());
                inode.synced_end = inode.len();
                continue;
            }
            // A torn write keeps a prefix of what was in flight: whole 512-byte sectors (what
            // a disk tears at), or, half the time, any byte count (a file system that does not).
            let keep = match torn {
                false => 0,
                true if pick % 2 == 0 => (((pick >> 1) % (unsynced as u64 / 512 + 2)) as usize * 512).min(unsynced),
                true => ((pick >> 1) % (unsynced as u64 + 1)) as usize,
            };
            inode.data.truncate(inode.synced_len + keep);
            if flip && keep > 0 {
                let at = inode.synced_len * 8 + (bit % (keep as u64 * 8)) as usize;
                inode.data[at / 8] ^= 1 << (at % 8);
                tracing::debug!(inode = id, byte = at / 8, kept = keep, unsynced, "crash flipped a bit in a torn tail");
            }
            // Whatever survived the crash is on the platter now; a synced zero tail stays.
            inode.synced_len = inode.data.len();
            inode.zeros = inode.synced_end.saturating_sub(inode.data.len());
            inode.synced_end = inode.len();
        }
    }

    /// Bytes written but not yet synced, over every file: a crash now tears or loses them.
    pub fn unsynced_bytes(&self) -> usize {
        let d = self.lock();
        let live: BTreeSet<u64> = d.names.values().copied().collect();
        d.inodes.iter().filter(|(id, _)| live.contains(id)).map(|(_, i)| i.data.len() - i.synced_len).sum()
    }

    /// Bytes held in every file (for tests and reports).
    pub fn total_bytes(&self) -> usize {
        self.lock().inodes.values().map(|i| i.data.len()).sum()
    }

    /// File and directory syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Flips one bit of a file's durable content (a media fault, for tests).
    pub fn flip_durable_bit(&self, path: &Path, bit: usize) -> io::Result<()> {
        let mut d = self.lock();
        let id = *d.names.get(path).ok_or_else(not_found)?;
        let inode = d.inodes.get_mut(&id).ok_or_else(not_found)?;
        let byte = inode.data.get_mut(bit / 8).ok_or_else(|| io::Error::other("bit past the end"))?;
        *byte ^= 1 << (bit % 8);
        Ok(())
    }
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && (rng.next_u64() as f64 / u64::MAX as f64) < p
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file")
}

/// An appendable file on a [`SimVfs`] (a clone is its [`FileSync`] handle).
#[derive(Clone, Debug)]
pub struct SimFile {
    vfs: SimVfs,
    inode: u64,
}

impl FileSync for SimFile {
    fn sync(&self) -> io::Result<()> {
        let mut d = self.vfs.lock();
        d.syncs += 1;
        let inode = d.inodes.get_mut(&self.inode).ok_or_else(not_found)?;
        inode.synced_len = inode.data.len();
        inode.synced_end = inode.len();
        Ok(())
    }
}

impl VfsFile for SimFile {
    type Sync = SimFile;

    fn sync_handle(&self) -> io::Result<SimFile> {
        Ok(self.clone())
    }

    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut d = self.vfs.lock();
        let inode = d.inodes.get_mut(&self.inode).ok_or_else(not_found)?;
        inode.zeros = inode.zeros.saturating_sub(bytes.len());
        inode.data.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        FileSync::sync(&*self)
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let mut d = self.vfs.lock();
        let inode = d.inodes.get_mut(&self.inode).ok_or_else(not_found)?;
        let len = usize::try_from(len).map_err(|_| io::Error::other("file too long"))?;
        inode.zeros += len.saturating_sub(inode.len());
        Ok(())
    }
}

impl Vfs for SimVfs {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.lock();
        for a in dir.ancestors() {
            d.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let d = self.lock();
        if !d.dirs.contains(dir) {
            return Err(not_found());
        }
        let names = d
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let d = self.lock();
        let id = d.names.get(path).ok_or_else(not_found)?;
        Ok(d.inodes
            .get(id)
            .map(|i| {
                let mut v = i.data.clone();
                v.resize(i.len(), 0);
                v
            })
            .unwrap_or_default())
    }

    fn open_append(&self, path: &Path) -> io::Result<SimFile> {
        let mut d = self.lock();
        if !path.parent().is_some_and(|p| d.dirs.contains(p)) {
            return Err(not_found());
        }
        let id = match d.names.get(path) {
            Some(id) => *id,
            None => {
                let id = d.next_inode;
                d.next_inode += 1;
                d.inodes.insert(id, Inode::default());
                d.names.insert(path.to_path_buf(), id);
                id
            }
        };
        // Appends go to the end of the file, as on a real one: a zero tail becomes data (the
        // part of it that was synced is durable).
        if let Some(inode) = d.inodes.get_mut(&id) {
            if inode.zeros > 0 {
                let (len, all_synced) = (inode.len(), inode.synced_len == inode.data.len());
                inode.data.resize(len, 0);
                inode.zeros = 0;
                if all_synced {
                    inode.synced_len = inode.synced_len.max(inode.synced_end.min(len));
                }
            }
        }
        Ok(SimFile { vfs: self.clone(), inode: id })
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let mut d = self.lock();
        let id = *d.names.get(path).ok_or_else(not_found)?;
        let inode = d.inodes.get_mut(&id).ok_or_else(not_found)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(inode.len());
        inode.zeros = len.saturating_sub(inode.data.len());
        inode.data.truncate(len);
        // The cut itself is durable (the real file system syncs it); what stays keeps its state.
        inode.synced_len = inode.synced_len.min(len);
        inode.synced_end = inode.synced_end.min(len);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut d = self.lock();
        let id = d.names.remove(from).ok_or_else(not_found)?;
        d.names.insert(to.to_path_buf(), id);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut d = self.lock();
        d.names.remove(path).ok_or_else(not_found)?;
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut d = self.lock();
        d.syncs += 1;
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let current: Vec<(PathBuf, u64)> =
            d.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), *i)).collect();
        d.durable_names.retain(|p, _| !in_dir(p));
        d.durable_names.extend(current);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_loses_unsynced_bytes_and_unsynced_names() {
        let vfs = SimVfs::new(1, SimFaults::default());
        let dir = Path::new("/d");
        vfs.create_dir_all(dir).unwrap();
        let mut f = vfs.open_append(&dir.join("a")).unwrap();
        f.append(b"kept").unwrap();
        f.sync().unwrap();
        vfs.sync_dir(dir).unwrap();
        f.append(b"lost").unwrap();
        let mut g = vfs.open_append(&dir.join("b")).unwrap();
        g.append(b"x").unwrap();
        g.sync().unwrap();
        vfs.crash();
        assert_eq!(vfs.read(&dir.join("a")).unwrap(), b"kept");
        assert!(vfs.read(&dir.join("b")).is_err(), "a name never synced into its directory is gone");
        assert_eq!(vfs.list(dir).unwrap(), vec!["a".to_string()]);
    }

    #[test]
    fn torn_writes_keep_a_prefix_of_the_unsynced_tail() {
        let faults = SimFaults { torn_write: 1.0, flip_bit: 0.0 };
        let mut seen_partial = false;
        for seed in 0..20 {
            let vfs = SimVfs::new(seed, faults);
            let dir = Path::new("/d");
            vfs.create_dir_all(dir).unwrap();
            let mut f = vfs.open_append(&dir.join("a")).unwrap();
            f.append(b"synced").unwrap();
            f.sync().unwrap();
            vfs.sync_dir(dir).unwrap();
            f.append(b"0123456789").unwrap();
            vfs.crash();
            let data = vfs.read(&dir.join("a")).unwrap();
            assert!(data.starts_with(b"synced"));
            assert!(b"synced0123456789".starts_with(&data));
            seen_partial |= data.len() > 6;
        }
        assert!(seen_partial, "some seed keeps part of the tail");
    }

    #[test]
    fn a_rename_is_durable_only_after_the_directory_sync() {
        let vfs = SimVfs::new(1, SimFaults::default());
        let dir = Path::new("/d");
        vfs.create_dir_all(dir).unwrap();
        let mut f = vfs.open_append(&dir.join("tmp")).unwrap();
        f.append(b"new").unwrap();
        f.sync().unwrap();
        vfs.sync_dir(dir).unwrap();
        vfs.rename(&dir.join("tmp"), &dir.join("final")).unwrap();
        vfs.crash();
        assert_eq!(vfs.list(dir).unwrap(), vec!["tmp".to_string()]);
        vfs.rename(&dir.join("tmp"), &dir.join("final")).unwrap();
        vfs.sync_dir(dir).unwrap();
        vfs.crash();
        assert_eq!(vfs.read(&dir.join("final")).unwrap(), b"new");
    }

    #[test]
    fn file_vfs_does_the_same_operations_on_a_real_directory() {
        let dir = std::env::temp_dir().join(format!("quorate-vfs-{}", std::process::id()));
        let vfs = FileVfs;
        vfs.create_dir_all(&dir).unwrap();
        let mut f = vfs.open_append(&dir.join("a")).unwrap();
        f.append(b"hello world").unwrap();
        f.sync().unwrap();
        vfs.truncate(&dir.join("a"), 5).unwrap();
        vfs.rename(&dir.join("a"), &dir.join("b")).unwrap();
        vfs.sync_dir(&dir).unwrap();
        assert_eq!(vfs.list(&dir).unwrap(), vec!["b".to_string()]);
        assert_eq!(vfs.read(&dir.join("b")).unwrap(), b"hello");
        vfs.remove(&dir.join("b")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
