//! Snapshot files: written to a temporary name, synced, renamed, and the directory synced.
//!
//! A file is `magic "QSNP" ‖ version (1) ‖ postcard(SnapshotMeta) length (u32 LE) ‖ meta ‖
//! data length (u64 LE) ‖ data ‖ CRC-32 of everything before (u32 LE)`, named
//! `<index, 20 digits>-<term, 20 digits>.snap`. On start the newest file that verifies wins;
//! leftover temporary files (a crash mid-write) are deleted.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use quorate_core::raft::{Snapshot, SnapshotMeta};

use super::vfs::{Vfs, VfsFile};
use super::StorageError;

const MAGIC: &[u8; 4] = b"QSNP";
const VERSION: u8 = 1;

/// The snapshots of one node.
pub struct SnapshotStore<V: Vfs> {
    vfs: V,
    dir: PathBuf,
}

fn file_name(meta: &SnapshotMeta) -> String {
    format!("{:020}-{:020}.snap", meta.index.0, meta.term.0)
}

fn encode(s: &Snapshot) -> Result<Vec<u8>, StorageError> {
    let meta = postcard::to_allocvec(&s.meta).map_err(|e| StorageError::Encode(e.to_string()))?;
    let meta_len = u32::try_from(meta.len()).map_err(|_| StorageError::Encode("snapshot meta too large".into()))?;
    let mut out = Vec::with_capacity(4 + 1 + 4 + meta.len() + 8 + s.data.len() + 4);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&meta_len.to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
    out.extend_from_slice(&s.data);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a snapshot file; `None` if it is torn, corrupt or of another version.
pub(crate) fn decode(bytes: &[u8], verify: bool) -> Option<Snapshot> {
    let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
    if verify && crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().ok()?) {
        return None;
    }
    if body.get(..4)? != MAGIC || *body.get(4)? != VERSION {
        return None;
    }
    let meta_len = u32::from_le_bytes(body.get(5..9)?.try_into().ok()?) as usize;
    let meta_end = 9usize.checked_add(meta_len)?;
    let meta: SnapshotMeta = postcard::from_bytes(body.get(9..meta_end)?).ok()?;
    let data_len = usize::try_from(u64::from_le_bytes(body.get(meta_end..meta_end + 8)?.try_into().ok()?)).ok()?;
    let data_start = meta_end + 8;
    if body.len() != data_start.checked_add(data_len)? {
        return None;
    }
    Some(Snapshot { meta, data: Bytes::copy_from_slice(&body[data_start..]) })
}

impl<V: Vfs> SnapshotStore<V> {
    /// Opens the store in `dir` and returns the newest valid snapshot, if any.
    pub fn open(
        vfs: V,
        dir: &Path,
        verify_checksums: bool,
    ) -> Result<(SnapshotStore<V>, Option<Snapshot>), StorageError> {
        vfs.create_dir_all(dir).map_err(StorageError::io("create the snapshot directory"))?;
        let names = vfs.list(dir).map_err(StorageError::io("list the snapshot directory"))?;
        let mut newest = None;
        for name in names.iter().rev() {
            let path = dir.join(name);
            if name.ends_with(".tmp") {
                vfs.remove(&path).map_err(StorageError::io("delete a partial snapshot"))?;
                continue;
            }
            if newest.is_none() && name.ends_with(".snap") {
                let bytes = vfs.read(&path).map_err(StorageError::io("read a snapshot"))?;
                newest = decode(&bytes, verify_checksums);
            }
        }
        Ok((SnapshotStore { vfs, dir: dir.to_path_buf() }, newest))
    }

    /// Writes `s` durably (temporary file, sync, rename, directory sync), then deletes older
    /// snapshots.
    pub fn save(&mut self, s: &Snapshot) -> Result<(), StorageError> {
        let name = file_name(&s.meta);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        let bytes = encode(s)?;
        {
            let mut f = self.vfs.open_append(&tmp).map_err(StorageError::io("create a snapshot file"))?;
            f.append(&bytes).map_err(StorageError::io("write a snapshot"))?;
            f.sync().map_err(StorageError::io("fsync a snapshot"))?;
        }
        self.vfs.rename(&tmp, &path).map_err(StorageError::io("rename a snapshot"))?;
        self.vfs.sync_dir(&self.dir).map_err(StorageError::io("sync the snapshot directory"))?;
        for old in self.vfs.list(&self.dir).map_err(StorageError::io("list the snapshot directory"))? {
            if old.ends_with(".snap") && old < name {
                self.vfs.remove(&self.dir.join(old)).map_err(StorageError::io("delete an old snapshot"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::vfs::{SimFaults, SimVfs};
    use quorate_core::raft::{LogIndex, Membership, Term};
    use quorate_core::NodeId;

    fn snap(index: u64, data: &'static [u8]) -> Snapshot {
        let meta = SnapshotMeta {
            index: LogIndex(index),
            term: Term(1),
            membership: Membership::with_voters([NodeId(1)]),
            size_bytes: data.len() as u64,
            digest: quorate_core::fnv1a64(data),
        };
        Snapshot { meta, data: Bytes::from_static(data) }
    }

    #[test]
    fn the_newest_valid_snapshot_wins_and_older_ones_are_deleted() {
        let vfs = SimVfs::new(1, SimFaults::default());
        let dir = Path::new("/n/snap");
        let (mut store, none) = SnapshotStore::open(vfs.clone(), dir, true).unwrap();
        assert!(none.is_none());
        store.save(&snap(5, b"five")).unwrap();
        store.save(&snap(9, b"nine")).unwrap();
        assert_eq!(vfs.list(dir).unwrap().len(), 1);
        vfs.crash();
        let (_, got) = SnapshotStore::open(vfs, dir, true).unwrap();
        assert_eq!(got, Some(snap(9, b"nine")));
    }

    #[test]
    fn every_truncation_or_flipped_byte_is_detected() {
        let bytes = encode(&snap(3, b"some state machine bytes")).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], true).is_none(), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad, true).is_none(), "flip at {at}");
        }
        assert_eq!(decode(&bytes, true), Some(snap(3, b"some state machine bytes")));
    }

    #[test]
    fn a_crash_mid_save_keeps_the_previous_snapshot() {
        let vfs = SimVfs::new(1, SimFaults::default());
        let dir = Path::new("/n/snap");
        let (mut store, _) = SnapshotStore::open(vfs.clone(), dir, true).unwrap();
        store.save(&snap(5, b"five")).unwrap();
        // A save that wrote its temporary file but crashed before the rename.
        let mut f = vfs.open_append(&dir.join("00000000000000000009-00000000000000000001.snap.tmp")).unwrap();
        f.append(b"partial").unwrap();
        vfs.sync_dir(dir).unwrap();
        vfs.crash();
        let (_, got) = SnapshotStore::open(vfs.clone(), dir, true).unwrap();
        assert_eq!(got, Some(snap(5, b"five")));
        assert!(vfs.list(dir).unwrap().iter().all(|n| !n.ends_with(".tmp")));
    }
}
