//! Test helpers (feature `testkit`): a zero-latency network of members that records a readable
//! transcript, and the drivers the fuzz targets share with their smoke tests.

use alloc::collections::{BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::net::SocketAddr;
use core::time::Duration;

use super::{Action, Addr, Body, Config, Digest, Event, Packet, State, Swim, Update};
use crate::machine::Machine;
use crate::wire::{self, Envelope, MAGIC, PROTOCOL_VERSION};
use crate::{Instant, NodeId};

/// The cluster id the helpers use.
pub const CLUSTER: u64 = 0x5357_0001;
/// The packet limit the drivers use.
pub const LIMIT: usize = 1400;

/// Decoding is total, and whatever decodes re-encodes canonically to the same packet.
pub fn check_decode(data: &[u8]) {
    check_one(data);
    let mut framed = Vec::with_capacity(data.len() + 3);
    framed.extend_from_slice(&MAGIC);
    framed.push(PROTOCOL_VERSION);
    framed.extend_from_slice(data);
    check_one(&framed);
}

fn check_one(bytes: &[u8]) {
    let decoded = wire::decode::<Packet>(bytes, CLUSTER, LIMIT);
    assert_eq!(super::message::decode_packet(bytes, CLUSTER, LIMIT), decoded, "the hand-written decoder disagrees");
    let Ok(env) = decoded else { return };
    let again = wire::encode(CLUSTER, env.from, &env.body, LIMIT).expect("a decoded packet re-encodes");
    assert!(again.len() <= bytes.len(), "re-encoding grew from {} to {} bytes", bytes.len(), again.len());
    let back: Envelope<Packet> = wire::decode(&again, CLUSTER, LIMIT).expect("a re-encoded packet decodes");
    assert_eq!(back, env, "round trip changed the packet");
}

fn fuzz_addr(i: u8) -> Addr {
    Addr::v4(10, 1, 0, i, 7946)
}

/// Member `i`'s address in a [`Net`].
pub fn addr(i: usize) -> Addr {
    Addr::v4(10, 0, (i >> 8) as u8, i as u8, 7946)
}

/// Member `i`'s id in a [`Net`] (`i + 1`, since 0 is reserved).
pub fn id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

/// LAN settings for member `i`, joining through member 0.
pub fn config(i: usize) -> Config {
    let mut c = Config::lan(id(i), CLUSTER, addr(i));
    if i != 0 {
        c.seeds = vec![addr(0)];
    }
    c
}

/// A zero-latency network of members with cut links, crashed and paused members, recording
/// every packet, every event, and a transcript of what matters to a reader.
pub struct Net {
    /// Members by index; `None` once crashed.
    pub nodes: Vec<Option<Swim>>,
    /// Virtual time.
    pub now: Instant,
    /// Links cut, as `(from, to)`.
    pub cut: BTreeSet<(usize, usize)>,
    /// Every event, with when and where.
    pub events: Vec<(Instant, usize, Event)>,
    /// Every packet sent, decoded.
    pub sent: Vec<(usize, usize, Packet)>,
    /// Faults, membership events and non-routine packets, one per line.
    pub transcript: String,
    queue: VecDeque<(usize, usize, Vec<u8>)>,
    paused: BTreeSet<usize>,
    backlog: Vec<(usize, usize, Vec<u8>)>,
}

impl Net {
    /// `n` members with [`config`], started at time zero.
    pub fn new(n: usize) -> Net {
        Net::with(n, config)
    }

    /// `n` members with settings from `cfg`.
    pub fn with(n: usize, cfg: impl Fn(usize) -> Config) -> Net {
        let nodes = (0..n).map(|i| Swim::new(cfg(i), 1, i as u64 + 100, Instant::ZERO).ok()).collect();
        let mut net = Net {
            nodes,
            now: Instant::ZERO,
            cut: BTreeSet::new(),
            events: Vec::new(),
            sent: Vec::new(),
            transcript: String::new(),
            queue: VecDeque::new(),
            paused: BTreeSet::new(),
            backlog: Vec::new(),
        };
        net.drain();
        net
    }

    /// Runs until every member sees all `n` (panics after 60 s), then clears the records.
    pub fn converged(n: usize) -> Net {
        let mut net = Net::new(n);
        net.run_for(Duration::from_secs(20));
        for i in 0..n {
            assert_eq!(net.node(i).live_members(), n, "member {i} sees {}", net.node(i).live_members());
        }
        net.events.clear();
        net.sent.clear();
        net.transcript.clear();
        net
    }

    /// Member `i` (panics if crashed).
    pub fn node(&self, i: usize) -> &Swim {
        self.nodes[i].as_ref().expect("member is running")
    }

    /// Member `i`, mutably (panics if crashed).
    pub fn node_mut(&mut self, i: usize) -> &mut Swim {
        self.nodes[i].as_mut().expect("member is running")
    }

    /// Adds a line to the transcript, stamped with the time.
    pub fn note(&mut self, what: &str) {
        let ms = self.now.as_nanos() / 1_000_000;
        let _ = writeln!(self.transcript, "{:>6}.{:03}s {what}", ms / 1000, ms % 1000);
    }

    fn index_of(a: Addr) -> usize {
        match a.0 {
            SocketAddr::V4(v4) => {
                let o = v4.ip().octets();
                usize::from(o[2]) << 8 | usize::from(o[3])
            }
            SocketAddr::V6(_) => usize::MAX,
        }
    }

    /// Carries out every pending action of every member.
    pub fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(s) = self.nodes[i].as_mut() else { continue };
            s.check_invariants();
            let mut actions = Vec::new();
            while let Some(a) = s.poll_action() {
                actions.push(a);
            }
            for a in actions {
                match a {
                    Action::Send { to, packet } => {
                        assert!(packet.len() <= LIMIT, "packet of {} bytes", packet.len());
                        let j = Net::index_of(to);
                        let p = wire::decode::<Packet>(&packet, CLUSTER, LIMIT).expect("sent packets decode").body;
                        if let Some(line) = describe(i, j, &p) {
                            self.note(&line);
                        }
                        self.sent.push((i, j, p));
                        self.queue.push_back((i, j, packet));
                    }
                    Action::Event(e) => {
                        let line = format!("{}: {}", id(i), event_line(&e));
                        self.note(&line);
                        self.events.push((self.now, i, e));
                    }
                }
            }
        }
    }

    /// Delivers every packet in flight (and those they cause), dropping cut ones and holding
    /// those for paused members.
    pub fn deliver_all(&mut self) {
        while let Some((from, to, bytes)) = self.queue.pop_front() {
            if self.cut.contains(&(from, to)) {
                continue;
            }
            if self.paused.contains(&to) {
                self.backlog.push((from, to, bytes));
                continue;
            }
            let now = self.now;
            if let Some(s) = self.nodes.get_mut(to).and_then(Option::as_mut) {
                s.handle_packet(now, addr(from), &bytes).expect("members send well-formed packets");
            }
            self.drain();
        }
    }

    /// Runs timers and deliveries for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now.saturating_add(d);
        loop {
            self.deliver_all();
            let paused = &self.paused;
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !paused.contains(i))
                .filter_map(|(_, s)| s.as_ref().and_then(Swim::poll_timeout))
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for (i, s) in self.nodes.iter_mut().enumerate() {
                        let Some(s) = s.as_mut().filter(|_| !self.paused.contains(&i)) else { continue };
                        if s.poll_timeout().is_some_and(|t| t <= now) {
                            s.handle_timeout(now);
                        }
                    }
                    self.drain();
                }
                _ => break,
            }
        }
        self.now = end;
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

    /// Crashes member `i`: it loses everything.
    pub fn crash(&mut self, i: usize) {
        self.note(&format!("-- {} crashes", id(i)));
        self.nodes[i] = None;
    }

    /// Restarts member `i` at generation `gen` with the settings of [`config`].
    pub fn restart(&mut self, i: usize, gen: u64) {
        self.note(&format!("-- {} restarts at generation {gen}", id(i)));
        self.nodes[i] = Swim::new(config(i), gen, 1000 + i as u64, self.now).ok();
        self.drain();
    }

    /// Stops member `i` from processing anything (CPU starvation); packets to it wait.
    pub fn pause(&mut self, i: usize) {
        self.note(&format!("-- {} stalls", id(i)));
        self.paused.insert(i);
    }

    /// Lets member `i` run again: it reads what waited, then its overdue timers fire.
    pub fn resume(&mut self, i: usize) {
        self.note(&format!("-- {} resumes", id(i)));
        self.paused.remove(&i);
        let (mine, rest): (Vec<_>, Vec<_>) =
            core::mem::take(&mut self.backlog).into_iter().partition(|(_, to, _)| *to == i);
        self.backlog = rest;
        for m in mine {
            self.queue.push_front(m);
        }
        self.deliver_all();
        let now = self.now;
        if let Some(s) = self.nodes[i].as_mut() {
            s.handle_timeout(now);
        }
        self.drain();
    }

    /// What `observer` believes about `of`.
    pub fn state(&self, observer: usize, of: usize) -> Option<State> {
        self.node(observer).member(id(of)).map(|m| m.version.state)
    }

    /// True if every running member other than `of` holds it in `state`.
    pub fn all_see(&self, of: usize, state: State) -> bool {
        (0..self.nodes.len()).filter(|&o| o != of && self.nodes[o].is_some()).all(|o| self.state(o, of) == Some(state))
    }
}

/// A transcript line for packets a reader cares about; routine pings and acks without news
/// are left out.
fn describe(from: usize, to: usize, p: &Packet) -> Option<String> {
    let news: Vec<String> = p.gossip.iter().map(update_line).collect();
    let news = if news.is_empty() { String::new() } else { format!(" [{}]", news.join(", ")) };
    let what = match &p.body {
        Body::Ping { .. } if news.is_empty() => return None,
        Body::Ack { .. } if news.is_empty() => return None,
        Body::Ping { .. } => "ping".into(),
        Body::Ack { .. } => "ack".into(),
        Body::PingReq { target, .. } => format!("ping-req for {target}"),
        Body::Nack { .. } => "nack".into(),
        Body::PushPull { reply, join, part, parts, members, buckets, .. } => format!(
            "{}{} {}/{} ({} members{})",
            if *join { "join " } else { "" },
            if *reply { "state-reply" } else { "state" },
            part + 1,
            parts,
            members.len(),
            if *buckets == u64::MAX { String::new() } else { format!(" of {} buckets", buckets.count_ones()) }
        ),
        Body::Summary { .. } => "summary".into(),
        Body::Gossip => "gossip".into(),
    };
    Some(format!("{} -> {} {what}{news}", id(from), id(to)))
}

fn update_line(u: &Update) -> String {
    let v = u.version();
    let st = match v.state {
        State::Alive => "alive",
        State::Suspect => "suspect",
        State::Down => "down",
        State::Left => "left",
    };
    format!("{} {st} g{}/i{}", u.id(), v.gen, v.inc)
}

fn event_line(e: &Event) -> String {
    match e {
        Event::Up(m) => format!("{} up (g{}/i{})", m.id, m.version.gen, m.version.inc),
        Event::Suspect(id) => format!("suspects {id}"),
        Event::Alive(id) => format!("{id} refuted, alive"),
        Event::Down(id) => format!("declares {id} down"),
        Event::Left(id) => format!("sees {id} left"),
        Event::Updated(m) => format!("{} updated its metadata", m.id),
        Event::Forgotten(id) => format!("forgets {id}"),
        Event::Health(h) => format!("health score {h}"),
        Event::Renewed { gen } => format!("renews its identity: generation {gen}"),
        Event::Joined => "joined".into(),
        Event::LeaveDone => "leave done".into(),
    }
}

/// Feeds a member a few real members, then an arbitrary sequence of datagrams and timer
/// firings decoded from `data`. Never panics; invariants hold after every step; every packet
/// it sends fits the limit and decodes.
pub fn drive(data: &[u8]) {
    let mut cfg = Config::lan(NodeId(1), CLUSTER, fuzz_addr(1));
    cfg.seeds = vec![fuzz_addr(2)];
    let Ok(mut s) = Swim::new(cfg, 1, 7, Instant::ZERO) else { return };
    let mut now = Instant::ZERO;
    // Three real members, so probes, indirect probes and push-pulls have someone to go to.
    for i in 2..5u8 {
        let u =
            Update::Alive { id: NodeId(u64::from(i)), gen: 1, inc: 0, addr: fuzz_addr(i), meta: Default::default() };
        let p = Packet { gen: 1, digest: Digest::default(), body: Body::Gossip, gossip: vec![u] };
        if let Ok(bytes) = wire::encode(CLUSTER, NodeId(u64::from(i)), &p, LIMIT) {
            let _ = s.handle_packet(now, fuzz_addr(i), &bytes);
        }
    }
    drain(&mut s);
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 4 {
            0 => {
                let step = rest.first().copied().unwrap_or(1);
                rest = rest.get(1..).unwrap_or(&[]);
                now = now.saturating_add(Duration::from_millis(u64::from(step) * 20));
                s.handle_timeout(now);
            }
            1 => {
                if let Some(t) = s.poll_timeout() {
                    now = now.max(t);
                    s.handle_timeout(now);
                }
            }
            _ => {
                // A datagram: raw (op 2) or behind a valid header (op 3), from a known address.
                let len = usize::from(rest.first().copied().unwrap_or(0)).min(rest.len().saturating_sub(1));
                let body = rest.get(1..1 + len).unwrap_or(&[]);
                rest = rest.get(1 + len..).unwrap_or(&[]);
                let from = fuzz_addr(2 + op % 3);
                if op % 4 == 2 {
                    let _ = s.handle_packet(now, from, body);
                } else {
                    let mut framed = vec![MAGIC[0], MAGIC[1], PROTOCOL_VERSION];
                    framed.extend_from_slice(body);
                    let _ = s.handle_packet(now, from, &framed);
                }
            }
        }
        s.check_invariants();
        drain(&mut s);
    }
}

fn drain(s: &mut Swim) {
    while let Some(a) = s.poll_action() {
        if let Action::Send { packet, .. } = a {
            assert!(packet.len() <= LIMIT, "sent a {}-byte packet", packet.len());
            assert!(wire::decode::<Packet>(&packet, CLUSTER, LIMIT).is_ok(), "sent a packet that does not decode");
        }
    }
}
