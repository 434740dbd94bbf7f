//! Checks of the SWIM comparison harness (`benches/benches/swim.rs`), cheap enough for the
//! default suite: a bench that measured nothing, or miscounted, must fail here first.

#[allow(dead_code)]
#[path = "../benches/swim.rs"]
mod swim;

use swim::peer_foca::FocaMember;
use swim::{run, Out, Peer, QuorateMember, Scenario, SEC};

fn scenario(members: usize, loss: f64, secs: u64) -> Scenario {
    Scenario { members, loss, duration_ns: secs * SEC, seed: 7 }
}

#[test]
fn both_sides_join_and_detect_the_victim_at_ten_members() {
    let sc = scenario(10, 0.0, 90);
    for r in [run::<QuorateMember>(sc), run::<FocaMember>(sc)] {
        let full = r.full_view_ms.unwrap_or_else(|| panic!("{}: no full view", r.name));
        assert!(full < 10_000, "{}: full view after {full} ms", r.name);
        assert_eq!(r.detect_expected, 9, "{}: every other member saw the victim", r.name);
        assert_eq!(r.detect_missed(), 0, "{}: every observer declared it down", r.name);
        assert_eq!(r.false_positives, 0, "{}", r.name);
        assert_eq!(r.errors, 0, "{}", r.name);
        assert!(r.msgs_per_member_s() > 1.0, "{}: at least a probe and an ack per second", r.name);
    }
}

#[test]
fn same_seed_same_outcome_other_seed_other_trace() {
    let sc = scenario(10, 0.05, 60);
    let a = run::<QuorateMember>(sc);
    assert!(a.same_outcome(&run::<QuorateMember>(sc)));
    assert_ne!(a.trace, run::<QuorateMember>(Scenario { seed: 8, ..sc }).trace);
    let f = run::<FocaMember>(sc);
    assert!(f.same_outcome(&run::<FocaMember>(sc)));
}

#[test]
fn loss_costs_retransmissions() {
    let clean = run::<QuorateMember>(scenario(10, 0.0, 60));
    let lossy = run::<QuorateMember>(scenario(10, 0.3, 60));
    assert!(lossy.packets > clean.packets, "{} vs {}", lossy.packets, clean.packets);
}

/// Wraps a peer and drops every declaration it makes (`BLIND`), or declares the next member
/// down once, right after its first input (a liar).
struct Planted<P, const BLIND: bool> {
    inner: P,
    next: usize,
    lied: bool,
}

impl<P: Peer, const BLIND: bool> Planted<P, BLIND> {
    fn plant(&mut self, out: &mut Out<P::Timer>) {
        if BLIND {
            out.downs.clear();
        } else if !self.lied {
            self.lied = true;
            out.downs.push(self.next);
        }
    }
}

impl<P: Peer, const BLIND: bool> Peer for Planted<P, BLIND> {
    type Timer = P::Timer;
    const NAME: &'static str = "planted";

    fn start(idx: usize, n: usize, seed: u64, now: u64, out: &mut Out<P::Timer>) -> Self {
        Planted { inner: P::start(idx, n, seed, now, out), next: (idx + 1) % n, lied: false }
    }

    fn handle_packet(&mut self, now: u64, from: usize, bytes: &[u8], out: &mut Out<P::Timer>) -> bool {
        let ok = self.inner.handle_packet(now, from, bytes, out);
        self.plant(out);
        ok
    }

    fn handle_timer(&mut self, now: u64, timer: P::Timer, out: &mut Out<P::Timer>) -> Option<bool> {
        let ok = self.inner.handle_timer(now, timer, out);
        self.plant(out);
        ok
    }

    fn live_members(&self) -> usize {
        self.inner.live_members()
    }

    fn sees_alive(&self, idx: usize) -> bool {
        self.inner.sees_alive(idx)
    }
}

#[test]
fn a_peer_that_never_declares_down_is_reported_as_missing_every_detection() {
    for r in [
        run::<Planted<QuorateMember, true>>(scenario(10, 0.0, 60)),
        run::<Planted<FocaMember, true>>(scenario(10, 0.0, 60)),
    ] {
        assert_eq!(r.detect_expected, 9);
        assert_eq!(r.detect_missed(), 9);
        assert!(r.detect_quantile(0.5).is_none());
    }
}

#[test]
fn a_peer_that_declares_a_live_member_down_is_counted_as_a_false_positive() {
    // Every member lies once, early, about the next one: ten declarations about ten members.
    let r = run::<Planted<QuorateMember, false>>(scenario(10, 0.0, 60));
    assert_eq!(r.false_positives, 10);
    assert_eq!(r.false_positive_members, 10);
}

/// The accuracy target, on the bench's network: none of 100 members is declared down
/// while running, over 10 virtual minutes with 20% loss (about a second of CPU in release).
#[test]
fn quorate_has_no_false_positives_at_100_members_and_20_percent_loss() {
    let r = run::<QuorateMember>(scenario(100, 0.2, 600));
    assert_eq!(r.false_positives, 0);
    assert_eq!(r.detect_missed(), 0);
    assert!(r.full_view_ms.is_some_and(|ms| ms < 30_000), "{:?}", r.full_view_ms);
}
