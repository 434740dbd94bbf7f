//! Test helpers (feature `testkit`): a network of replicas with a fixed latency that records a
//! readable transcript, and the drivers the fuzz targets share with their smoke tests.
//!
//! Every message travels encoded, through [`Replica::handle_datagram`], so the size limit and
//! the decoder are exercised on every delivery. Persist actions are carried out at once on a
//! per-replica [`Disk`]; a crash keeps the disk, a wipe clears it.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::time::Duration;

use super::message::{self, Message, Origin};
use super::state::{ConflictMode, Entry, EntryId, KeyState, Metadata, Op, Visible};
use super::{Action, Config, Consistency, Context, Durable, Event, Identity, Recovered, Replica, Ticket, WriteReceipt};
use crate::machine::Machine;
use crate::wire::{self, Envelope, MAGIC, PROTOCOL_VERSION};
use crate::{Instant, NodeId};

/// The cluster id the helpers use.
pub const CLUSTER: u64 = 0x5245_504c;
/// The datagram limit the helpers use.
pub const LIMIT: usize = 4096;

/// Replica `i`'s id (`i + 1`, since 0 is reserved).
pub fn id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

/// Small, fast settings for replica `i` of `n`: 4 KiB datagrams, a one-level tree, sync every
/// 2 s at 64 KiB/s, 2 s tombstone grace.
pub fn config(i: usize, n: usize, mode: ConflictMode) -> Config {
    let mut c = Config::new(id(i), (0..n).map(id).collect(), mode);
    c.cluster_id = CLUSTER;
    c.datagram_bytes_max = LIMIT;
    c.state_bytes_max = 512;
    c.vector_len_max = 16;
    c.width_max = 4;
    c.replicas_max = 7;
    c.merkle_depth = 1;
    c.sync_interval = Duration::from_secs(2);
    c.sync_bytes_per_sec = 64 << 10;
    c.sync_burst_bytes = 8 << 10;
    c.tombstone_grace = Duration::from_secs(2);
    c.collected_ttl = Duration::from_secs(30);
    c.down_after = Duration::from_secs(3);
    c
}

/// What one replica persisted.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    /// The identity.
    pub identity: Option<Identity>,
    /// Key states.
    pub entries: BTreeMap<EntryId, KeyState>,
    /// Hints, as `(target, key)`.
    pub hints: BTreeSet<(NodeId, EntryId)>,
}

impl Disk {
    /// What a restart recovers.
    pub fn recovered(&self) -> Recovered {
        Recovered {
            identity: self.identity,
            entries: self.entries.iter().map(|(k, v)| (*k, v.clone())).collect(),
            hints: self.hints.iter().copied().collect(),
        }
    }
}

/// A network of replicas with a fixed one-way latency, cut links and crashed replicas,
/// recording every event and a transcript of what a reader cares about.
pub struct Net {
    /// Replicas by index; `None` while crashed.
    pub nodes: Vec<Option<Replica>>,
    /// What each replica persisted.
    pub disks: Vec<Disk>,
    /// Each replica's settings.
    pub cfgs: Vec<Config>,
    /// Virtual time.
    pub now: Instant,
    /// One-way delay of every datagram.
    pub latency: Duration,
    /// Links cut, as `(from, to)`.
    pub cut: BTreeSet<(usize, usize)>,
    /// Every event, with when and where.
    pub events: Vec<(Instant, usize, Event)>,
    /// Datagrams delivered, and their bytes, split into (production, sync).
    pub delivered: [(u64, u64); 2],
    /// Faults, writes, reads, events and messages, one per line.
    pub transcript: String,
    /// Leave anti-entropy messages out of the transcript (their outcome is still there).
    pub quiet_sync: bool,
    /// Datagrams refused because the sender was not in the receiver's replica set.
    pub refused: u64,
    queue: BTreeMap<(Instant, u64), (usize, usize, Vec<u8>)>,
    seq: u64,
    lives: u64,
    cursors: Vec<Option<super::Cursor>>,
}

impl Net {
    /// `n` replicas in `mode` with [`config`].
    pub fn new(n: usize, mode: ConflictMode) -> Net {
        Net::with(n, |i| config(i, n, mode))
    }

    /// `n` replicas with settings from `cfg`, started at one second (so HLC walls are nonzero).
    pub fn with(n: usize, cfg: impl Fn(usize) -> Config) -> Net {
        let cfgs: Vec<Config> = (0..n).map(cfg).collect();
        let now = Instant::from_nanos(1_000_000_000);
        let nodes = cfgs
            .iter()
            .enumerate()
            .map(|(i, c)| Replica::new(c.clone(), Recovered::default(), 100 + i as u64, now).ok())
            .collect();
        let mut net = Net {
            nodes,
            disks: vec![Disk::default(); n],
            cfgs,
            now,
            latency: Duration::from_millis(1),
            cut: BTreeSet::new(),
            events: Vec::new(),
            delivered: [(0, 0); 2],
            transcript: String::new(),
            quiet_sync: true,
            refused: 0,
            queue: BTreeMap::new(),
            seq: 0,
            lives: 0,
            cursors: vec![None; n],
        };
        net.drain();
        net
    }

    /// Replica `i` (panics if crashed).
    pub fn node(&self, i: usize) -> &Replica {
        self.nodes[i].as_ref().expect("replica is running")
    }

    /// Replica `i`, mutably (panics if crashed).
    pub fn node_mut(&mut self, i: usize) -> &mut Replica {
        self.nodes[i].as_mut().expect("replica is running")
    }

    /// Adds a line to the transcript, stamped with the time.
    pub fn note(&mut self, what: &str) {
        let ms = self.now.as_nanos() / 1_000_000;
        let _ = writeln!(self.transcript, "{:>6}.{:03}s {what}", ms / 1000, ms % 1000);
    }

    /// Carries out every pending action of every replica, in order.
    pub fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(a) = self.nodes[i].as_mut().and_then(Replica::poll_action) {
                self.carry_out(i, a);
            }
            if let Some(r) = self.nodes[i].as_ref() {
                r.check_invariants();
            }
            self.note_changes(i);
        }
    }

    /// Notes what the change stream says happened besides client writes and routine syncs:
    /// repairs, hinted and synced entries, conflicts, resolutions, collections.
    fn note_changes(&mut self, i: usize) {
        let Some(r) = self.nodes[i].as_ref() else { return };
        let cursor = self.cursors[i].filter(|c| c.stream == r.stream_start().stream).unwrap_or(r.stream_start());
        let Ok((events, next)) = r.read_stream(cursor, usize::MAX) else { return };
        self.cursors[i] = Some(next);
        for e in events {
            let line = match e.change {
                super::Change::Applied { id: key, origin, from, .. } => match origin {
                    Origin::Client => continue,
                    Origin::Repair => format!("e{} repaired (from {from})", key.0),
                    Origin::Hint => format!("e{} handed off (from {from})", key.0),
                    Origin::Sync => format!("e{} synced from {from}", key.0),
                },
                super::Change::Conflict { id: key, resolution } => format!("conflict on e{}: {resolution:?}", key.0),
                super::Change::Resolved { id: key, siblings, .. } => {
                    format!("resolved {siblings} siblings of e{}", key.0)
                }
                super::Change::Collected { id: key } => format!("collected the tombstone of e{}", key.0),
                super::Change::Synced { .. } => continue,
            };
            self.note(&format!("{}: {line}", id(i)));
        }
    }

    fn carry_out(&mut self, i: usize, a: Action) {
        match a {
            Action::Send { to, message } => {
                let bytes = message::encode(CLUSTER, id(i), &message, LIMIT).expect("every message fits the limit");
                assert_eq!(bytes.len(), message::datagram_len(CLUSTER, id(i), &message), "exact size");
                let j = (to.0 - 1) as usize;
                if !(self.quiet_sync && message.is_sync()) {
                    if let Some(line) = describe(i, j, &message) {
                        self.note(&line);
                    }
                }
                if self.cut.contains(&(i, j)) {
                    return;
                }
                let at = self.now.saturating_add(self.latency);
                self.seq += 1;
                self.queue.insert((at, self.seq), (i, j, bytes));
            }
            Action::Persist(d) => {
                let r = self.nodes[i].as_ref().expect("running");
                let disk = &mut self.disks[i];
                match d {
                    Durable::Entry { id } => match r.state(id) {
                        Some(s) => {
                            disk.entries.insert(id, s.clone());
                        }
                        None => {
                            disk.entries.remove(&id);
                        }
                    },
                    Durable::Hint { target, id } => {
                        disk.hints.insert((target, id));
                    }
                    Durable::HintDone { target, id } => {
                        disk.hints.remove(&(target, id));
                    }
                    Durable::Identity(x) => disk.identity = Some(x),
                }
            }
            Action::Event(e) => {
                if let Some(line) = event_line(&e) {
                    self.note(&format!("{}: {line}", id(i)));
                }
                self.events.push((self.now, i, e));
            }
        }
    }

    /// Delivers the next datagram or fires the next timer, if it is due by `end`. False when
    /// nothing is left before `end`.
    pub fn step(&mut self, end: Instant) -> bool {
        let next_msg = self.queue.keys().next().map(|(t, _)| *t);
        let next_timer = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().and_then(|r| r.poll_timeout()).map(|t| (t, i)))
            .min();
        match (next_msg, next_timer) {
            (Some(m), t) if m <= end && t.is_none_or(|(t, _)| m <= t) => {
                let Some(((at, _), (from, to, bytes))) = self.queue.pop_first() else { return false };
                self.now = self.now.max(at);
                let now = self.now;
                if let Some(r) = self.nodes[to].as_mut() {
                    let k = usize::from(decode(&bytes).is_some_and(|m| m.is_sync()));
                    self.delivered[k].0 += 1;
                    self.delivered[k].1 += bytes.len() as u64;
                    match r.handle_datagram(now, &bytes) {
                        Ok(()) => {}
                        // A replica not (yet) in the receiver's replica set: refused, counted.
                        Err(super::ReplicaError::NotAReplica(_)) => self.refused += 1,
                        Err(e) => panic!("{} sent {} a malformed datagram: {e}", id(from), id(to)),
                    }
                }
                self.drain();
                true
            }
            (_, Some((t, i))) if t <= end => {
                self.now = self.now.max(t);
                let now = self.now;
                if let Some(r) = self.nodes[i].as_mut() {
                    r.handle_timeout(now);
                }
                self.drain();
                true
            }
            _ => false,
        }
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now.saturating_add(d);
        while self.step(end) {}
        self.now = end;
    }

    /// Runs until `done` holds (checked after every step) or `d` passes; true if it held.
    pub fn run_until(&mut self, d: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let end = self.now.saturating_add(d);
        while !done(self) {
            if !self.step(end) {
                self.now = end;
                return done(self);
            }
        }
        true
    }

    /// Writes through replica `i`.
    pub fn write(&mut self, i: usize, key: u64, op: Op, ctx: Option<Context>, c: Consistency) -> WriteReceipt {
        let now = self.now;
        let what = match &op {
            Op::Put(e) => format!("put {:?}", e.vector),
            Op::Delete => "delete".into(),
            Op::Patch { .. } => "patch".into(),
        };
        let r = self.node_mut(i).write(now, EntryId(key), op, ctx, c).expect("write accepted");
        self.note(&format!("{}: client {what} e{key} at {c:?} (ticket {})", id(i), r.ticket.0));
        self.drain();
        r
    }

    /// Reads through replica `i`.
    pub fn read(&mut self, i: usize, key: u64, c: Consistency) -> Ticket {
        let now = self.now;
        let t = self.node_mut(i).get(now, EntryId(key), c).expect("read accepted");
        self.note(&format!("{}: client reads e{key} at {c:?} (ticket {})", id(i), t.0));
        self.drain();
        t
    }

    /// The outcome of write `t` at replica `i`: `Some(acked)` once done.
    pub fn write_done(&self, i: usize, t: Ticket) -> Option<bool> {
        self.events.iter().find_map(|(_, at, e)| match e {
            Event::WriteDone { ticket, acked, .. } if *at == i && *ticket == t => Some(*acked),
            _ => None,
        })
    }

    /// The merged state read by ticket `t` at replica `i`, once done (`Some(None)`: read
    /// nothing; `None`: not done or failed).
    pub fn read_done(&self, i: usize, t: Ticket) -> Option<Option<KeyState>> {
        self.events.iter().find_map(|(_, at, e)| match e {
            Event::ReadDone { ticket, result: Ok(r) } if *at == i && *ticket == t => Some(r.state.clone()),
            _ => None,
        })
    }

    /// Cuts every link to and from `i`.
    pub fn isolate(&mut self, i: usize) {
        self.note(&format!("-- {} isolated", id(i)));
        for j in 0..self.nodes.len() {
            self.cut.insert((i, j));
            self.cut.insert((j, i));
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.note("-- network healed");
        self.cut.clear();
    }

    /// Crashes replica `i`: it keeps only its disk.
    pub fn crash(&mut self, i: usize) {
        self.note(&format!("-- {} crashes", id(i)));
        self.nodes[i] = None;
    }

    /// Restarts replica `i` from its disk.
    pub fn restart(&mut self, i: usize) {
        self.lives += 1;
        let rec = self.disks[i].recovered();
        self.note(&format!("-- {} restarts with {} entries, {} hints", id(i), rec.entries.len(), rec.hints.len()));
        let seed = 1_000 * self.lives + i as u64;
        self.nodes[i] = Replica::new(self.cfgs[i].clone(), rec, seed, self.now).ok();
        self.drain();
    }

    /// Crashes replica `i`, clears its disk and restarts it empty (a new life).
    pub fn wipe(&mut self, i: usize) {
        self.note(&format!("-- {} loses its disk", id(i)));
        self.nodes[i] = None;
        self.disks[i] = Disk::default();
        self.restart(i);
    }

    /// True if every running replica holds the same data.
    pub fn converged(&self) -> bool {
        let mut roots = self.nodes.iter().flatten().map(|r| r.digest());
        let first = roots.next();
        roots.all(|r| Some(r) == first)
    }
}

fn decode(bytes: &[u8]) -> Option<Message> {
    wire::decode::<Message>(bytes, CLUSTER, LIMIT).ok().map(|e| e.body)
}

fn part_label(part: u16) -> String {
    if part == 0 {
        String::new()
    } else {
        format!(" (part {})", part + 1)
    }
}

fn keys(states: &[(EntryId, KeyState)]) -> String {
    let ids: Vec<String> = states.iter().map(|(id, _)| format!("e{}", id.0)).collect();
    ids.join(",")
}

/// A transcript line for a message.
fn describe(from: usize, to: usize, m: &Message) -> Option<String> {
    let what = match m {
        Message::Write { req, part, origin, states } => {
            let o = match origin {
                Origin::Client => "write",
                Origin::Repair => "repair",
                Origin::Hint => "hinted write",
                Origin::Sync => "sync push",
            };
            let _ = req;
            format!("{o}{} [{}]", part_label(*part), keys(states))
        }
        Message::WriteAck { part, .. } => format!("ack{}", part_label(*part)),
        Message::Read { id, .. } => format!("read e{}", id.0),
        Message::ReadReply { id, state, .. } => {
            format!("read reply e{}: {}", id.0, state.as_ref().map_or("none".into(), |s| visible_line(&s.visible())))
        }
        Message::SyncTree { level, parents, .. } => format!("sync: tree level {level} under {parents:?}"),
        Message::SyncTreeReply { children, .. } => {
            if children.is_empty() {
                "sync: roots equal".into()
            } else {
                format!("sync: {} child hashes", children.len())
            }
        }
        Message::SyncKeys { leaves, .. } => format!("sync: list keys in leaves {leaves:?}"),
        Message::SyncKeysReply { keys, more, .. } => {
            format!("sync: {} keys{}", keys.len(), if *more { ", more" } else { "" })
        }
        Message::SyncPull { ids, .. } => {
            let ids: Vec<String> = ids.iter().map(|(id, _)| format!("e{}", id.0)).collect();
            format!("sync: pull [{}]", ids.join(","))
        }
        Message::SyncPullRange { first, end, .. } => format!("sync: pull leaves {first}..{end}"),
        Message::SyncStates { states, .. } => format!("sync: states [{}]", keys(states)),
    };
    Some(format!("{} -> {} {what}", id(from), id(to)))
}

/// How a visible value reads in a transcript.
pub fn visible_line(v: &Visible) -> String {
    let entry = |e: &Entry| format!("{:?}", e.vector);
    match v {
        Visible::Absent => "absent".into(),
        Visible::One(e) => entry(e),
        Visible::Siblings(s) => {
            let parts: Vec<String> = s.iter().map(|e| e.as_ref().map_or("deleted".into(), entry)).collect();
            format!("siblings {{{}}}", parts.join(" | "))
        }
    }
}

fn event_line(e: &Event) -> Option<String> {
    Some(match e {
        Event::WriteDone { ticket, acked, by } => {
            format!("write {} {} by {:?}", ticket.0, if *acked { "acknowledged" } else { "NOT acknowledged" }, by)
        }
        Event::ReadDone { ticket, result: Ok(r) } => format!(
            "read {} -> {} (from {:?}){}",
            ticket.0,
            r.state.as_ref().map_or("absent".into(), |s| visible_line(&s.visible())),
            r.from,
            if r.resolved.is_some() { ", resolved" } else { "" }
        ),
        Event::ReadDone { ticket, result: Err(e) } => format!("read {} failed: {e}", ticket.0),
        Event::SyncDone { peer, entries, complete, .. } => {
            if *entries == 0 && *complete {
                return None;
            }
            format!("synced with {peer}: {entries} entries{}", if *complete { "" } else { " (abandoned)" })
        }
        Event::StatusChanged { peer, status } => format!("sees {peer} {status:?}"),
    })
}

/// A small entry for tests.
pub fn entry(x: f32) -> Entry {
    Entry { vector: vec![x], metadata: Metadata::new() }
}

// ----- fuzz drivers -----

/// Decoding is total, and whatever decodes and passes the checks re-encodes canonically.
pub fn check_decode(data: &[u8]) {
    let limits = super::message::Limits { mode: ConflictMode::MultiValue, vector_len_max: 16, width_max: 64, depth: 2 };
    let mut framed = Vec::with_capacity(data.len() + 3);
    framed.extend_from_slice(&MAGIC);
    framed.push(PROTOCOL_VERSION);
    framed.extend_from_slice(data);
    for bytes in [data, &framed[..]] {
        let Ok(env) = message::decode(bytes, CLUSTER, LIMIT, &limits) else { continue };
        let again = message::encode(CLUSTER, env.from, &env.body, LIMIT).expect("a decoded message re-encodes");
        assert!(again.len() <= bytes.len(), "re-encoding grew from {} to {} bytes", bytes.len(), again.len());
        let back: Envelope<Message> = wire::decode(&again, CLUSTER, LIMIT).expect("a re-encoded message decodes");
        assert_eq!(back, env, "round trip changed the message");
    }
}

/// Drives three replicas through writes, reads, deletes, crashes, cut links and forged or
/// arbitrary datagrams decoded from `data`, then heals and lets anti-entropy run. Never
/// panics; invariants hold after every step; every datagram sent fits and decodes.
pub fn drive(data: &[u8]) {
    let Some((&first, mut rest)) = data.split_first() else { return };
    let mode = [ConflictMode::LastWriteWins, ConflictMode::MultiValue, ConflictMode::CrdtMap][usize::from(first % 3)];
    let mut net = Net::new(3, mode);
    net.quiet_sync = true;
    let levels = [Consistency::One, Consistency::Quorum, Consistency::All];
    let mut take = |n: usize| {
        let (a, b) = rest.split_at(n.min(rest.len()));
        rest = b;
        a.to_vec()
    };
    loop {
        let op = take(1);
        let Some(&op) = op.first() else { break };
        let arg = take(1).first().copied().unwrap_or(0);
        let i = usize::from(arg % 3);
        let key = u64::from(arg >> 4);
        let now = net.now;
        match op % 8 {
            0 | 1 => {
                if let Some(r) = net.nodes[i].as_mut() {
                    let o = if op % 8 == 0 { Op::Put(entry(f32::from(arg))) } else { Op::Delete };
                    let _ = r.write(now, EntryId(key), o, None, levels[usize::from(op >> 3) % 3]);
                }
            }
            2 => {
                if let Some(r) = net.nodes[i].as_mut() {
                    let _ = r.get(now, EntryId(key), levels[usize::from(op >> 3) % 3]);
                }
            }
            3 => net.run_for(Duration::from_millis(u64::from(arg) * 10)),
            4 => match net.nodes[i].is_some() {
                true => net.crash(i),
                false => net.restart(i),
            },
            5 => {
                let j = usize::from((arg >> 2) % 3);
                if !net.cut.remove(&(i, j)) {
                    net.cut.insert((i, j));
                }
            }
            _ => {
                // A datagram from replica `j`: arbitrary bytes (op 6) or behind a valid header
                // and sender (op 7).
                let len = usize::from(take(1).first().copied().unwrap_or(0));
                let body = take(len);
                let j = usize::from((arg >> 2) % 3);
                if let Some(r) = net.nodes[i].as_mut() {
                    if op % 8 == 6 {
                        let _ = r.handle_datagram(now, &body);
                    } else {
                        let mut framed = vec![MAGIC[0], MAGIC[1], PROTOCOL_VERSION];
                        framed.extend_from_slice(
                            &crate::wire::encode(CLUSTER, id(j), &(), LIMIT).unwrap_or_default()[3..],
                        );
                        // The envelope of `()` is the cluster and sender alone; the body follows.
                        framed.extend_from_slice(&body);
                        let _ = r.handle_datagram(now, &framed);
                    }
                }
            }
        }
        net.drain();
    }
    net.cut.clear();
    for i in 0..3 {
        if net.nodes[i].is_none() {
            net.restart(i);
        }
    }
    net.run_for(Duration::from_secs(20));
}
