//! One test per rule of the SWIM paper (Das, Gupta, Motivala 2002, section 4) and of Lifeguard
//! (Dadgar, Phillips, Currey 2018, section 4), plus the edge cases of this implementation.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};
use core::net::SocketAddr;
use core::time::Duration;
use proptest::prelude::*;

use super::*;

use super::testkit::{addr, config, id, Net, CLUSTER};

// ----- SWIM, section 4 -----

#[test]
fn swim_4_1_a_probe_is_answered_by_an_ack_and_keeps_the_member_alive() {
    let mut net = Net::converged(3);
    net.run_for(Duration::from_secs(10));
    let pings = net.sent.iter().filter(|(_, _, p)| matches!(p.body, Body::Ping { .. })).count();
    let acks = net.sent.iter().filter(|(_, _, p)| matches!(p.body, Body::Ack { .. })).count();
    assert!(pings >= 25, "three members probing once a second for 10 s sent {pings} pings");
    assert_eq!(pings, acks, "every ping is acked on a perfect network");
    assert!(net.events.iter().all(|(_, _, e)| !matches!(e, Event::Suspect(_) | Event::Down(_))));
}

#[test]
fn swim_4_1_an_unanswered_probe_goes_indirect_through_k_members() {
    let mut net = Net::converged(5);
    // 0 cannot reach 1 directly, but others can.
    net.cut.insert((0, 1));
    net.cut.insert((1, 0));
    net.run_for(Duration::from_secs(30));
    let reqs: Vec<_> = net
        .sent
        .iter()
        .filter(|(f, _, p)| *f == 0 && matches!(p.body, Body::PingReq { target, .. } if target == id(1)))
        .collect();
    assert!(!reqs.is_empty(), "0 asked others to probe 1");
    assert!(reqs.len() % 3 == 0, "k = 3 indirect probes per failed round, got {}", reqs.len());
    assert!(reqs.iter().all(|(_, to, _)| *to != 1));
    assert!(net.all_see(1, State::Alive), "indirect acks keep 1 alive");
}

#[test]
fn swim_4_2_a_crashed_member_is_suspected_then_declared_down_everywhere() {
    let mut net = Net::converged(5);
    net.nodes[4] = None;
    net.run_for(Duration::from_secs(60));
    assert!(net.events.iter().any(|(_, _, e)| *e == Event::Suspect(id(4))));
    assert!(net.all_see(4, State::Down));
    for i in 0..4 {
        assert_eq!(net.node(i).live_members(), 4);
    }
}

#[test]
fn swim_4_2_a_suspected_member_refutes_with_a_higher_incarnation() {
    let mut net = Net::converged(4);
    let inc = net.node(3).me().version.inc;
    // Cut 3 off just long enough to be suspected, not declared down.
    net.isolate(3);
    net.run_for(Duration::from_secs(4));
    assert!(net.events.iter().any(|(_, _, e)| *e == Event::Suspect(id(3))));
    net.cut.clear();
    net.run_for(Duration::from_secs(10));
    assert!(net.node(3).me().version.inc > inc, "3 bumped its incarnation to refute");
    assert!(net.node(3).stats().refutations >= 1);
    assert!(net.all_see(3, State::Alive));
    assert!(net.events.iter().any(|(_, _, e)| *e == Event::Alive(id(3))));
    assert!(!net.events.iter().any(|(_, _, e)| *e == Event::Down(id(3))));
}

#[test]
fn swim_4_3_probe_targets_follow_a_shuffled_round_robin() {
    let mut net = Net::converged(6);
    net.run_for(Duration::from_secs(25));
    let targets: Vec<NodeId> = net
        .sent
        .iter()
        .filter(|(f, _, _)| *f == 0)
        .filter_map(|(_, _, p)| match p.body {
            Body::Ping { target, .. } => Some(target),
            _ => None,
        })
        .collect();
    // Every window of 5 consecutive rounds probes each of the 5 others once.
    let rounds: Vec<&[NodeId]> = targets.chunks(5).filter(|c| c.len() == 5).collect();
    assert!(rounds.len() >= 3);
    for r in &rounds {
        let set: BTreeSet<_> = r.iter().collect();
        assert_eq!(set.len(), 5, "a round probes everyone once: {r:?}");
    }
    assert!(rounds.windows(2).any(|w| w[0] != w[1]), "rounds are reshuffled");
}

#[test]
fn swim_4_4_updates_piggyback_and_retire_after_lambda_log_n_sends() {
    let mut net = Net::converged(8);
    net.node_mut(2).set_meta(Instant::ZERO, Meta { zone: "b".into(), ..Meta::default() }).unwrap();
    net.drain();
    net.run_for(Duration::from_secs(10));
    let carried = net
        .sent
        .iter()
        .filter(|(f, _, p)| *f == 2 && p.gossip.iter().any(|u| matches!(u, Update::Alive { id: i, .. } if *i == id(2))))
        .count();
    // λ = 4, ⌈log10(8 + 1)⌉ = 1: sent 4 times by its origin, then retired.
    assert_eq!(carried, 4);
    assert_eq!(net.node(2).pending_gossip(), 0);
    for o in 0..8 {
        if o != 2 {
            assert_eq!(net.node(o).member(id(2)).unwrap().meta.zone, "b", "{o} learned the new metadata");
        }
    }
    assert!(net.events.iter().any(|(_, _, e)| matches!(e, Event::Updated(m) if m.id == id(2))));
}

// ----- Lifeguard, section 4 -----

#[test]
fn lifeguard_local_health_rises_when_own_probes_fail_without_nacks_and_recovers() {
    let mut net = Net::converged(5);
    // 0 hears nothing: its probes fail and no nacks come back.
    for j in 1..5 {
        net.cut.insert((j, 0));
    }
    net.run_for(Duration::from_secs(8));
    let h = net.node(0).health();
    assert!(h >= 3, "health score rose to {h}");
    assert!(net.events.iter().any(|(_, i, e)| *i == 0 && matches!(e, Event::Health(_))));
    // The probe interval stretches with the score: fewer probes per second.
    let before = net.node(0).stats().probes;
    net.run_for(Duration::from_secs(10));
    let slow = net.node(0).stats().probes - before;
    assert!(slow <= 10 / (h as u64 + 1) + 2, "{slow} probes in 10 s at health {h}");
    net.cut.clear();
    net.run_for(Duration::from_secs(90));
    assert_eq!(net.node(0).health(), 0, "answered probes bring the score back to 0");
}

#[test]
fn lifeguard_suspicion_timeout_starts_long_and_shrinks_with_confirmations() {
    let net = Net::converged(10);
    let s = net.node(0);
    let (min, max, k) = s.suspicion_bounds();
    assert_eq!(k, 2);
    assert_eq!(min as u64, 4_000_000_000, "max(4, 3 · log10(10)) · 1 s: the floor");
    assert_eq!(max as u64, 32_000_000_000);
    assert_eq!(s.suspicion_timeout(0), Duration::from_secs(32));
    let one = s.suspicion_timeout(1);
    assert!(one < Duration::from_secs(32) && one > Duration::from_secs(4), "{one:?}");
    assert_eq!(s.suspicion_timeout(2), Duration::from_secs(4));
    assert_eq!(s.suspicion_timeout(5), Duration::from_secs(4), "never below min");
}

#[test]
fn lifeguard_confirmed_timeout_grows_with_log_n_above_its_floor() {
    let c = config(0);
    let secs = |live| {
        let (min, max, k) = c.suspicion_bounds(live);
        (min.as_millis(), max.as_millis(), k)
    };
    assert_eq!(secs(3), (4_000, 32_000, 0), "too few members to confirm anything");
    assert_eq!(secs(10), (4_000, 32_000, 2));
    assert_eq!(secs(100), (6_000, 48_000, 2), "3 · log10(100)");
    assert_eq!(secs(1000), (9_000, 72_000, 2), "3 · log10(1000)");
}

#[test]
fn lifeguard_confirmations_expected_are_a_setting_of_their_own() {
    let mut net = Net::with(10, |i| {
        let mut c = config(i);
        c.suspicion_confirmations = 4;
        c
    });
    net.run_for(Duration::from_secs(20));
    let s = net.node(0);
    assert_eq!(s.live_members(), 10);
    let (_, _, k) = s.suspicion_bounds();
    assert_eq!(k, 4);
    assert!(s.suspicion_timeout(2) > s.suspicion_timeout(4), "two of four confirmations do not reach min");
    assert_eq!(s.suspicion_timeout(4), Duration::from_secs(4));
}

#[test]
fn lifeguard_independent_suspecters_shorten_the_timer() {
    let mut net = Net::converged(10);
    net.nodes[9] = None;
    net.run_for(Duration::from_secs(60));
    let suspected = net.events.iter().find(|(_, _, e)| *e == Event::Suspect(id(9))).map(|(t, _, _)| *t).unwrap();
    let down = net.events.iter().find(|(_, _, e)| *e == Event::Down(id(9))).map(|(t, _, _)| *t).unwrap();
    let took = down.saturating_duration_since(suspected);
    assert!(took < Duration::from_secs(32), "confirmations cut the 32 s timer, took {took:?}");
}

#[test]
fn lifeguard_buddy_system_tells_the_suspect_first() {
    let mut net = Net::converged(4);
    net.isolate(3);
    net.run_for(Duration::from_secs(4));
    net.sent.clear();
    net.cut.clear();
    net.run_for(Duration::from_secs(3));
    let to_suspect: Vec<_> = net
        .sent
        .iter()
        .filter(|(_, to, p)| *to == 3 && matches!(p.body, Body::Ping { .. }) && !p.gossip.is_empty())
        .collect();
    assert!(!to_suspect.is_empty());
    let first = &to_suspect[0].2.gossip[0];
    assert!(matches!(first, Update::Suspect { id: i, .. } if *i == id(3)), "first update: {first:?}");
}

#[test]
fn lifeguard_indirect_probers_nack_when_the_target_is_silent() {
    let mut net = Net::converged(4);
    net.nodes[3] = None;
    net.run_for(Duration::from_secs(10));
    let nacks = net.sent.iter().filter(|(_, _, p)| matches!(p.body, Body::Nack { .. })).count();
    assert!(nacks > 0, "helpers reported that the target did not answer");
    assert_eq!(net.node(0).health(), 0, "nacks show the prober it is healthy");
}

#[test]
fn a_second_indirect_wave_asks_other_helpers_while_no_ack_has_come() {
    let waves = |w: u32| {
        let mut net = Net::with(10, |i| Config { indirect_waves: w, ..config(i) });
        net.run_for(Duration::from_secs(20));
        net.sent.clear();
        net.nodes[9] = None;
        net.run_for(Duration::from_secs(12));
        let mut rounds: BTreeMap<(usize, u32), Vec<usize>> = BTreeMap::new();
        for (f, to, p) in &net.sent {
            if let Body::PingReq { seq, target, .. } = p.body {
                if target == id(9) {
                    rounds.entry((*f, seq)).or_default().push(*to);
                }
            }
        }
        assert!(rounds.len() >= 3, "members probed the crashed one: {rounds:?}");
        rounds
    };
    for helpers in waves(1).values() {
        assert_eq!(helpers.len(), 3, "one wave of k = 3");
    }
    // A round may end before its second wave is due (the target declared down meanwhile, by
    // other members' suspicions), so some rounds have one wave; most must have two.
    let two = waves(2);
    let mut full = 0;
    for helpers in two.values() {
        let distinct: BTreeSet<_> = helpers.iter().collect();
        assert_eq!(distinct.len(), helpers.len(), "no helper asked twice in a round: {helpers:?}");
        assert!(helpers.len() == 3 || helpers.len() == 6, "waves of k = 3: {helpers:?}");
        full += usize::from(helpers.len() == 6);
    }
    assert!(2 * full >= two.len(), "most rounds had a second wave: {two:?}");
}

/// Feeds `s` one gossip packet from member 9 and returns what it sends back to 9.
fn feed_from_9(s: &mut Swim, u: Update) -> Vec<Packet> {
    while s.poll_action().is_some() {}
    let p = Packet { gen: 1, digest: Digest::default(), body: Body::Gossip, gossip: vec![u] };
    let bytes = crate::wire::encode(CLUSTER, id(9), &p, 1400).unwrap();
    s.handle_packet(Instant::ZERO, addr(9), &bytes).unwrap();
    let mut back = Vec::new();
    while let Some(a) = s.poll_action() {
        if let Action::Send { to, packet } = a {
            if to == addr(9) {
                back.push(crate::wire::decode::<Packet>(&packet, CLUSTER, 1400).unwrap().body);
            }
        }
    }
    back
}

#[test]
fn a_stale_suspicion_is_answered_with_the_refutation_this_member_holds() {
    let mut s = Swim::new(Config::lan(id(0), CLUSTER, addr(0)), 1, 1, Instant::ZERO).unwrap();
    let alive = |i, inc| Update::Alive { id: id(i), gen: 1, inc, addr: addr(i), meta: SharedMeta::default() };
    feed_from_9(&mut s, alive(9, 0));
    feed_from_9(&mut s, alive(5, 3));
    // 9 missed 5's refutation at incarnation 3 and still suspects incarnation 1.
    let back = feed_from_9(&mut s, Update::Suspect { id: id(5), gen: 1, inc: 1, by: id(9) });
    assert_eq!(back.len(), 1, "one correction: {back:?}");
    assert_eq!(back[0].body, Body::Gossip);
    assert_eq!(back[0].gossip[0], alive(5, 3));
    assert_eq!(s.member(id(5)).unwrap().version.state, State::Alive, "the stale claim changed nothing");
    // A current suspicion is news, not stale: no correction.
    let back = feed_from_9(&mut s, Update::Suspect { id: id(5), gen: 1, inc: 3, by: id(9) });
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(s.member(id(5)).unwrap().version.state, State::Suspect);
    assert_eq!(s.stats().corrections, 1);
    s.check_invariants();
}

#[test]
fn a_suspected_member_answers_the_sender_of_the_suspicion_first() {
    let mut s = Swim::new(Config::lan(id(0), CLUSTER, addr(0)), 1, 1, Instant::ZERO).unwrap();
    feed_from_9(&mut s, Update::Alive { id: id(9), gen: 1, inc: 0, addr: addr(9), meta: SharedMeta::default() });
    let inc = s.me().version.inc;
    let back = feed_from_9(&mut s, Update::Suspect { id: id(0), gen: 1, inc, by: id(9) });
    let refuted = Update::of(s.me(), id(0));
    assert!(matches!(refuted, Update::Alive { inc: i, .. } if i == inc + 1), "refuted with a higher incarnation");
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].gossip[0], refuted);
    // A suspicion of an incarnation already refuted is answered with the current one.
    let back = feed_from_9(&mut s, Update::Suspect { id: id(0), gen: 1, inc, by: id(9) });
    assert_eq!(back.len(), 1, "{back:?}");
    assert_eq!(back[0].gossip[0], refuted);
    assert_eq!(s.me().version.inc, inc + 1, "no second refutation for the same claim");
}

#[test]
fn a_suspicion_still_open_halfway_goes_out_once_more() {
    let mut s = Swim::new(Config::lan(id(0), CLUSTER, addr(0)), 1, 1, Instant::ZERO).unwrap();
    for i in [5, 7, 8, 9] {
        feed_from_9(&mut s, Update::Alive { id: id(i), gen: 1, inc: 0, addr: addr(i), meta: SharedMeta::default() });
    }
    for by in [9, 7, 8] {
        feed_from_9(&mut s, Update::Suspect { id: id(5), gen: 1, inc: 0, by: id(by) });
    }
    let carries = |p: &[u8]| {
        let p = crate::wire::decode::<Packet>(p, CLUSTER, 1400).unwrap().body;
        p.gossip.iter().any(|u| matches!(u, Update::Suspect { id: i, .. } if *i == id(5)))
    };
    // Run until the suspicion has been gossiped to its limit, then on to its deadline.
    let mut now = Instant::ZERO;
    let mut sent_at = Vec::new();
    while s.member(id(5)).unwrap().version.state == State::Suspect {
        now = s.poll_timeout().unwrap();
        s.handle_timeout(now);
        while let Some(a) = s.poll_action() {
            if let Action::Send { packet, .. } = a {
                if carries(&packet) {
                    sent_at.push(now);
                }
            }
        }
    }
    // Gossip alone is spent within a second; the deadline is 4 s (n = 5, fully confirmed).
    let half = now.as_nanos() / 2;
    let late = sent_at.iter().filter(|t| t.as_nanos() >= half).count();
    assert!(late > 0, "sent at {sent_at:?}, down at {now:?}");
}

// ----- joining, leaving, identity -----

#[test]
fn join_retries_with_backoff_until_the_seed_answers() {
    let mut net = Net::new(2);
    net.cut.insert((1, 0));
    net.run_for(Duration::from_secs(20));
    let tries =
        net.sent.iter().filter(|(f, _, p)| *f == 1 && matches!(p.body, Body::PushPull { join: true, .. })).count();
    assert!((4..=7).contains(&tries), "0.5 + 1 + 2 + 4 + 8 s backoff gives about 5 tries in 20 s, got {tries}");
    assert!(!net.node(1).is_joined());
    net.cut.clear();
    net.run_for(Duration::from_secs(40));
    assert!(net.node(1).is_joined());
    assert!(net.events.iter().any(|(_, i, e)| *i == 1 && *e == Event::Joined));
    assert_eq!(net.node(0).live_members(), 2);
}

#[test]
fn a_graceful_leave_is_seen_as_left_and_then_the_member_stops() {
    let mut net = Net::converged(5);
    let now = net.now;
    net.node_mut(2).leave(now).unwrap();
    assert_eq!(net.node_mut(2).leave(now), Err(SwimError::Left));
    net.drain();
    net.run_for(Duration::from_secs(10));
    assert!(net.all_see(2, State::Left));
    assert!(net.events.iter().any(|(_, i, e)| *i == 2 && *e == Event::LeaveDone));
    assert_eq!(net.node(2).poll_timeout(), None);
    assert!(!net.events.iter().any(|(_, _, e)| *e == Event::Down(id(2))), "left, not down");
}

#[test]
fn a_member_declared_down_renews_its_identity_and_comes_back() {
    let mut net = Net::converged(5);
    net.isolate(4);
    net.run_for(Duration::from_secs(60));
    assert!(net.all_see(4, State::Down));
    let gen = net.node(4).me().version.gen;
    net.cut.clear();
    net.run_for(Duration::from_secs(120));
    assert!(net.node(4).me().version.gen > gen, "a new generation, not a zombie of the old one");
    assert!(net.events.iter().any(|(_, i, e)| *i == 4 && matches!(e, Event::Renewed { .. })));
    assert!(net.all_see(4, State::Alive));
    for i in 0..5 {
        assert_eq!(net.node(i).live_members(), 5, "member {i}");
    }
}

#[test]
fn a_restarted_member_with_an_old_generation_is_never_ignored() {
    let mut net = Net::converged(4);
    net.nodes[3] = None;
    net.run_for(Duration::from_secs(60));
    assert!(net.all_see(3, State::Down));
    // Restart with the same generation, as a host without a persisted counter would.
    net.nodes[3] = Some(Swim::new(config(3), 1, 999, net.now).unwrap());
    net.drain();
    net.run_for(Duration::from_secs(60));
    assert!(net.node(3).me().version.gen >= 2, "renewed past the generation the cluster buried");
    assert!(net.all_see(3, State::Alive));
}

#[test]
fn a_stale_alive_never_resurrects_a_dead_generation() {
    let mut s = Swim::new(Config::lan(id(0), CLUSTER, addr(0)), 1, 1, Instant::ZERO).unwrap();
    let alive = |inc| Update::Alive { id: id(5), gen: 3, inc, addr: addr(5), meta: SharedMeta::default() };
    let feed = |s: &mut Swim, u: Update| {
        let p = Packet { gen: 1, digest: Digest::default(), body: Body::Gossip, gossip: vec![u] };
        let bytes = crate::wire::encode(CLUSTER, id(9), &p, 1400).unwrap();
        s.handle_packet(Instant::ZERO, addr(9), &bytes).unwrap();
    };
    feed(&mut s, alive(2));
    feed(&mut s, Update::Down { id: id(5), gen: 3, inc: 2 });
    feed(&mut s, alive(9));
    assert_eq!(s.member(id(5)).unwrap().version.state, State::Down);
    feed(&mut s, Update::Alive { id: id(5), gen: 4, inc: 0, addr: addr(5), meta: SharedMeta::default() });
    assert_eq!(s.member(id(5)).unwrap().version, Version { gen: 4, inc: 0, state: State::Alive });
    s.check_invariants();
}

#[test]
fn tombstones_are_collected_after_their_ttl() {
    let mut net = Net::with(4, |i| {
        let mut c = config(i);
        c.tombstone_ttl = Duration::from_secs(30);
        c
    });
    net.run_for(Duration::from_secs(20));
    net.nodes[3] = None;
    net.run_for(Duration::from_secs(25));
    assert!(net.all_see(3, State::Down));
    net.run_for(Duration::from_secs(60));
    for o in 0..3 {
        assert!(net.node(o).member(id(3)).is_none(), "{o} still remembers 3");
    }
    assert!(net.events.iter().any(|(_, _, e)| *e == Event::Forgotten(id(3))));
}

#[test]
fn a_healed_partition_converges_without_gossip_finding_it() {
    let mut net = Net::converged(8);
    let (a, b): (Vec<usize>, Vec<usize>) = (0..8).partition(|i| *i < 4);
    for &x in &a {
        for &y in &b {
            net.cut.insert((x, y));
            net.cut.insert((y, x));
        }
    }
    net.run_for(Duration::from_secs(90));
    assert_eq!(net.node(0).live_members(), 4);
    assert_eq!(net.node(7).live_members(), 4);
    net.cut.clear();
    net.run_for(Duration::from_secs(120));
    for i in 0..8 {
        assert_eq!(net.node(i).live_members(), 8, "member {i} after healing");
        assert_eq!(net.node(i).view(), net.node(0).view());
    }
}

#[test]
fn a_member_held_down_is_pinged_and_gets_a_whole_state_only_once_it_answers() {
    let mut net = Net::converged(6);
    // Member 5 is cut off until everyone holds it down.
    for x in 0..5 {
        net.cut.insert((x, 5));
        net.cut.insert((5, x));
    }
    net.run_for(Duration::from_secs(60));
    assert!((0..5).all(|o| net.state(o, 5) == Some(State::Down)));
    net.sent.clear();
    net.run_for(Duration::from_secs(300));
    let to_5 = |net: &Net, f: &dyn Fn(&Body) -> bool| {
        net.sent.iter().filter(|(from, to, p)| *from < 5 && *to == 5 && f(&p.body)).count()
    };
    let pings = to_5(&net, &|b| matches!(b, Body::Ping { .. }));
    let states = to_5(&net, &|b| matches!(b, Body::PushPull { .. }));
    assert!(pings >= 20, "each of 5 members pings the member it holds down every 30 s: {pings}");
    assert_eq!(states, 0, "no whole state goes to an unreachable member");
    // Reachable again: the first answered ping brings a whole-state exchange, and 5 is back.
    net.cut.clear();
    net.sent.clear();
    net.run_for(Duration::from_secs(40));
    let exchanges = net
        .sent
        .iter()
        .filter(|(from, to, p)| {
            (*from == 5 || *to == 5) && matches!(p.body, Body::PushPull { reply: false, buckets: u64::MAX, .. })
        })
        .count();
    assert!(exchanges >= 1, "an answered ping starts a whole-state exchange");
    assert!((0..6).all(|o| net.node(o).live_members() == 6), "everyone sees all six again");
}

/// A member that knows 200 others and has sent one full state (so it knows what a record
/// costs).
fn member_of_201(sync_bytes_per_s: u32) -> Swim {
    let cfg = Config { sync_bytes_per_s, ..Config::lan(id(0), CLUSTER, addr(0)) };
    let mut s = Swim::new(cfg, 1, 1, Instant::ZERO).unwrap();
    for i in 1..=200 {
        let u = Update::Alive { id: id(i), gen: 1, inc: 0, addr: addr(i), meta: SharedMeta::default() };
        let p = Packet { gen: 1, digest: s.digest(), body: Body::Gossip, gossip: vec![u] };
        s.handle_packet(Instant::ZERO, addr(i), &crate::wire::encode(CLUSTER, id(i), &p, 1400).unwrap()).unwrap();
    }
    s.send_state(addr(1), 1, false, false, u64::MAX);
    while s.poll_action().is_some() {}
    s
}

/// The member hears, every 100 ms for 100 s, a live peer whose view digest differs in member
/// count, and the peer answers each summary by exchanging the first `answered` buckets (none:
/// no answer); returns how many summaries the member sent.
fn summaries_in_100s(sync_bytes_per_s: u32, answered: usize) -> u64 {
    let mut s = member_of_201(sync_bytes_per_s);
    let before = s.stats().summaries;
    for step in 1..=1000u64 {
        let now = Instant::from_nanos(step * 100_000_000);
        let p = Packet { gen: 1, digest: Digest { live: 150, hash: 7 }, body: Body::Gossip, gossip: vec![] };
        s.handle_packet(now, addr(1), &crate::wire::encode(CLUSTER, id(1), &p, 1400).unwrap()).unwrap();
        let mut asked = false;
        while let Some(a) = s.poll_action() {
            if let Action::Send { packet, .. } = a {
                let body = crate::wire::decode::<Packet>(&packet, CLUSTER, 1400).unwrap().body.body;
                asked |= matches!(body, Body::Summary { .. });
            }
        }
        if asked && answered > 0 {
            let buckets = if answered == SYNC_BUCKETS { u64::MAX } else { (1 << answered) - 1 };
            let body = Body::PushPull {
                seq: step as u32,
                reply: false,
                join: false,
                part: 0,
                parts: 1,
                buckets,
                members: vec![],
            };
            let p = Packet { gen: 1, digest: Digest { live: 150, hash: 7 }, body, gossip: vec![] };
            s.handle_packet(now, addr(1), &crate::wire::encode(CLUSTER, id(1), &p, 1400).unwrap()).unwrap();
            while s.poll_action().is_some() {}
        }
    }
    s.check_invariants();
    s.stats().summaries - before
}

#[test]
fn digest_driven_repairs_keep_within_their_byte_budget() {
    // Summaries are small (about 350 bytes): unanswered, the 2 s gap is what bounds them.
    let unanswered = summaries_in_100s(512, 0);
    assert!((40..=51).contains(&unanswered), "one per 2 s gap over 100 s: {unanswered}");
    // 201 records of about 20 bytes: about 8 KB per whole exchange (request and reply), which
    // the asker pays for.
    let whole = summaries_in_100s(512, SYNC_BUCKETS - 1);
    assert!((2..=10).contains(&whole), "512 B/s over 100 s pays for about 6 near-whole exchanges: {whole}");
    let unbounded = summaries_in_100s(u32::MAX, SYNC_BUCKETS - 1);
    assert!(unbounded >= 40, "without a budget only the gap holds them back: {unbounded}");
    // One bucket of 64 holds about 3 records: such repairs fit the budget at the gap's pace.
    let one = summaries_in_100s(512, 1);
    assert!(one >= 40, "one-bucket repairs are cheap: {one}");
}

#[test]
fn a_member_that_suspects_someone_repairs_a_differing_digest_at_once() {
    // The difference may be the suspect's refutation, lost on its way here: waiting out the
    // gap could let the suspicion time out first (seen at 30% loss).
    let summaries_after = |suspect: bool| {
        let mut s = member_of_201(u32::MAX);
        let before = s.stats().summaries;
        let t = Instant::from_nanos(10_000_000_000);
        // A peer that agrees: no difference is pending.
        let p = Packet { gen: 1, digest: s.digest(), body: Body::Gossip, gossip: vec![] };
        s.handle_packet(t, addr(4), &crate::wire::encode(CLUSTER, id(4), &p, 1400).unwrap()).unwrap();
        if suspect {
            let u = Update::Suspect { id: id(9), gen: 1, inc: 0, by: id(3) };
            let p = Packet { gen: 1, digest: s.digest(), body: Body::Gossip, gossip: vec![u] };
            s.handle_packet(t, addr(3), &crate::wire::encode(CLUSTER, id(3), &p, 1400).unwrap()).unwrap();
        }
        // Same member count, other incarnations: what a refutation not yet heard looks like.
        let digest = Digest { live: s.digest().live, hash: s.digest().hash ^ 1 };
        let p = Packet { gen: 1, digest, body: Body::Gossip, gossip: vec![] };
        s.handle_packet(t, addr(4), &crate::wire::encode(CLUSTER, id(4), &p, 1400).unwrap()).unwrap();
        s.check_invariants();
        s.stats().summaries - before
    };
    assert_eq!(summaries_after(false), 0, "an incarnation difference must persist for the gap first");
    assert_eq!(summaries_after(true), 1, "while suspecting, at once");
}

#[test]
fn a_summary_is_answered_with_exactly_the_differing_buckets_and_so_is_that_request() {
    let mut s = member_of_201(u32::MAX);
    let b = sync_bucket(id(17));
    let mut buckets = s.bucket_hashes.to_vec();
    buckets[b] ^= 1;
    let p = Packet { gen: 1, digest: s.digest(), body: Body::Summary { seq: 3, buckets }, gossip: vec![] };
    s.handle_packet(
        Instant::from_nanos(1_000_000_000),
        addr(1),
        &crate::wire::encode(CLUSTER, id(1), &p, 1400).unwrap(),
    )
    .unwrap();
    let sent_state = |s: &mut Swim| {
        let mut out = Vec::new();
        while let Some(a) = s.poll_action() {
            let Action::Send { packet, .. } = a else { continue };
            let p = crate::wire::decode::<Packet>(&packet, CLUSTER, 1400).unwrap().body;
            if let Body::PushPull { reply, buckets, members, .. } = p.body {
                out.push((reply, buckets, members.into_iter().map(|m| m.id).collect::<BTreeSet<_>>()));
            }
        }
        out
    };
    let want: BTreeSet<NodeId> = (0..=200).map(id).filter(|m| sync_bucket(*m) == b).collect();
    assert!(want.contains(&id(17)) && want.len() < 20, "a bucket holds a few of 201: {want:?}");
    assert_eq!(sent_state(&mut s), vec![(false, 1 << b, want.clone())], "a request for bucket {b} only");
    // The peer's request for the same bucket (it started the exchange) gets the same bucket back.
    let req = Packet {
        gen: 1,
        digest: s.digest(),
        body: Body::PushPull { seq: 9, reply: false, join: false, part: 0, parts: 1, buckets: 1 << b, members: vec![] },
        gossip: vec![],
    };
    s.handle_packet(
        Instant::from_nanos(2_000_000_000),
        addr(2),
        &crate::wire::encode(CLUSTER, id(2), &req, 1400).unwrap(),
    )
    .unwrap();
    assert_eq!(sent_state(&mut s), vec![(true, 1 << b, want)]);
    // The same peer again within half the sync gap is not answered (an amplifier otherwise);
    // after it, it is.
    let again = |s: &mut Swim, at: u64| {
        let mut buckets = s.bucket_hashes.to_vec();
        buckets[b] ^= 1;
        let p = Packet { gen: 1, digest: s.digest(), body: Body::Summary { seq: 5, buckets }, gossip: vec![] };
        s.handle_packet(Instant::from_nanos(at), addr(1), &crate::wire::encode(CLUSTER, id(1), &p, 1400).unwrap())
            .unwrap();
    };
    again(&mut s, 1_500_000_000);
    assert!(sent_state(&mut s).is_empty(), "asked again 0.5 s later: refused");
    again(&mut s, 2_100_000_000);
    assert_eq!(sent_state(&mut s).len(), 1, "1.1 s after the first: answered");
    // Equal hashes ask for nothing.
    let p = Packet {
        gen: 1,
        digest: s.digest(),
        body: Body::Summary { seq: 4, buckets: s.bucket_hashes.to_vec() },
        gossip: vec![],
    };
    s.handle_packet(
        Instant::from_nanos(3_000_000_000),
        addr(1),
        &crate::wire::encode(CLUSTER, id(1), &p, 1400).unwrap(),
    )
    .unwrap();
    assert!(sent_state(&mut s).is_empty());
}

#[test]
fn records_outside_the_buckets_of_a_state_chunk_are_rejected() {
    let mut s = member_of_201(u32::MAX);
    let other = (1..100).map(id).find(|m| sync_bucket(*m) != sync_bucket(id(5))).unwrap();
    let m = Member {
        id: other,
        addr: addr(other.0 as usize),
        version: Version { gen: 1, inc: 0, state: State::Alive },
        meta: SharedMeta::default(),
    };
    let body = Body::PushPull {
        seq: 1,
        reply: true,
        join: false,
        part: 0,
        parts: 1,
        buckets: 1 << sync_bucket(id(5)),
        members: vec![m],
    };
    let p = Packet { gen: 1, digest: s.digest(), body, gossip: vec![] };
    let r = s.handle_packet(
        Instant::from_nanos(1_000_000_000),
        addr(1),
        &crate::wire::encode(CLUSTER, id(1), &p, 1400).unwrap(),
    );
    assert!(matches!(r, Err(SwimError::Invalid)), "{r:?}");
}

#[test]
fn periodic_anti_entropy_sends_summaries_and_a_whole_state_one_round_in_eight() {
    let mut net = Net::converged(10);
    net.sent.clear();
    let start: u64 = (0..10).map(|i| net.node(i).stats().periodic_syncs).sum();
    net.run_for(Duration::from_secs(600));
    let rounds = (0..10).map(|i| net.node(i).stats().periodic_syncs).sum::<u64>() - start;
    let summaries = net.sent.iter().filter(|(_, _, p)| matches!(p.body, Body::Summary { .. })).count() as u64;
    let whole = net
        .sent
        .iter()
        .filter(|(_, _, p)| {
            matches!(p.body, Body::PushPull { reply: false, join: false, buckets: u64::MAX, part: 0, .. })
        })
        .count() as u64;
    assert!((150..=250).contains(&rounds), "one round per 30 s per member over 600 s: {rounds}");
    assert!(summaries + whole >= rounds, "every round sent something: {summaries} + {whole} < {rounds}");
    assert!(whole * 5 <= rounds && whole * 12 >= rounds, "about one round in 8 is whole: {whole} of {rounds}");
}

#[test]
fn a_member_planned_in_a_small_cluster_puts_its_exchange_off_when_the_cluster_grew() {
    // 40 members: the push-pull period is 30 s per 32 members, 60 s; each member planned its
    // first exchange within 30-60 s while it was alone.
    let n = 40;
    let mut net = Net::converged(n);
    let periodic = |net: &Net| -> u64 { (0..n).map(|i| net.node(i).stats().periodic_syncs).sum() };
    let start = periodic(&net);
    net.run_for(Duration::from_secs(40));
    let early = periodic(&net) - start;
    assert!(early < n as u64 / 2, "most put off the exchange planned for a cluster of 1: {early} of {n}");
    let mid = periodic(&net);
    net.run_for(Duration::from_secs(240));
    let per_member = (periodic(&net) - mid) as f64 / n as f64;
    assert!((3.0..=5.0).contains(&per_member), "one exchange per 60 s, about 4 in 240 s: {per_member}");
}

// ----- packets -----

#[test]
fn an_action_is_no_larger_than_a_send() {
    let send = core::mem::size_of::<Addr>() + core::mem::size_of::<Vec<u8>>();
    assert!(core::mem::size_of::<Action>() <= send + 8, "Action is {} bytes", core::mem::size_of::<Action>());
}

#[test]
fn full_state_of_a_large_cluster_is_chunked_within_the_packet_limit() {
    let mut s = Swim::new(Config::lan(id(0), CLUSTER, addr(0)), 1, 1, Instant::ZERO).unwrap();
    for i in 1..400 {
        let mut meta = Meta { zone: format!("zone-{}", i % 7), weight: 3, ..Meta::default() };
        meta.tags.insert("role".into(), "data".into());
        let p = Packet {
            gen: 1,
            digest: Digest::default(),
            body: Body::Gossip,
            gossip: vec![Update::Alive { id: id(i), gen: 1, inc: 0, addr: addr(i), meta: SharedMeta::new(meta) }],
        };
        let bytes = crate::wire::encode(CLUSTER, id(i), &p, 1400).unwrap();
        s.handle_packet(Instant::ZERO, addr(i), &bytes).unwrap();
    }
    while s.poll_action().is_some() {}
    s.send_state(addr(1), 7, false, true, u64::MAX);
    let mut seen = BTreeSet::new();
    let mut parts = 0;
    while let Some(a) = s.poll_action() {
        let Action::Send { packet, .. } = a else { continue };
        assert!(packet.len() <= 1400);
        let p = crate::wire::decode::<Packet>(&packet, CLUSTER, 1400).unwrap().body;
        let Body::PushPull { members, parts: n, .. } = p.body else { panic!() };
        parts = n;
        seen.extend(members.into_iter().map(|m| m.id));
    }
    assert_eq!(seen.len(), 400, "every member, this one included, in some chunk");
    assert!(parts >= 10, "{parts} chunks");
}

#[test]
fn bad_packets_are_rejected_with_a_typed_error_and_counted() {
    let mut s = Swim::new(Config::lan(id(0), CLUSTER, addr(0)), 1, 1, Instant::ZERO).unwrap();
    let big = vec![0u8; 1401];
    assert!(matches!(s.handle_packet(Instant::ZERO, addr(1), &big), Err(SwimError::Wire(WireError::TooLarge { .. }))));
    assert!(matches!(s.handle_packet(Instant::ZERO, addr(1), b"QR\x01\xff\xff"), Err(SwimError::Wire(_))));
    let p = Packet { gen: u64::MAX, digest: Digest::default(), body: Body::Gossip, gossip: vec![] };
    let bytes = crate::wire::encode(CLUSTER, id(1), &p, 1400).unwrap();
    assert_eq!(s.handle_packet(Instant::ZERO, addr(1), &bytes), Err(SwimError::Invalid));
    let other = crate::wire::encode(CLUSTER + 1, id(1), &Packet { gen: 1, ..p.clone() }, 1400).unwrap();
    assert!(matches!(
        s.handle_packet(Instant::ZERO, addr(1), &other),
        Err(SwimError::Wire(WireError::WrongCluster { .. }))
    ));
    let st = s.stats();
    assert_eq!((st.rejected_too_large, st.rejected_malformed, st.rejected_cluster), (1, 2, 1));
    assert_eq!(s.live_members(), 1, "nothing changed");
    s.check_invariants();
}

#[test]
fn config_errors_name_the_field() {
    let mut c = Config::lan(id(0), CLUSTER, addr(0));
    c.probe_timeout = Duration::from_secs(2);
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "probe_timeout", .. })));
    let c = Config { indirect_waves: 0, ..Config::lan(id(0), CLUSTER, addr(0)) };
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "indirect_waves", .. })));
    let mut c = Config::lan(NodeId::NONE, CLUSTER, addr(0));
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "id", .. })));
    c.id = id(0);
    c.meta.tags.insert("x".into(), "y".repeat(600));
    assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "meta", .. })));
    let mut s = Swim::new(Config::lan(id(0), CLUSTER, addr(0)), 1, 1, Instant::ZERO).unwrap();
    assert!(matches!(s.set_meta(Instant::ZERO, c.meta.clone()), Err(SwimError::MetaTooLarge { .. })));
}

// ----- merge properties -----

fn arb_update() -> impl Strategy<Value = Update> {
    let who = 1u64..4;
    let gen = 1u64..3;
    let inc = 0u64..3;
    (0u8..4, who, gen, inc, 0u8..3).prop_map(|(kind, w, gen, inc, z)| {
        let id = NodeId(w + 1);
        match kind {
            0 => Update::Alive {
                id,
                gen,
                inc,
                addr: addr(w as usize),
                meta: SharedMeta::new(Meta { weight: u32::from(z), ..Meta::default() }),
            },
            1 => Update::Suspect { id, gen, inc, by: NodeId(9) },
            2 => Update::Down { id, gen, inc },
            _ => Update::Left { id, gen, inc },
        }
    })
}

fn view_after(updates: &[Update]) -> BTreeMap<NodeId, Version> {
    let mut s = Swim::new(Config::lan(NodeId(1), CLUSTER, addr(0)), 1, 1, Instant::ZERO).unwrap();
    for u in updates {
        let p = Packet { gen: 1, digest: Digest::default(), body: Body::Gossip, gossip: vec![u.clone()] };
        let bytes = crate::wire::encode(CLUSTER, NodeId(9), &p, 1400).unwrap();
        s.handle_packet(Instant::ZERO, addr(9), &bytes).unwrap();
        s.check_invariants();
    }
    s.members().map(|m| (m.id, m.version)).collect()
}

proptest! {
    #[test]
    fn any_delivery_order_of_the_same_updates_gives_the_same_view(
        updates in proptest::collection::vec(arb_update(), 1..12),
        seed in any::<u64>(),
    ) {
        // An Alive must come first for a member to be known with an address, so the reference
        // order and the shuffled one both start with every member's first Alive.
        let mut shuffled = updates.clone();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        shuffle(&mut rng, &mut shuffled);
        let known: Vec<Update> = updates.iter().filter(|u| matches!(u, Update::Alive { .. })).cloned().collect();
        let a: Vec<Update> = known.iter().chain(updates.iter()).cloned().collect();
        let b: Vec<Update> = known.iter().chain(shuffled.iter()).cloned().collect();
        prop_assert_eq!(view_after(&a), view_after(&b));
    }

    #[test]
    fn the_view_holds_the_greatest_claim_under_the_precedence_rule(
        updates in proptest::collection::vec(arb_update(), 1..12),
    ) {
        let known: Vec<Update> = updates.iter().filter(|u| matches!(u, Update::Alive { .. })).cloned().collect();
        let all: Vec<Update> = known.iter().chain(updates.iter()).cloned().collect();
        let view = view_after(&all);
        for (id, v) in &view {
            let addressed = known.iter().any(|u| u.id() == *id);
            let counted = |u: &&Update| u.id() == *id && (addressed || u.version().state.is_terminal());
            for u in all.iter().filter(counted) {
                prop_assert!(!u.version().supersedes(v), "{:?} should have replaced {:?}", u, v);
            }
        }
    }
}

// ----- the hand-written packet codec against postcard -----

fn arb_body() -> impl Strategy<Value = Body> {
    let member = (1u64..u64::MAX, any::<u8>(), any::<u64>(), any::<u64>(), 0u8..4).prop_map(|(i, a, gen, inc, s)| {
        let state = [State::Alive, State::Suspect, State::Down, State::Left][usize::from(s)];
        Member {
            id: NodeId(i),
            addr: Addr::v4(10, 0, 0, a, 7946),
            version: Version { gen, inc, state },
            meta: SharedMeta::default(),
        }
    });
    prop_oneof![
        (any::<u32>(), any::<u64>()).prop_map(|(seq, t)| Body::Ping { seq, target: NodeId(t) }),
        any::<u32>().prop_map(|seq| Body::Ack { seq }),
        (any::<u32>(), any::<u64>(), any::<u8>()).prop_map(|(seq, t, a)| Body::PingReq {
            seq,
            target: NodeId(t),
            addr: Addr::v4(10, 0, 0, a, 7946)
        }),
        any::<u32>().prop_map(|seq| Body::Nack { seq }),
        (any::<u32>(), proptest::collection::vec(any::<u32>(), 0..70))
            .prop_map(|(seq, buckets)| Body::Summary { seq, buckets }),
        (
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            any::<u16>(),
            any::<u16>(),
            any::<u64>(),
            proptest::collection::vec(member, 0..4)
        )
            .prop_map(|(seq, reply, join, part, parts, buckets, members)| Body::PushPull {
                seq,
                reply,
                join,
                part,
                parts,
                buckets,
                members
            }),
        Just(Body::Gossip),
    ]
}

fn arb_addr() -> impl Strategy<Value = Addr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| Addr(SocketAddr::from((o, p)))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(o, p)| Addr(SocketAddr::from((o, p)))),
    ]
}

fn arb_meta() -> impl Strategy<Value = SharedMeta> {
    let label = prop_oneof![Just(String::new()), "[a-z]{1,4}", "\\PC{0,3}"];
    let addrs = proptest::collection::btree_map("[a-z0-9]{0,5}", arb_addr(), 0..3);
    let tags = proptest::collection::btree_map("[a-z0-9]{0,5}", label.clone(), 0..3);
    prop_oneof![
        Just(SharedMeta::default()),
        (label.clone(), label.clone(), label, any::<u32>(), addrs, tags).prop_map(
            |(region, zone, rack, weight, addrs, tags)| SharedMeta::new(Meta {
                region,
                zone,
                rack,
                weight,
                addrs,
                tags
            })
        ),
    ]
}

/// Updates over the whole range of every field, metadata with labels, addresses and tags.
fn arb_wide_update() -> impl Strategy<Value = Update> {
    (0u8..4, any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), arb_addr(), arb_meta()).prop_map(
        |(kind, id, gen, inc, by, addr, meta)| {
            let id = NodeId(id);
            match kind {
                0 => Update::Alive { id, gen, inc, addr, meta },
                1 => Update::Suspect { id, gen, inc, by: NodeId(by) },
                2 => Update::Down { id, gen, inc },
                _ => Update::Left { id, gen, inc },
            }
        },
    )
}

fn arb_packet() -> impl Strategy<Value = Packet> {
    let update = prop_oneof![arb_update(), arb_wide_update()];
    (any::<u64>(), any::<u32>(), any::<u32>(), arb_body(), proptest::collection::vec(update, 0..4))
        .prop_map(|(gen, live, hash, body, gossip)| Packet { gen, digest: Digest { live, hash }, body, gossip })
}

/// The hand-written head plus items appended one by one, as `Swim::send` builds a datagram.
fn hand_encoded(cluster: u64, from: NodeId, p: &Packet) -> Vec<u8> {
    let mut h = crate::wire::SeqWriter::begin(cluster, from, 64);
    message::PacketHead { gen: p.gen, digest: p.digest, body: &p.body }.write(&mut h).unwrap();
    let mut w = h.items();
    for u in &p.gossip {
        assert!(w.push_encoded_within(usize::MAX, |out| u.write(out)));
    }
    w.finish(usize::MAX).unwrap()
}

/// Both decoders give the same answer, packet or error.
fn same_decoding(bytes: &[u8], cluster: u64) -> Result<(), TestCaseError> {
    let by_hand = message::decode_packet(bytes, cluster, 1400);
    let by_postcard = crate::wire::decode::<Packet>(bytes, cluster, 1400);
    prop_assert_eq!(by_hand, by_postcard, "bytes {:02x?}", bytes);
    Ok(())
}

proptest! {
    #[test]
    fn the_hand_written_encoder_writes_postcards_bytes(p in arb_packet(), cluster in any::<u64>(), from in any::<u64>()) {
        let expected = crate::wire::encode(cluster, NodeId(from), &p, usize::MAX).unwrap();
        prop_assert_eq!(hand_encoded(cluster, NodeId(from), &p), expected);
    }

    #[test]
    fn an_updates_hand_written_encoding_and_length_are_postcards(u in arb_wide_update()) {
        let expected = postcard::to_allocvec(&u).unwrap();
        let mut out = Vec::new();
        u.write(&mut out);
        prop_assert_eq!(&out, &expected);
        prop_assert_eq!(u.encoded_len(), expected.len());
        let mut r = crate::wire::Reader::new(&expected);
        prop_assert_eq!(Update::read(&mut r), Ok(u));
        prop_assert!(r.rest().is_empty());
    }

    #[test]
    fn the_hand_written_decoder_agrees_with_postcard_on_every_input(
        p in arb_packet(),
        cluster in prop_oneof![Just(CLUSTER), any::<u64>()],
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let bytes = crate::wire::encode(CLUSTER, NodeId(5), &p, usize::MAX).unwrap();
        same_decoding(&bytes, cluster)?;
        prop_assert!(message::decode_packet(&bytes, CLUSTER, usize::MAX).is_ok_and(|e| e.body == p));
        // Truncated, with one byte replaced, with bytes after it, and noise behind a header.
        same_decoding(&bytes[..cut.index(bytes.len())], cluster)?;
        let mut changed = bytes.clone();
        changed[flip.index(bytes.len())] = byte;
        same_decoding(&changed, cluster)?;
        let mut longer = bytes.clone();
        longer.push(byte);
        same_decoding(&longer, cluster)?;
        let mut framed = bytes[..crate::wire::HEADER_BYTES].to_vec();
        framed.extend_from_slice(&noise);
        same_decoding(&framed, cluster)?;
    }
}

#[test]
fn the_hand_written_decoder_takes_overlong_varints_as_postcard_does_and_refuses_overflow() {
    let p = Packet { gen: 1, digest: Digest::default(), body: Body::Ack { seq: 3 }, gossip: Vec::new() };
    let bytes = crate::wire::encode(CLUSTER, NodeId(5), &p, 1400).unwrap();
    // The envelope: magic, version, the cluster id's varint, the sender's (5), then the packet.
    let at = crate::wire::HEADER_BYTES + postcard::to_allocvec(&CLUSTER).unwrap().len();
    assert_eq!(bytes[at], 5);
    let splice = |with: &[u8]| {
        let mut b = bytes[..at].to_vec();
        b.extend_from_slice(with);
        b.extend_from_slice(&bytes[at + 1..]);
        b
    };
    // 5 written in two bytes, 5 with a tenth byte past 64 bits, 5 followed by an unended varint.
    let overlong = splice(&[0x85, 0x00]);
    let overflow = splice(&[0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
    let unended = splice(&[0x85, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]);
    assert_eq!(message::decode_packet(&overlong, CLUSTER, 1400).map(|e| e.from), Ok(NodeId(5)));
    for b in [&overlong, &overflow, &unended] {
        assert_eq!(message::decode_packet(b, CLUSTER, 1400), crate::wire::decode::<Packet>(b, CLUSTER, 1400));
    }
    assert_eq!(message::decode_packet(&overflow, CLUSTER, 1400), Err(WireError::Malformed));
    assert_eq!(message::decode_packet(&unended, CLUSTER, 1400), Err(WireError::Malformed));
    // The ack's seq, a u32, is the second to last byte: five bytes with 4 bits in the last
    // still fit, a fifth bit does not.
    let seq_at = bytes.len() - 2;
    assert_eq!(bytes[seq_at], 3);
    let with_seq = |with: &[u8]| {
        let mut b = bytes[..seq_at].to_vec();
        b.extend_from_slice(with);
        b.push(0);
        b
    };
    let widest = with_seq(&[0x83, 0x80, 0x80, 0x80, 0x0f]);
    let past = with_seq(&[0x83, 0x80, 0x80, 0x80, 0x10]);
    let body = message::decode_packet(&widest, CLUSTER, 1400).map(|e| e.body.body);
    assert_eq!(body, Ok(Body::Ack { seq: 3 | 0xf << 28 }));
    assert_eq!(message::decode_packet(&past, CLUSTER, 1400), Err(WireError::Malformed));
    for b in [&widest, &past] {
        assert_eq!(message::decode_packet(b, CLUSTER, 1400), crate::wire::decode::<Packet>(b, CLUSTER, 1400));
    }
}
