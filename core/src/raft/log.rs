//! The in-memory view of the log: a snapshot boundary followed by the entries after it.
//!
//! The host keeps the durable copy; this view is what the node reasons with. Every index it
//! hands out is checked against the bounds, so an out-of-range request answers `None`.

use alloc::vec::Vec;

use super::message::{Entry, LogIndex, Term};

/// What [`RaftLog::try_append`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    /// The log does not hold the entry the append follows.
    Mismatch,
    /// The append is malformed or contradicts committed entries; nothing changed.
    Invalid,
    /// Appended (or already present); `first_written` is the first index that changed.
    Appended { last_new: LogIndex, first_written: Option<LogIndex> },
}

/// Entries after a snapshot boundary, plus the commit, apply and durability marks.
#[derive(Clone, Debug, Default)]
pub(crate) struct RaftLog {
    /// Index of the last entry covered by the snapshot (0 when there is none).
    snapshot_index: LogIndex,
    /// Term of that entry.
    snapshot_term: Term,
    /// `entries[i].index == snapshot_index + 1 + i`.
    entries: Vec<Entry>,
    /// Highest index known committed.
    pub committed: LogIndex,
    /// Highest index handed to the host as `Apply`.
    pub applied: LogIndex,
    /// Highest index the host reported durable with a matching term.
    pub persisted: LogIndex,
}

impl RaftLog {
    /// A log that starts after a snapshot at `(index, term)`, with `entries` following it.
    pub fn new(snapshot_index: LogIndex, snapshot_term: Term, entries: Vec<Entry>) -> Self {
        let mut log = RaftLog {
            snapshot_index,
            snapshot_term,
            entries: Vec::new(),
            committed: snapshot_index,
            applied: snapshot_index,
            persisted: snapshot_index,
        };
        // Keep only a contiguous run that starts right after the snapshot.
        for e in entries {
            if e.index == log.last_index().next() && e.term >= log.last_term() {
                log.entries.push(e);
            } else if e.index > log.last_index() {
                break;
            }
        }
        log.persisted = log.last_index();
        log
    }

    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot_index
    }

    pub fn snapshot_term(&self) -> Term {
        self.snapshot_term
    }

    pub fn first_index(&self) -> LogIndex {
        self.snapshot_index.next()
    }

    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.snapshot_index.0 + self.entries.len() as u64)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// The term of the entry at `index`, if known (the snapshot boundary counts).
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        let offset = usize::try_from(index.0 - self.snapshot_index.0 - 1).ok()?;
        self.entries.get(offset)
    }

    /// Entries from `lo` on, at least one if any exists, stopping before `max_bytes` is exceeded.
    pub fn entries_from(&self, lo: LogIndex, max_bytes: u64) -> Vec<Entry> {
        if lo <= self.snapshot_index || lo > self.last_index() {
            return Vec::new();
        }
        let start = (lo.0 - self.snapshot_index.0 - 1) as usize;
        let mut end = start;
        let mut bytes = 0u64;
        for e in &self.entries[start..] {
            bytes = bytes.saturating_add(e.size_bytes());
            if end > start && bytes > max_bytes {
                break;
            }
            end += 1;
        }
        self.entries[start..end].to_vec()
    }

    /// Entries in `lo..=hi`, clamped to what the log holds.
    pub fn slice(&self, lo: LogIndex, hi: LogIndex) -> &[Entry] {
        let lo = lo.max(self.first_index());
        let hi = hi.min(self.last_index());
        if lo > hi {
            return &[];
        }
        let start = (lo.0 - self.snapshot_index.0 - 1) as usize;
        let end = (hi.0 - self.snapshot_index.0) as usize;
        &self.entries[start..end]
    }

    /// Appends entries the leader created; they must follow the last index.
    pub fn append(&mut self, entry: Entry) {
        // Only this crate's leader path calls this, with indexes it just computed from
        // `last_index`: a gap or an older term is a bug here, never bad input, and appending
        // anyway would break Log Matching for every follower, so stop instead (as etcd does).
        assert_eq!(entry.index, self.last_index().next(), "leader append out of order");
        assert!(entry.term >= self.last_term(), "leader append with an older term");
        self.entries.push(entry);
    }

    /// Takes back the entries from `index` on that this leader just appended and nobody has
    /// seen yet (a refused proposal batch).
    pub fn truncate_uncommitted_from(&mut self, index: LogIndex) {
        // Called only to undo a batch refused in the same step that appended it, before any
        // persist or commit could see it; dropping a committed or persisted entry would lose
        // an acknowledged write, so a bug that tries is stopped here rather than carried on.
        assert!(index > self.committed && index > self.persisted, "taking back a committed or persisted entry");
        self.truncate_from(index);
    }

    /// A follower appends entries after `(prev_index, prev_term)`.
    ///
    /// Entries at or below `committed` are never overwritten: a message that would do so did
    /// not come from a correct leader and changes nothing.
    pub fn try_append(&mut self, prev_index: LogIndex, prev_term: Term, entries: Vec<Entry>) -> AppendOutcome {
        // Below the snapshot everything is committed and matches by definition.
        if prev_index >= self.snapshot_index && self.term(prev_index) != Some(prev_term) {
            return AppendOutcome::Mismatch;
        }
        if prev_index == self.last_index() {
            return self.append_after_last(entries);
        }
        let contiguous = entries.iter().enumerate().all(|(i, e)| e.index.0 == prev_index.0 + 1 + i as u64);
        let conflict_below_commit = entries
            .iter()
            .any(|e| e.index <= self.committed && e.index > self.snapshot_index && self.term(e.index) != Some(e.term));
        if !contiguous || conflict_below_commit {
            return AppendOutcome::Invalid;
        }
        let last_new = LogIndex(prev_index.0 + entries.len() as u64);
        let mut first_written = None;
        for e in entries {
            if e.index <= self.snapshot_index {
                continue;
            }
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => self.truncate_from(e.index),
                None => {}
            }
            first_written.get_or_insert(e.index);
            self.entries.push(e);
        }
        AppendOutcome::Appended { last_new, first_written }
    }

    /// The common case: the entries follow the last one, so nothing can conflict.
    fn append_after_last(&mut self, entries: Vec<Entry>) -> AppendOutcome {
        let first = self.last_index().next();
        let contiguous = entries.iter().enumerate().all(|(i, e)| e.index.0 == first.0 + i as u64);
        let terms_ordered = entries.first().is_none_or(|e| e.term >= self.last_term())
            && entries.windows(2).all(|w| w[0].term <= w[1].term);
        if !contiguous || !terms_ordered {
            return AppendOutcome::Invalid;
        }
        let last_new = LogIndex(self.last_index().0 + entries.len() as u64);
        let first_written = if entries.is_empty() { None } else { Some(first) };
        self.entries.extend(entries);
        AppendOutcome::Appended { last_new, first_written }
    }

    fn truncate_from(&mut self, index: LogIndex) {
        let keep = (index.0 - self.snapshot_index.0 - 1) as usize;
        self.entries.truncate(keep);
        self.persisted = self.persisted.min(index.prev());
    }

    /// The largest index `<= index` whose term is `<= term`, with that term.
    ///
    /// Used to answer a rejected append with a hint that skips a whole conflicting term.
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> (LogIndex, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term && i > self.snapshot_index => i = i.prev(),
                Some(t) => return (i, t),
                None => return (self.snapshot_index, self.snapshot_term),
            }
        }
    }

    /// True if a candidate with this last entry is at least as up to date as this log (§5.4.1).
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Raises the commit mark; never lowers it.
    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Records that the host made entries up to `(index, term)` durable.
    pub fn persisted_to(&mut self, index: LogIndex, term: Term) -> bool {
        if index > self.persisted && index <= self.last_index() && self.term(index) == Some(term) {
            self.persisted = index;
            true
        } else {
            false
        }
    }

    /// Drops entries up to `index` (inclusive), which a snapshot now covers.
    pub fn compact_to(&mut self, index: LogIndex) {
        // `Raft::handle_snapshot`, the only caller, compacts to exactly the applied index, so
        // the index is inside the log; were it not, keeping the log beats dropping unapplied
        // entries or panicking.
        if index > self.applied || index <= self.snapshot_index {
            return;
        }
        let Some(term) = self.term(index) else { return };
        let drop = (index.0 - self.snapshot_index.0) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the log with a snapshot at `(index, term)`, keeping the entries after it when
    /// they agree with it. Returns true if the suffix was kept.
    pub fn restore(&mut self, index: LogIndex, term: Term) -> bool {
        let keep_suffix = self.term(index) == Some(term);
        if keep_suffix {
            let drop = (index.0 - self.snapshot_index.0) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
            self.persisted = self.persisted.min(index);
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.committed = self.committed.max(index);
        self.applied = self.applied.max(index);
        self.persisted = self.persisted.max(index).min(self.last_index());
        keep_suffix
    }

    pub fn check_invariants(&self) {
        for (i, e) in self.entries.iter().enumerate() {
            assert_eq!(e.index.0, self.snapshot_index.0 + 1 + i as u64, "log indexes not contiguous");
        }
        assert!(self.entries.windows(2).all(|w| w[0].term <= w[1].term), "log terms decrease");
        if let Some(first) = self.entries.first() {
            assert!(first.term >= self.snapshot_term, "first entry older than the snapshot");
        }
        assert!(self.applied <= self.committed, "applied {} > committed {}", self.applied, self.committed);
        assert!(self.committed <= self.last_index(), "committed {} > last {}", self.committed, self.last_index());
        assert!(self.snapshot_index <= self.applied, "snapshot ahead of applied");
        assert!(self.persisted <= self.last_index(), "persisted past the last index");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::message::EntryPayload;
    use alloc::vec;

    fn e(index: u64, term: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Noop }
    }

    fn log_of(terms: &[u64]) -> RaftLog {
        RaftLog::new(LogIndex(0), Term(0), terms.iter().enumerate().map(|(i, &t)| e(i as u64 + 1, t)).collect())
    }

    #[test]
    fn try_append_rejects_a_missing_prev() {
        let mut log = log_of(&[1, 1]);
        assert_eq!(log.try_append(LogIndex(3), Term(1), vec![e(4, 1)]), AppendOutcome::Mismatch);
        assert_eq!(log.try_append(LogIndex(2), Term(2), vec![e(3, 2)]), AppendOutcome::Mismatch);
        assert_eq!(log.try_append(LogIndex(2), Term(1), vec![e(4, 1)]), AppendOutcome::Invalid);
        log.commit_to(LogIndex(2));
        assert_eq!(log.try_append(LogIndex(1), Term(1), vec![e(2, 3)]), AppendOutcome::Invalid);
        assert_eq!(log.term(LogIndex(2)), Some(Term(1)));
        log.check_invariants();
    }

    #[test]
    fn try_append_truncates_conflicts_and_ignores_duplicates() {
        let mut log = log_of(&[1, 1, 1, 1]);
        let dup = log.try_append(LogIndex(1), Term(1), vec![e(2, 1), e(3, 1)]);
        assert_eq!(dup, AppendOutcome::Appended { last_new: LogIndex(3), first_written: None });
        assert_eq!(log.last_index(), LogIndex(4), "a duplicate prefix must not truncate");
        let conflict = log.try_append(LogIndex(2), Term(1), vec![e(3, 2)]);
        assert_eq!(conflict, AppendOutcome::Appended { last_new: LogIndex(3), first_written: Some(LogIndex(3)) });
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(3)), Some(Term(2)));
        assert!(log.persisted <= LogIndex(2));
        log.check_invariants();
    }

    #[test]
    fn conflict_hint_skips_a_whole_term() {
        let log = log_of(&[1, 1, 2, 2, 2, 4]);
        assert_eq!(log.find_conflict_by_term(LogIndex(6), Term(3)), (LogIndex(5), Term(2)));
        assert_eq!(log.find_conflict_by_term(LogIndex(6), Term(1)), (LogIndex(2), Term(1)));
        assert_eq!(log.find_conflict_by_term(LogIndex(9), Term(9)), (LogIndex(6), Term(4)));
    }

    #[test]
    fn up_to_date_compares_term_then_index() {
        let log = log_of(&[1, 2, 2]);
        assert!(log.is_up_to_date(LogIndex(1), Term(3)));
        assert!(log.is_up_to_date(LogIndex(3), Term(2)));
        assert!(!log.is_up_to_date(LogIndex(2), Term(2)));
        assert!(!log.is_up_to_date(LogIndex(9), Term(1)));
    }

    #[test]
    fn compaction_and_restore_keep_bounds() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.commit_to(LogIndex(3));
        log.applied = LogIndex(3);
        log.compact_to(LogIndex(2));
        assert_eq!(log.first_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(2)), Some(Term(1)));
        assert_eq!(log.term(LogIndex(1)), None);
        assert!(log.entry(LogIndex(2)).is_none());
        log.check_invariants();
        assert!(log.restore(LogIndex(3), Term(2)), "matching suffix is kept");
        assert_eq!(log.last_index(), LogIndex(4));
        assert!(!log.restore(LogIndex(10), Term(5)));
        assert_eq!(log.last_index(), LogIndex(10));
        assert_eq!(log.committed, LogIndex(10));
        log.check_invariants();
    }

    #[test]
    fn entries_from_respects_the_byte_limit_but_sends_one() {
        let log = log_of(&[1, 1, 1, 1]);
        let one = e(1, 1).size_bytes();
        assert_eq!(log.entries_from(LogIndex(1), 0).len(), 1);
        assert_eq!(log.entries_from(LogIndex(1), one * 2).len(), 2);
        assert_eq!(log.entries_from(LogIndex(2), u64::MAX).len(), 3);
        assert_eq!(log.slice(LogIndex(2), LogIndex(3)).len(), 2);
        assert!(log.entries_from(LogIndex(0), u64::MAX).is_empty());
    }
}
