//! foca (`foca` 2.x) side of the SWIM comparison benchmark.
//!
//! Each member is one `Foca` with `Config::new_lan(n)` unchanged, foca's own
//! `PostcardCodec`, and a `rand` `SmallRng` seeded per member (foca's own tests use the
//! same generator; Quorate uses ChaCha8, which is slower, so this choice does not favour
//! Quorate). The host:
//!
//! - turns `Runtime::send_to` into a datagram for the harness (copied once, as Quorate's
//!   packets are allocated once) and `Runtime::submit_after` into a virtual-time timer;
//! - joins by `announce` to member 0, retried while foca knows no member, after 500 ms
//!   doubling to 30 s, the same schedule as Quorate's `join_retry_min`/`join_retry_max`
//!   (foca sends one announce per call and leaves retries to its host); it joins again the
//!   same way if foca reports `Idle`;
//! - reports `Notification::MemberDown` as a declaration.
//!
//! The identity is an IPv4 address and port, as Quorate's members carry, plus a 16-bit
//! generation so a member declared down renews itself (`Identity::renew`) and rejoins at
//! once, as Quorate's members do; the higher generation wins an address conflict.

use std::num::NonZeroU32;
use std::time::Duration;

use foca::{Config, Foca, Identity, NoCustomBroadcast, Notification, PostcardCodec, Runtime, Timer};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::{Out, Peer, MS, PORT, SEC};

/// First delay between join attempts (Quorate's `join_retry_min`).
const JOIN_RETRY_MIN_NS: u64 = 500 * MS;
/// Longest delay between join attempts (Quorate's `join_retry_max`).
const JOIN_RETRY_MAX_NS: u64 = 30 * SEC;

/// A foca member's identity: where it listens, and which life this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FocaId {
    /// IPv4 address, as made by the harness (10.x.y.z).
    ip: [u8; 4],
    /// SWIM port.
    port: u16,
    /// Bumped on every renewal.
    gen: u16,
}

impl FocaId {
    /// Member `idx`'s first identity.
    fn of(idx: usize) -> FocaId {
        FocaId { ip: [10, (idx >> 16) as u8, (idx >> 8) as u8, idx as u8], port: PORT, gen: 0 }
    }

    /// The member index behind this identity.
    fn index(&self) -> usize {
        let [_, x, y, z] = self.ip;
        usize::from(x) << 16 | usize::from(y) << 8 | usize::from(z)
    }
}

impl Identity for FocaId {
    type Addr = ([u8; 4], u16);

    fn renew(&self) -> Option<Self> {
        Some(FocaId { gen: self.gen.wrapping_add(1), ..*self })
    }

    fn addr(&self) -> Self::Addr {
        (self.ip, self.port)
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.gen > adversary.gen
    }
}

/// What foca's timers and the host's join retries hand back.
pub enum FocaTimer {
    /// One of foca's own timers.
    Foca(Timer<FocaId>),
    /// Time to announce to member 0 again, if still alone.
    Announce,
}

/// The host side of one step: collects foca's output into the harness's buffer.
struct Host<'a> {
    now: u64,
    out: &'a mut Out<FocaTimer>,
    idle: bool,
}

impl Runtime<FocaId> for Host<'_> {
    fn notify(&mut self, notification: Notification<'_, FocaId>) {
        match notification {
            Notification::MemberDown(id) => self.out.downs.push(id.index()),
            Notification::Idle => self.idle = true,
            _ => {}
        }
    }

    fn send_to(&mut self, to: FocaId, data: &[u8]) {
        self.out.sends.push((to.index(), data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<FocaId>, after: Duration) {
        self.out.timers.push((self.now + after.as_nanos() as u64, FocaTimer::Foca(event)));
    }
}

/// One foca member plus its host's join state.
pub struct FocaMember {
    foca: Foca<FocaId, PostcardCodec, SmallRng, NoCustomBroadcast>,
    idx: usize,
    /// Delay before the next join attempt; `None` while not joining.
    join_backoff_ns: Option<u64>,
}

impl FocaMember {
    /// Announces to member 0 and schedules the next attempt.
    fn announce(&mut self, now: u64, out: &mut Out<FocaTimer>) -> bool {
        let backoff = self.join_backoff_ns.unwrap_or(JOIN_RETRY_MIN_NS);
        let mut host = Host { now, out, idle: false };
        let ok = self.foca.announce(FocaId::of(0), &mut host).is_ok();
        out.timers.push((now + backoff, FocaTimer::Announce));
        self.join_backoff_ns = Some((backoff * 2).min(JOIN_RETRY_MAX_NS));
        ok
    }

    /// Starts joining again if foca lost every member.
    fn after(&mut self, now: u64, idle: bool, out: &mut Out<FocaTimer>) {
        if idle && self.idx != 0 && self.join_backoff_ns.is_none() {
            self.announce(now, out);
        }
    }
}

impl Peer for FocaMember {
    type Timer = FocaTimer;
    const NAME: &'static str = "foca";

    fn start(idx: usize, n: usize, seed: u64, now: u64, out: &mut Out<FocaTimer>) -> Self {
        let size = NonZeroU32::new(n as u32).expect("clusters have members");
        let foca = Foca::new(FocaId::of(idx), Config::new_lan(size), SmallRng::seed_from_u64(seed), PostcardCodec);
        let mut m = FocaMember { foca, idx, join_backoff_ns: None };
        if idx != 0 {
            m.announce(now, out);
        }
        m
    }

    fn handle_packet(&mut self, now: u64, _from: usize, bytes: &[u8], out: &mut Out<FocaTimer>) -> bool {
        let mut host = Host { now, out, idle: false };
        let ok = self.foca.handle_data(bytes, &mut host).is_ok();
        let idle = host.idle;
        self.after(now, idle, out);
        ok
    }

    fn handle_timer(&mut self, now: u64, timer: FocaTimer, out: &mut Out<FocaTimer>) -> Option<bool> {
        match timer {
            FocaTimer::Foca(t) => {
                let mut host = Host { now, out, idle: false };
                let ok = self.foca.handle_timer(t, &mut host).is_ok();
                let idle = host.idle;
                self.after(now, idle, out);
                Some(ok)
            }
            FocaTimer::Announce if self.foca.num_members() > 0 => {
                self.join_backoff_ns = None;
                None
            }
            FocaTimer::Announce => Some(self.announce(now, out)),
        }
    }

    fn live_members(&self) -> usize {
        self.foca.num_members() + 1
    }

    fn sees_alive(&self, idx: usize) -> bool {
        self.foca.iter_members().any(|m| m.id().index() == idx)
    }
}
