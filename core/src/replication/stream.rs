//! The change stream of one shard replica: an ordered log of what happened to its data, that
//! a subscriber reads from a cursor and resumes from where it stopped.
//!
//! The stream is held in memory and bounded: a reader that falls more than
//! [`Config::stream_events_max`](super::Config::stream_events_max) events behind, or holds a
//! cursor from before the replica restarted, gets a typed error telling it where the stream
//! now starts, and resynchronizes (for example with a scan).

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::message::Origin;
use super::state::{EntryId, Resolution, Stamp};
use crate::time::Instant;
use crate::NodeId;

/// A position in the stream: which life of the replica and the next sequence number to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// The stream's identity; changes when the replica restarts.
    pub stream: u64,
    /// The sequence number of the next event to read.
    pub seq: u64,
}

/// Something that happened to the shard's data on this replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A key's state changed.
    Applied {
        /// The key.
        id: EntryId,
        /// The new state's digest.
        digest: u64,
        /// How the change arrived.
        origin: Origin,
        /// The replica it came from (this one for a local write).
        from: NodeId,
    },
    /// Concurrent versions met; this is how they were settled.
    Conflict {
        /// The key.
        id: EntryId,
        /// The settlement.
        resolution: Resolution,
    },
    /// The resolver merged surfaced siblings into a new write.
    Resolved {
        /// The key.
        id: EntryId,
        /// The resolving write.
        stamp: Stamp,
        /// Siblings it replaced.
        siblings: u32,
    },
    /// An anti-entropy session with `peer` ended.
    Synced {
        /// The peer.
        peer: NodeId,
        /// Key states exchanged.
        entries: u64,
        /// Bytes sent to the peer.
        bytes: u64,
        /// False if it was abandoned (it will be retried).
        complete: bool,
    },
    /// A tombstone every replica had seen was collected.
    Collected {
        /// The key.
        id: EntryId,
    },
}

/// One event of the stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Its sequence number (consecutive).
    pub seq: u64,
    /// When it happened, by the replica's clock.
    pub at: Instant,
    /// What happened.
    pub change: Change,
}

/// Why a cursor cannot be read from. The stream did not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum StreamError {
    /// The cursor belongs to another life of the replica (it restarted).
    #[error("cursor from another stream; this one starts at {start:?}")]
    OtherStream {
        /// Where this stream starts.
        start: Cursor,
    },
    /// The events after the cursor were dropped (the reader fell too far behind).
    #[error("events dropped; the stream now starts at {start:?}")]
    Truncated {
        /// Where this stream now starts.
        start: Cursor,
    },
    /// The cursor is ahead of the stream's end.
    #[error("cursor ahead of the stream's end {end:?}")]
    Ahead {
        /// The end.
        end: Cursor,
    },
}

/// The bounded in-memory stream.
#[derive(Clone, Debug)]
pub struct ChangeStream {
    id: u64,
    first: u64,
    events: VecDeque<ChangeEvent>,
    max: usize,
}

impl ChangeStream {
    /// An empty stream named `id`, keeping at most `max` events.
    pub fn new(id: u64, max: usize) -> ChangeStream {
        ChangeStream { id, first: 0, events: VecDeque::new(), max: max.max(1) }
    }

    /// Appends an event, dropping the oldest beyond the bound.
    pub fn push(&mut self, at: Instant, change: Change) {
        let seq = self.first + self.events.len() as u64;
        self.events.push_back(ChangeEvent { seq, at, change });
        if self.events.len() > self.max {
            self.events.pop_front();
            self.first += 1;
        }
    }

    /// The cursor of the oldest event kept.
    pub fn start(&self) -> Cursor {
        Cursor { stream: self.id, seq: self.first }
    }

    /// The cursor after the newest event (where a reader that wants only new events starts).
    pub fn end(&self) -> Cursor {
        Cursor { stream: self.id, seq: self.first + self.events.len() as u64 }
    }

    /// Up to `max` events from `cursor`, and the cursor to resume from.
    pub fn read(&self, cursor: Cursor, max: usize) -> Result<(Vec<ChangeEvent>, Cursor), StreamError> {
        if cursor.stream != self.id {
            return Err(StreamError::OtherStream { start: self.start() });
        }
        if cursor.seq < self.first {
            return Err(StreamError::Truncated { start: self.start() });
        }
        let end = self.end();
        if cursor.seq > end.seq {
            return Err(StreamError::Ahead { end });
        }
        let skip = (cursor.seq - self.first) as usize;
        let out: Vec<ChangeEvent> = self.events.iter().skip(skip).take(max).cloned().collect();
        let next = Cursor { stream: self.id, seq: cursor.seq + out.len() as u64 };
        Ok((out, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(i: u64) -> Change {
        Change::Collected { id: EntryId(i) }
    }

    #[test]
    fn readers_resume_and_learn_when_they_fell_behind() {
        let mut s = ChangeStream::new(7, 3);
        let start = s.start();
        for i in 0..2 {
            s.push(Instant::ZERO, collected(i));
        }
        let (first, next) = s.read(start, 1).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].change, collected(0));
        let (rest, end) = s.read(next, 10).unwrap();
        assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
        assert_eq!(s.read(end, 10).unwrap().0, Vec::new(), "nothing new yet");
        for i in 2..6 {
            s.push(Instant::ZERO, collected(i));
        }
        assert_eq!(s.read(end, 10), Err(StreamError::Truncated { start: Cursor { stream: 7, seq: 3 } }));
        let (tail, _) = s.read(s.start(), 10).unwrap();
        assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(matches!(s.read(Cursor { stream: 8, seq: 3 }, 1), Err(StreamError::OtherStream { .. })));
        assert!(matches!(s.read(Cursor { stream: 7, seq: 9 }, 1), Err(StreamError::Ahead { .. })));
    }
}
