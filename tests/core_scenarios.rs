//! Lifecycle scenarios of the functional core, driven only through its public API with real
//! signed NIP-34 events: one test per flow scenario and per method relationship of the
//! GRASP-02 design. Every test checks the exact command sequence, in order.

mod support_core;

use grasp_sync::core::ids::RootId;
use grasp_sync::core::pagination::PageReport;
use grasp_sync::core::relay_index::{ConnectionStatus, Nip77Support};
use grasp_sync::core::settings::RelayLimits;
use grasp_sync::core::{
    compute_actions, derive_relay_targets, Action, AddFilters, Command, DisconnectReason, Input,
    Millis, NegentropyOutcome, SubPurpose,
};
use nostr::{Event, Filter, Keys, Timestamp};
use std::time::Duration;
use support_core::*;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
/// Shorter than the negentropy session timeout (four EOSE timeouts, 120 s).
const TEN_SECS: Duration = Duration::from_secs(10);

/// Repo "alpha" (listing our relay and the remote one) with one issue.
struct Alpha {
    keys: Keys,
    repo: String,
    root: String,
    events: Vec<Event>,
}

fn alpha(at: Millis) -> Alpha {
    let keys = maintainer();
    let repo = repo_ref(&keys, "alpha");
    let ann = announcement(&keys, "alpha", &[OWN, REMOTE], at);
    let issue = root_event(&keys, 1621, &repo, "crash on start", at);
    let root = issue.id.to_hex();
    Alpha {
        keys,
        repo,
        root,
        events: vec![ann, issue],
    }
}

/// Alpha fully synced from the remote relay; returns it and the connect time.
fn synced_alpha(h: &mut Harness, nip77: Option<bool>) -> (Alpha, Millis) {
    let a = alpha(h.now);
    let batch = h.own_batch(&a.events);
    assert_eq!(batch, vec![Command::Discovered { relay: url(REMOTE) }]);
    assert_eq!(tags(&h.manage(REMOTE, None)), ["Connect"]);
    let connected_at = h.now;
    h.connected(REMOTE, nip77);
    h.confirm_all(REMOTE);
    let s = h.core.relay_summary(&url(REMOTE)).expect("remote known");
    assert!(s.synced, "alpha synced: {s:?}");
    assert_eq!((s.confirmed_repos, s.confirmed_root_events), (1, 1));
    (a, connected_at)
}

/// L2 of `repo` followed by L3 of `root`.
fn l2_l3(repo: &str, root: &str) -> Vec<nostr::Filter> {
    let mut f = l2(&[repo]);
    f.extend(l3(&[root]));
    f
}

/// The fresh-start sequence for alpha on a NIP-77 relay (default budget: 5 historic slots).
/// Live filters that replace closed ones at `at`: no `limit: 0`, but stored events since the
/// quick-reconnect window, so an event the relay took between the CLOSE and the new REQ is
/// not lost.
fn bridged(fs: Vec<Filter>, at: Millis) -> Vec<Filter> {
    since(fs, (at - 15 * MIN).to_timestamp())
}

const FRESH_START_ALPHA: [&str; 11] = [
    "ClearPending",
    "ClearConfirmed",
    "Subscribe(Live)",
    "Metric(BatchStarted(Negentropy))",
    "Negentropy",
    "Subscribe(Live)",
    "Metric(BatchStarted(Negentropy))",
    "Negentropy",
    "Negentropy",
    "Negentropy",
    "Negentropy",
];

/// Checks the filters of a fresh start for alpha: L1 live, L1 history without `since`, then
/// L2+L3 live and their negentropy sessions.
fn assert_fresh_start_filters(cmds: &[Command], a: &Alpha) {
    let subs = subscribes(cmds);
    assert_eq!(subs.len(), 2);
    assert_eq!(subs[0].1, live(vec![l1()]), "L1 live first");
    assert_eq!(subs[1].1, live(l2_l3(&a.repo, &a.root)), "then L2+L3 live");
    assert!(subs.iter().all(|(_, _, p)| *p == SubPurpose::Live));
    let neg = negentropy_filters(cmds);
    assert_eq!(
        neg,
        vec![
            l1(),
            tagf('a', &[&a.repo]),
            tagf('A', &[&a.repo]),
            tagf('q', &[&a.repo]),
            tagf('e', &[&a.root]),
        ],
        "L1 history has no since; L2/L3 sessions follow"
    );
}

#[test]
fn fresh_start_on_initial_connect_clears_then_syncs_l1_then_l2_l3_live_before_historic() {
    let mut h = Harness::standard();
    let a = alpha(h.now);
    assert_eq!(
        h.own_batch(&a.events),
        vec![Command::Discovered { relay: url(REMOTE) }]
    );
    assert_eq!(
        h.manage(REMOTE, None),
        vec![Command::Connect { relay: url(REMOTE) }]
    );
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tags(&cmds), FRESH_START_ALPHA);
    assert!(
        matches!(&cmds[0], Command::ClearPending { closed, .. } if closed.is_empty()),
        "nothing to close on a first connection"
    );
    assert_fresh_start_filters(&cmds, &a);

    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!((s.confirmed_repos, s.confirmed_root_events), (0, 0));
    assert_eq!((s.desired_repos, s.desired_root_events), (1, 1));
    assert_eq!(s.pending_batches, 2);
    assert!(!s.synced);

    let done = h.confirm_all(REMOTE);
    assert_eq!(count(&done, "Metric(BatchConfirmed(Negentropy))"), 2);
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!((s.confirmed_repos, s.confirmed_root_events), (1, 1));
    assert!(s.synced);
    assert_eq!(s.nip77, Nip77Support::Supported);
}

#[test]
fn quick_reconnect_clears_pending_catches_up_since_disconnect_and_adds_only_new_items() {
    let mut h = Harness::standard();
    let (a, _) = synced_alpha(&mut h, None);
    h.advance(10 * MIN);
    let disconnected_at = h.now;
    let cmds = h.disconnected(REMOTE);
    assert_eq!(tags(&cmds), ["ClearPending"]);
    // First failure: five seconds of backoff before the reconnect attempt.
    assert!(h.tick_after(Duration::from_millis(4_999)).is_empty());
    assert_eq!(tags(&h.tick_after(Duration::from_millis(1))), ["Connect"]);

    // A new repo arrives while the relay is down: no work until it is back.
    h.advance(Duration::from_secs(5));
    let beta = repo_ref(&a.keys, "beta");
    let ann_beta = announcement(&a.keys, "beta", &[OWN, REMOTE], h.now);
    assert!(h.own_batch(&[ann_beta]).is_empty());

    h.advance(MIN);
    let cmds = h.connected(REMOTE, None);
    assert_eq!(
        tags(&cmds),
        [
            "Metric(QuickReconnect)",
            "ClearPending",
            "Subscribe(Live)",
            "Metric(BatchStarted(ReqEose))",
            "Subscribe(Historic)",
            "Metric(BatchStarted(ReqEose))",
            "Subscribe(Historic)",
            "Subscribe(Historic)",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
            "Negentropy",
        ]
    );
    let since_ts = (disconnected_at - 15 * MIN).to_timestamp();
    let subs = subscribes(&cmds);
    let filters: Vec<_> = subs.iter().map(|(_, f, _)| f.clone()).collect();
    assert_eq!(
        filters,
        vec![
            // L1 and the confirmed items share one live REQ, opened before any history.
            live([vec![l1()], l2_l3(&a.repo, &a.root)].concat()),
            paged(since(vec![l1()], since_ts), 500),
            paged(since(l2(&[&a.repo]), since_ts), 500),
            paged(since(l3(&[&a.root]), since_ts), 500),
            live(l2(&[&beta])),
        ]
    );
    let purposes: Vec<bool> = subs
        .iter()
        .map(|(_, _, p)| *p == SubPurpose::Live)
        .collect();
    assert_eq!(purposes, [true, false, false, false, true]);
    // The new repo gets its whole history, the rest only a catch-up.
    assert_eq!(
        negentropy_filters(&cmds),
        vec![tagf('a', &[&beta]), tagf('A', &[&beta])]
    );
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!(s.reconnects, 1);
    assert_eq!(
        (s.confirmed_repos, s.confirmed_root_events),
        (1, 1),
        "a quick reconnect keeps confirmed state"
    );
    assert!(!s.synced, "not synced until the catch-up confirms");
    h.confirm_all(REMOTE);
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert!(s.synced);
    assert_eq!(s.confirmed_repos, 2);
}

#[test]
fn long_reconnect_records_a_metric_then_runs_fresh_start() {
    let mut h = Harness::standard();
    let (a, _) = synced_alpha(&mut h, None);
    h.advance(MIN);
    assert_eq!(tags(&h.disconnected(REMOTE)), ["ClearPending"]);
    assert_eq!(tags(&h.tick_after(16 * MIN)), ["Connect"]);
    let cmds = h.connected(REMOTE, None);
    let mut expected = vec!["Metric(LongReconnect)"];
    expected.extend(FRESH_START_ALPHA);
    assert_eq!(tags(&cmds), expected);
    assert_fresh_start_filters(&cmds[1..], &a);
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!((s.confirmed_repos, s.confirmed_root_events), (0, 0));
    assert_eq!(s.reconnects, 1);
}

#[test]
fn reconnect_window_is_fifteen_minutes_from_the_disconnect() {
    for (away, expected) in [
        (15 * MIN - Duration::from_secs(1), "Metric(QuickReconnect)"),
        (15 * MIN + Duration::from_secs(1), "Metric(LongReconnect)"),
    ] {
        let mut h = Harness::standard();
        synced_alpha(&mut h, None);
        h.advance(HOUR);
        h.disconnected(REMOTE);
        h.advance(away);
        let cmds = h.connected(REMOTE, None);
        assert_eq!(tag(&cmds[0]), expected, "away for {away:?}");
    }
}

#[test]
fn daily_sync_fires_from_tick_and_runs_fresh_start_without_reconnect_metric() {
    let mut h = Harness::standard();
    let (a, connected_at) = synced_alpha(&mut h, None);
    h.advance((connected_at + 23 * HOUR - Duration::from_secs(1)).since(h.now));
    assert!(h.tick().is_empty(), "no daily sync before 23 h");
    h.advance((connected_at + 25 * HOUR + Duration::from_millis(1)).since(h.now));
    let cmds = h.tick();
    let mut expected = vec!["Metric(DailySync)"];
    expected.extend(FRESH_START_ALPHA);
    // The relay is connected with live subscriptions open: they are replaced.
    expected.insert(3, "UnsubscribeAll");
    assert_eq!(tags(&cmds), expected);
    assert_eq!(count(&cmds, "Metric(LongReconnect)"), 0);
    assert_eq!(count(&cmds, "Metric(QuickReconnect)"), 0);
    let subs = subscribes(&cmds);
    assert_eq!(subs[0].1, live(vec![l1()]));
    assert_eq!(subs[1].1, live(l2_l3(&a.repo, &a.root)));
    assert_eq!(negentropy_filters(&cmds)[0], l1());
    assert_eq!(
        h.core
            .relay_summary(&url(REMOTE))
            .expect("known")
            .reconnects,
        0
    );
    // One UnsubscribeAll closed the old live REQs: two live plus five sessions now.
    assert_eq!(h.open_count(REMOTE), 7);
}

#[test]
fn daily_period_is_drawn_between_23_and_25_hours_per_seed() {
    let mut periods = Vec::new();
    for seed in 1..=6u64 {
        let mut h = Harness::new(settings(), seed);
        let (_, connected_at) = synced_alpha(&mut h, None);
        let mut start = connected_at;
        for round in 0..2 {
            // Ticks every minute from 22h59m to 25h01m after the (re)sync.
            h.advance((start + 23 * HOUR - MIN).since(h.now));
            assert!(h.tick().is_empty(), "seed {seed}: nothing at 22h59m");
            let mut fired = None;
            for _ in 0..122 {
                let cmds = h.tick_after(MIN);
                if count(&cmds, "Metric(DailySync)") == 1 {
                    fired = Some(h.now);
                    break;
                }
                assert!(cmds.is_empty(), "seed {seed}: unexpected {cmds:?}");
            }
            let fired = fired.expect("daily sync fired");
            let period = fired.since(start);
            assert!(
                period >= 23 * HOUR && period <= 25 * HOUR,
                "seed {seed} round {round}: period {period:?}"
            );
            periods.push(period);
            h.confirm_all(REMOTE);
            start = fired;
        }
    }
    let first = periods[0];
    assert!(
        periods.iter().any(|p| *p != first),
        "the period is random, not fixed: {periods:?}"
    );
}

#[test]
fn consolidation_keeps_within_budget_and_fetches_history_only_for_new_items() {
    let limits = RelayLimits {
        max_subscriptions: 3,
        max_filters: 10,
        max_limit: 500,
    };
    let keys = maintainer();
    let refs: Vec<String> = ["alpha", "beta", "gamma", "delta"]
        .iter()
        .map(|d| repo_ref(&keys, d))
        .collect();
    let ann = |d: &str, at: Millis| announcement(&keys, d, &[OWN, REMOTE], at);
    let mut h = Harness::standard();

    assert_eq!(h.own_batch(&[ann("alpha", h.now)]).len(), 1);
    assert_eq!(tags(&h.manage(REMOTE, Some(limits))), ["Connect"]);
    let cmds = h.connected(REMOTE, None);
    // One historic slot (a quarter of three): L2 history waits for the L1 session.
    assert_eq!(
        tags(&cmds),
        [
            "ClearPending",
            "ClearConfirmed",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
        ]
    );
    h.confirm_all(REMOTE);
    assert_eq!(h.open_count(REMOTE), 2);

    // Beta: no live slot is free, so the live REQs are consolidated.
    h.advance(TEN_SECS);
    let cmds = h.own_batch(&[ann("beta", h.now)]);
    assert_eq!(
        tags(&cmds),
        [
            "Metric(Consolidation)",
            "ClearPending",
            "UnsubscribeAll",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
        ]
    );
    let ab = [refs[0].as_str(), refs[1].as_str()];
    let mut want = vec![l1()];
    want.extend(l2(&ab));
    assert_eq!(sub_filters(&cmds, true), vec![bridged(want, h.now)]);
    assert_eq!(
        negentropy_filters(&cmds),
        vec![tagf('a', &[&refs[1]])],
        "history only for the new repo"
    );

    // Gamma fits in the one live slot left; its history queues behind beta's.
    h.advance(TEN_SECS);
    let cmds = h.own_batch(&[ann("gamma", h.now)]);
    assert_eq!(
        tags(&cmds),
        ["Subscribe(Live)", "Metric(BatchStarted(Negentropy))"]
    );
    assert_eq!(sub_filters(&cmds, true), vec![live(l2(&[&refs[2]]))]);
    assert_eq!(h.open_count(REMOTE), 3);

    // Delta: consolidate again; beta's unfinished session is closed with the pending state.
    let beta_session = h
        .historic_open(REMOTE)
        .into_iter()
        .map(|(sub, _)| sub)
        .next()
        .expect("beta session open");
    h.advance(TEN_SECS);
    let cmds = h.own_batch(&[ann("delta", h.now)]);
    assert_eq!(
        tags(&cmds),
        [
            "Metric(Consolidation)",
            "ClearPending",
            "UnsubscribeAll",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
        ]
    );
    assert!(
        matches!(&cmds[1], Command::ClearPending { closed, .. } if *closed == vec![beta_session.clone()])
    );
    let all: Vec<&str> = refs.iter().map(String::as_str).collect();
    let mut want = vec![l1()];
    want.extend(l2(&all));
    assert_eq!(sub_filters(&cmds, true), vec![bridged(want, h.now)]);
    assert_eq!(
        negentropy_filters(&cmds),
        vec![tagf('a', &all[1..])],
        "alpha is confirmed and is not fetched again"
    );

    h.confirm_all(REMOTE);
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert!(s.synced);
    assert_eq!(s.confirmed_repos, 4);
    assert!(s.subscriptions <= 3);
    assert_eq!(
        h.max_open(REMOTE),
        3,
        "the budget was reached, never exceeded"
    );
}

#[test]
fn self_subscriber_window_does_not_reset_and_then_adds_live_before_historic() {
    let mut h = Harness::standard();
    let (a, _) = synced_alpha(&mut h, None);
    h.advance(MIN);
    let start = h.now;
    let patch = root_event(&a.keys, 1617, &a.repo, "patch", h.now);
    assert!(h.own(&patch).is_empty());
    h.advance(Duration::from_millis(150));
    let pr = root_event(&a.keys, 1618, &a.repo, "pull request", h.now);
    assert!(
        h.own(&pr).is_empty(),
        "the second event does not flush early"
    );
    h.advance((start + Duration::from_millis(199)).since(h.now));
    assert!(h.tick().is_empty(), "nothing before the window elapses");
    // 200 ms after the first event, not after the second.
    let cmds = h.tick_after(Duration::from_millis(1));
    assert_eq!(
        tags(&cmds),
        [
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
            "Negentropy",
            "Negentropy",
        ]
    );
    let ids = [patch.id.to_hex(), pr.id.to_hex()];
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(sub_filters(&cmds, true), vec![live(l3(&ids))]);
    assert_eq!(negentropy_filters(&cmds), l3(&ids));
    h.confirm_all(REMOTE);
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!(s.confirmed_root_events, 3);
    assert!(s.synced);
}

#[test]
fn new_sync_filters_for_an_idle_managed_relay_open_the_connection() {
    let mut h = Harness::standard();
    assert!(
        h.manage(REMOTE, None).is_empty(),
        "nothing to sync: no connection"
    );
    let a = alpha(h.now);
    let cmds = h.own_batch(&a.events);
    assert_eq!(
        cmds,
        vec![Command::Connect { relay: url(REMOTE) }],
        "already managed: connect, no discovery"
    );
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tags(&cmds), FRESH_START_ALPHA);
    assert_fresh_start_filters(&cmds, &a);
}

#[test]
fn sync_computed_filters_opens_live_then_req_history_on_a_relay_without_nip77() {
    let mut h = Harness::standard();
    let (a, _) = synced_alpha(&mut h, Some(false));
    h.advance(MIN);
    let issue = root_event(&a.keys, 1621, &a.repo, "second issue", h.now);
    let id = issue.id.to_hex();
    let cmds = h.own_batch(&[issue]);
    assert_eq!(
        tags(&cmds),
        [
            "Subscribe(Live)",
            "Metric(BatchStarted(ReqEose))",
            "Subscribe(Historic)",
        ]
    );
    let subs = subscribes(&cmds);
    assert_eq!(subs[0].1, live(l3(&[&id])));
    assert_eq!(subs[1].1, paged(l3(&[&id]), 500), "full history: no since");
    assert!(matches!(subs[1].2, SubPurpose::Historic(_)));
    let done = h.eose(REMOTE, &subs[1].0, vec![PageReport::default(); 3]);
    assert_eq!(
        tags(&done),
        ["Unsubscribe", "Metric(BatchConfirmed(ReqEose))"]
    );
    assert_eq!(sub_id(&done[0]), subs[1].0);
    assert_eq!(
        h.core
            .relay_summary(&url(REMOTE))
            .expect("known")
            .confirmed_root_events,
        2
    );
}

#[test]
fn batch_confirms_only_when_every_negentropy_session_is_done() {
    let mut h = Harness::standard();
    let keys = maintainer();
    let repo = repo_ref(&keys, "alpha");
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, None);
    let cmds = h.connected(REMOTE, None);
    let sessions: Vec<_> = cmds
        .iter()
        .filter(|c| tag(c) == "Negentropy")
        .map(sub_id)
        .collect();
    assert_eq!(sessions.len(), 4, "L1 plus one session per L2 tag");
    let summary = |h: &Harness| h.core.relay_summary(&url(REMOTE)).expect("known");

    assert!(h
        .neg_done(REMOTE, &sessions[1], NegentropyOutcome::Done)
        .is_empty());
    assert!(h
        .neg_done(REMOTE, &sessions[2], NegentropyOutcome::Done)
        .is_empty());
    assert_eq!(summary(&h).confirmed_repos, 0, "one session still open");
    assert_eq!(
        tags(&h.neg_done(REMOTE, &sessions[0], NegentropyOutcome::Done)),
        ["Metric(BatchConfirmed(Negentropy))"],
        "the L1 batch is its own"
    );
    assert_eq!(summary(&h).confirmed_repos, 0);
    assert_eq!(summary(&h).pending_batches, 1);
    assert_eq!(
        tags(&h.neg_done(REMOTE, &sessions[3], NegentropyOutcome::Done)),
        ["Metric(BatchConfirmed(Negentropy))"]
    );
    let s = summary(&h);
    assert_eq!((s.confirmed_repos, s.pending_batches), (1, 0));
    assert!(s.synced);
    assert_eq!(
        h.core.reconstruct_filters(&url(REMOTE)),
        [vec![l1()], l2(&[&repo])].concat()
    );
}

#[test]
fn req_pagination_pages_with_until_and_confirms_after_the_last_page() {
    let mut h = Harness::standard();
    let keys = maintainer();
    let repo = repo_ref(&keys, "alpha");
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, None);
    let cmds = h.connected(REMOTE, Some(false));
    assert_eq!(
        tags(&cmds),
        [
            "ClearPending",
            "ClearConfirmed",
            "Subscribe(Live)",
            "Metric(BatchStarted(ReqEose))",
            "Subscribe(Historic)",
            "Subscribe(Live)",
            "Metric(BatchStarted(ReqEose))",
            "Subscribe(Historic)",
        ]
    );
    let subs = subscribes(&cmds);
    assert_eq!(subs[1].1, paged(vec![l1()], 500));
    assert_eq!(subs[3].1, paged(l2(&[&repo]), 500));
    let l2_sub = subs[3].0.clone();

    let oldest1 = Timestamp::from_secs(1_789_000_000);
    let full = |oldest| PageReport {
        received: 500,
        oldest: Some(oldest),
    };
    // Only the #a filter had a full page; #A and #q are finished.
    let cmds = h.eose(
        REMOTE,
        &l2_sub,
        vec![full(oldest1), PageReport::default(), PageReport::default()],
    );
    assert_eq!(tags(&cmds), ["Unsubscribe", "Subscribe(Historic)"]);
    assert_eq!(sub_id(&cmds[0]), l2_sub);
    assert_eq!(
        sub_filters(&cmds, false),
        vec![vec![tagf('a', &[&repo]).limit(500).until(oldest1)]]
    );
    let summary = |h: &Harness| h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!(summary(&h).confirmed_repos, 0, "more pages to come");

    let oldest2 = Timestamp::from_secs(1_788_000_000);
    let page2 = sub_id(&cmds[1]);
    let cmds = h.eose(REMOTE, &page2, vec![full(oldest2)]);
    assert_eq!(
        sub_filters(&cmds, false),
        vec![vec![tagf('a', &[&repo]).limit(500).until(oldest2)]]
    );
    assert_eq!(summary(&h).confirmed_repos, 0);

    let page3 = sub_id(&cmds[1]);
    let cmds = h.eose(REMOTE, &page3, vec![PageReport::default()]);
    assert_eq!(
        tags(&cmds),
        ["Unsubscribe", "Metric(BatchConfirmed(ReqEose))"]
    );
    assert_eq!(summary(&h).confirmed_repos, 1);
}

#[test]
fn nip77_unsupported_switches_the_part_and_queued_parts_to_req_and_warns_once() {
    let limits = RelayLimits {
        max_subscriptions: 8,
        max_filters: 10,
        max_limit: 500,
    };
    let mut h = Harness::standard();
    let a = alpha(h.now);
    h.own_batch(&a.events);
    h.manage(REMOTE, Some(limits));
    let cmds = h.connected(REMOTE, None);
    // Two historic slots: L1 and the first L2 session; five sessions queue.
    assert_eq!(
        tags(&cmds),
        [
            "ClearPending",
            "ClearConfirmed",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
        ]
    );
    let sessions: Vec<_> = cmds
        .iter()
        .filter(|c| tag(c) == "Negentropy")
        .map(sub_id)
        .collect();
    let cmds = h.neg_done(REMOTE, &sessions[0], NegentropyOutcome::Unsupported);
    assert_eq!(
        tags(&cmds),
        ["Metric(Nip77Unsupported)", "Subscribe(Historic)"]
    );
    assert_eq!(sub_filters(&cmds, false), vec![paged(vec![l1()], 500)]);
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!(s.nip77, Nip77Support::Unsupported);

    let cmds = h.neg_done(REMOTE, &sessions[1], NegentropyOutcome::Unsupported);
    assert_eq!(tags(&cmds), ["Subscribe(Historic)"], "warned only once");
    assert_eq!(
        sub_filters(&cmds, false),
        vec![vec![tagf('a', &[&a.repo]).limit(500)]]
    );

    // Finish everything: every queued part now runs as a REQ.
    let mut rest = Vec::new();
    for _ in 0..20 {
        let Some((sub, open)) = h.historic_open(REMOTE).into_iter().next() else {
            break;
        };
        assert_eq!(open.kind, SubKind::Historic);
        rest.extend(h.eose(
            REMOTE,
            &sub,
            vec![PageReport::default(); open.filters.len()],
        ));
    }
    assert_eq!(count(&rest, "Negentropy"), 0);
    assert_eq!(count(&rest, "Metric(Nip77Unsupported)"), 0);
    assert_eq!(
        count(&rest, "Subscribe(Historic)"),
        5,
        "the five queued parts"
    );
    assert_eq!(count(&rest, "Metric(BatchConfirmed(ReqEose))"), 2);
    let historic: Vec<_> = sub_filters(&rest, false).into_iter().flatten().collect();
    assert_eq!(
        historic,
        vec![
            tagf('A', &[&a.repo]).limit(500),
            tagf('q', &[&a.repo]).limit(500),
            tagf('e', &[&a.root]).limit(500),
            tagf('E', &[&a.root]).limit(500),
            tagf('q', &[&a.root]).limit(500),
        ]
    );
    assert!(h.core.relay_summary(&url(REMOTE)).expect("known").synced);
}

#[test]
fn newer_announcement_dropping_the_relay_unsubscribes_its_live_filters() {
    let mut h = Harness::standard();
    let (a, _) = synced_alpha(&mut h, None);
    let item_sub = h
        .open_subs(REMOTE)
        .into_iter()
        .find(|(_, s)| s.filters.contains(&tagf('a', &[&a.repo]).limit(0)))
        .map(|(sub, _)| sub)
        .expect("live L2 subscription open");
    h.advance(MIN);
    let newer = announcement(&a.keys, "alpha", &[OWN], h.now);
    let cmds = h.own_batch(&[newer]);
    assert_eq!(
        cmds,
        vec![Command::Unsubscribe {
            relay: url(REMOTE),
            sub: item_sub,
        }]
    );
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!((s.desired_repos, s.desired_root_events), (0, 0));
    assert_eq!((s.confirmed_repos, s.confirmed_root_events), (0, 0));
    let open = h.open_subs(REMOTE);
    assert_eq!(open.len(), 1, "only the L1 live REQ remains");
    assert_eq!(open[0].1.filters, live(vec![l1()]));
    assert_eq!(h.core.reconstruct_filters(&url(REMOTE)), vec![l1()]);
}

#[test]
fn empty_target_is_reaped_after_the_grace_period_and_not_reconnected() {
    let mut h = Harness::standard();
    let (a, _) = synced_alpha(&mut h, None);
    h.advance(MIN);
    h.own_batch(&[announcement(&a.keys, "alpha", &[OWN], h.now)]);
    let emptied = h.now;
    let mut reaped_at = None;
    for _ in 0..30 {
        let cmds = h.tick_after(Duration::from_secs(30));
        if cmds.is_empty() {
            continue;
        }
        assert_eq!(
            cmds,
            vec![Command::Disconnect {
                relay: url(REMOTE),
                reason: DisconnectReason::EmptyTarget,
            }]
        );
        assert!(reaped_at.is_none(), "disconnected once");
        reaped_at = Some(h.now);
    }
    let reaped_at = reaped_at.expect("reaped");
    let waited = reaped_at.since(emptied);
    assert!(
        waited >= 10 * MIN && waited <= 11 * MIN + Duration::from_secs(30),
        "reaped after {waited:?}"
    );
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert!(s.reaped);
    assert_eq!(s.connection, ConnectionStatus::Disconnected);
    for _ in 0..60 {
        assert!(h.tick_after(MIN).is_empty(), "a reaped relay stays down");
    }
    // Its target comes back: the relay is connected again and synced from scratch.
    let cmds = h.own_batch(&[announcement(&a.keys, "alpha", &[OWN, REMOTE], h.now)]);
    assert_eq!(cmds, vec![Command::Connect { relay: url(REMOTE) }]);
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tags(&cmds), FRESH_START_ALPHA);
    assert_fresh_start_filters(&cmds, &a);
}

#[test]
fn bootstrap_relay_with_empty_target_is_never_reaped() {
    let boot = "wss://bootstrap.example";
    let mut h = Harness::standard();
    let cmds = h.send(Input::ManageRelay {
        url: url(boot),
        bootstrap: true,
        suspended: false,
        limits: None,
    });
    assert_eq!(
        tags(&cmds),
        ["Connect"],
        "bootstrap relays sync without a target"
    );
    let cmds = h.connected(boot, None);
    assert_eq!(
        tags(&cmds),
        [
            "ClearPending",
            "ClearConfirmed",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
        ]
    );
    h.confirm_all(boot);
    for _ in 0..120 {
        assert!(h.tick_after(MIN).is_empty());
    }
    let s = h.core.relay_summary(&url(boot)).expect("known");
    assert!(!s.reaped);
    assert_eq!(s.connection, ConnectionStatus::Connected);
}

#[test]
fn relay_with_a_pending_batch_is_not_reaped_until_the_batch_ends() {
    let mut h = Harness::standard();
    let keys = maintainer();
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, None);
    let cmds = h.connected(REMOTE, Some(false));
    let subs = subscribes(&cmds);
    let (mut l1_page, l2_page) = (subs[1].0.clone(), subs[3].0.clone());
    // The L2 part finishes; the repo then leaves the relay's target.
    h.eose(REMOTE, &l2_page, vec![PageReport::default(); 3]);
    h.advance(Duration::from_secs(1));
    let cmds = h.own_batch(&[announcement(&keys, "alpha", &[OWN], h.now)]);
    assert_eq!(tags(&cmds), ["Unsubscribe"]);
    let emptied = h.now;

    // Layer 1 history keeps paging for 20 minutes, each page within the EOSE timeout.
    let mut oldest = 1_789_000_000u64;
    while h.now.since(emptied) < 20 * MIN {
        h.advance(Duration::from_secs(20));
        oldest -= 1_000;
        let cmds = h.eose(
            REMOTE,
            &l1_page,
            vec![PageReport {
                received: 500,
                oldest: Some(Timestamp::from_secs(oldest)),
            }],
        );
        assert_eq!(tags(&cmds), ["Unsubscribe", "Subscribe(Historic)"]);
        l1_page = sub_id(&cmds[1]);
    }
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert!(!s.reaped);
    assert_eq!(s.pending_batches, 1);

    // Once the batch ends, the next reaper pass (at most a minute later) disconnects it.
    let mut cmds = h.eose(REMOTE, &l1_page, vec![PageReport::default()]);
    cmds.extend(h.tick_after(MIN));
    assert_eq!(
        tags(&cmds),
        [
            "Unsubscribe",
            "Metric(BatchConfirmed(ReqEose))",
            "Disconnect(EmptyTarget)",
        ]
    );
}

#[test]
fn rate_limit_notice_pauses_new_subscriptions_for_65_seconds() {
    let mut h = Harness::standard();
    let (a, _) = synced_alpha(&mut h, None);
    h.advance(MIN);
    let limited_at = h.now;
    let cmds = h.send(Input::Notice {
        relay: url(REMOTE),
        message: "rate-limited: slow down".into(),
    });
    assert_eq!(tags(&cmds), ["Metric(RateLimited)"]);

    h.advance(Duration::from_secs(1));
    let issue = root_event(&a.keys, 1621, &a.repo, "late issue", h.now);
    let id = issue.id.to_hex();
    assert!(
        h.own_batch(&[issue]).is_empty(),
        "no REQ while cooling down"
    );
    for secs in [10, 30, 60] {
        h.advance((limited_at + Duration::from_secs(secs)).since(h.now));
        assert!(h.tick().is_empty(), "still cooling down at {secs}s");
    }
    h.advance((limited_at + Duration::from_millis(64_999)).since(h.now));
    assert!(h.tick().is_empty());
    let cmds = h.tick_after(Duration::from_millis(1));
    // The NOTICE named no REQ, so any may have been dropped (a live one silently): once the
    // cooldown ends everything is rebuilt, the live REQ reaching back over the gap.
    assert_eq!(
        tags(&cmds),
        [
            "Metric(Consolidation)",
            "ClearPending",
            "UnsubscribeAll",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
            "Negentropy",
            "Negentropy",
        ]
    );
    let subs = sub_filters(&cmds, true);
    assert_eq!(subs.len(), 1, "one packed live REQ");
    let bridge = (h.now - Duration::from_secs(15 * 60)).to_timestamp();
    assert!(
        subs[0]
            .iter()
            .all(|f| f.since == Some(bridge) && f.limit.is_none()),
        "every live filter reaches back to the quick-reconnect window: {:?}",
        subs[0]
    );
    let json = serde_json::to_string(&subs[0]).expect("filters as JSON");
    assert!(json.contains(&id), "the late issue is covered live: {json}");
}

#[test]
fn batch_without_eose_fails_after_the_timeout_and_the_relay_backs_off() {
    let mut h = Harness::standard();
    let keys = maintainer();
    let repo = repo_ref(&keys, "alpha");
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, None);
    let started = h.now;
    let cmds = h.connected(REMOTE, Some(false));
    let historic: Vec<_> = subscribes(&cmds)
        .into_iter()
        .filter(|(_, _, p)| *p != SubPurpose::Live)
        .map(|(sub, _, _)| sub)
        .collect();
    assert_eq!(historic.len(), 2);

    h.advance(Duration::from_millis(29_999));
    assert!(h.tick().is_empty(), "the EOSE timeout has not passed");
    let cmds = h.tick_after(Duration::from_millis(1));
    assert_eq!(
        tags(&cmds),
        [
            "Unsubscribe",
            "Metric(BatchFailed(ReqEose))",
            "Unsubscribe",
            "Metric(BatchFailed(ReqEose))",
        ]
    );
    assert_eq!(sub_id(&cmds[0]), historic[0]);
    assert_eq!(sub_id(&cmds[2]), historic[1]);
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert!(s.health.failures > 0, "health records the failure");
    assert_eq!(s.confirmed_repos, 0);
    let retry = s.health.next_retry.expect("backing off");
    assert!(retry > h.now);

    // Nothing is re-issued during the backoff.
    h.advance(retry.since(h.now) - Duration::from_millis(1));
    assert!(h.tick().is_empty());
    let cmds = h.tick_after(Duration::from_millis(1));
    assert_eq!(
        tags(&cmds),
        [
            "Metric(Consolidation)",
            "ClearPending",
            "UnsubscribeAll",
            "Subscribe(Live)",
            "Metric(BatchStarted(ReqEose))",
            "Subscribe(Historic)",
            "Metric(BatchStarted(ReqEose))",
            "Subscribe(Historic)",
        ]
    );
    let mut want_live = vec![l1()];
    want_live.extend(l2(&[&repo]));
    assert_eq!(sub_filters(&cmds, true), vec![bridged(want_live, h.now)]);
    assert_eq!(
        sub_filters(&cmds, false),
        vec![paged(l2(&[&repo]), 500), paged(vec![l1()], 500)]
    );
    assert!(h.now.since(started) > Duration::from_secs(30));
}

#[test]
fn direct_entry_points_relate_as_designed() {
    // daily_sync is fresh_start plus its metric; consolidate rebuilds live from confirmed only.
    let run = |f: &dyn Fn(&mut Harness) -> Vec<Command>| -> (Vec<Command>, Alpha) {
        let mut h = Harness::standard();
        let (a, _) = synced_alpha(&mut h, None);
        h.advance(HOUR);
        (f(&mut h), a)
    };
    let (fresh, a) = run(&|h: &mut Harness| h.run(|c, now| c.fresh_start(now, &url(REMOTE))));
    let (daily, _) = run(&|h: &mut Harness| h.run(|c, now| c.daily_sync(now, &url(REMOTE))));
    let mut expected = FRESH_START_ALPHA.to_vec();
    expected.insert(2, "UnsubscribeAll");
    assert_eq!(tags(&fresh), expected);
    assert_eq!(tag(&daily[0]), "Metric(DailySync)");
    assert_eq!(&daily[1..], &fresh[..], "daily_sync = metric + fresh_start");

    let (consolidated, _) =
        run(&|h: &mut Harness| h.run(|c, now| c.consolidate(now, &url(REMOTE))));
    assert_eq!(
        tags(&consolidated),
        [
            "Metric(Consolidation)",
            "ClearPending",
            "UnsubscribeAll",
            "Subscribe(Live)",
        ],
        "live only: nothing new, layer 1 confirmed"
    );
    let mut want = vec![l1()];
    want.extend(l2_l3(&a.repo, &a.root));
    assert_eq!(
        sub_filters(&consolidated, true),
        vec![bridged(want, T0 + HOUR)]
    );

    // Unknown relays are ignored.
    let mut h = Harness::standard();
    assert!(h
        .run(|c, now| c.fresh_start(now, &url("wss://unknown.example")))
        .is_empty());
}

#[test]
fn reconstruct_filters_and_compute_actions_follow_confirmed_pending_and_targets() {
    let mut h = Harness::standard();
    let a = alpha(h.now);
    h.own_batch(&a.events);
    h.manage(REMOTE, None);
    h.connected(REMOTE, None);
    // Pending is not confirmed: only L1 can be rebuilt.
    assert_eq!(h.core.reconstruct_filters(&url(REMOTE)), vec![l1()]);
    assert!(compute_actions(&h.core.targets, &h.core.pending, &h.core.relays).is_empty());
    h.confirm_all(REMOTE);
    assert_eq!(
        h.core.reconstruct_filters(&url(REMOTE)),
        [vec![l1()], l2_l3(&a.repo, &a.root)].concat()
    );
    assert!(compute_actions(&h.core.targets, &h.core.pending, &h.core.relays).is_empty());
    assert_eq!(derive_relay_targets(&h.core.index), h.core.targets);

    // A new root held back by a cooldown is exactly target − pending − confirmed.
    h.send(Input::Notice {
        relay: url(REMOTE),
        message: "slow down".into(),
    });
    let issue = root_event(&a.keys, 1621, &a.repo, "held back", h.now);
    let event_id = issue.id;
    h.own_batch(&[issue]);
    assert_eq!(derive_relay_targets(&h.core.index), h.core.targets);
    let relay = h.core.relay_id(&url(REMOTE)).expect("interned");
    let root = RootId(h.core.symbols.roots.get(&event_id).expect("interned"));
    assert_eq!(
        compute_actions(&h.core.targets, &h.core.pending, &h.core.relays),
        vec![Action::Add(AddFilters {
            relay,
            repos: vec![],
            root_events: vec![root],
        })]
    );
    // Once started, the root is pending and no longer new.
    let cmds = h.tick_after(Duration::from_secs(65));
    assert_eq!(count(&cmds, "Subscribe(Live)"), 1);
    assert!(compute_actions(&h.core.targets, &h.core.pending, &h.core.relays).is_empty());

    // A disconnected relay is skipped: it gets the full diff when it reconnects.
    h.disconnected(REMOTE);
    h.advance(Duration::from_secs(1));
    let beta = announcement(&a.keys, "beta", &[OWN, REMOTE], h.now);
    assert!(h.own_batch(&[beta]).is_empty(), "still backing off");
    assert!(compute_actions(&h.core.targets, &h.core.pending, &h.core.relays).is_empty());
}

/// Whether the commands fetch layer-1 history no later than `since` (a session or a page).
fn fetches_l1_history_since(cmds: &[Command], since_ts: Timestamp) -> bool {
    let kinds = l1().kinds;
    let covers = |f: &nostr::Filter| f.kinds == kinds && f.since.is_none_or(|s| s <= since_ts);
    cmds.iter().any(|c| match c {
        Command::Negentropy { filter, .. } => covers(filter),
        Command::Subscribe {
            filters,
            purpose: SubPurpose::Historic(_),
            ..
        } => filters.iter().any(covers),
        _ => false,
    })
}

#[test]
fn quick_reconnect_l1_catch_up_dropped_by_a_consolidation_is_redone() {
    let limits = RelayLimits {
        max_subscriptions: 3,
        max_filters: 10,
        max_limit: 500,
    };
    let mut h = Harness::standard();
    let keys = maintainer();
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, Some(limits));
    h.connected(REMOTE, None);
    h.confirm_all(REMOTE);
    h.advance(HOUR);
    let disconnected_at = h.now;
    h.disconnected(REMOTE);
    h.advance(Duration::from_secs(1));
    // A new repo while down takes the last live slot on reconnect.
    h.own_batch(&[announcement(&keys, "beta", &[OWN, REMOTE], h.now)]);
    h.advance(MIN);
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tag(&cmds[0]), "Metric(QuickReconnect)");
    assert_eq!(h.open_count(REMOTE), 3);
    // Another one during the catch-up: the relay's REQs are consolidated, which closes the
    // L1 catch-up page. Layer 1 history must then be fetched again.
    h.advance(Duration::from_secs(1));
    let mut after = h.own_batch(&[announcement(&keys, "gamma", &[OWN, REMOTE], h.now)]);
    assert_eq!(tag(&after[0]), "Metric(Consolidation)");
    after.extend(h.confirm_all(REMOTE));
    let since_ts = (disconnected_at - 15 * MIN).to_timestamp();
    assert!(
        fetches_l1_history_since(&after, since_ts),
        "announcements published while disconnected are fetched: {:?}",
        tags(&after)
    );
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert!(s.synced);
    assert_eq!(s.confirmed_repos, 3);
    assert!(h.max_open(REMOTE) <= 3);
}

#[test]
fn quick_reconnect_l1_catch_up_that_times_out_is_redone() {
    let mut h = Harness::standard();
    synced_alpha(&mut h, None);
    h.advance(HOUR);
    let disconnected_at = h.now;
    h.disconnected(REMOTE);
    h.advance(MIN);
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tag(&cmds[0]), "Metric(QuickReconnect)");
    // No EOSE for any catch-up page.
    let cmds = h.tick_after(Duration::from_secs(30));
    assert_eq!(count(&cmds, "Metric(BatchFailed(ReqEose))"), 2);
    let retry = h
        .core
        .relay_summary(&url(REMOTE))
        .expect("known")
        .health
        .next_retry
        .expect("backing off");
    h.advance(retry.since(h.now));
    let mut after = h.tick();
    assert_eq!(tag(&after[0]), "Metric(Consolidation)");
    after.extend(h.confirm_all(REMOTE));
    let since_ts = (disconnected_at - 15 * MIN).to_timestamp();
    assert!(
        fetches_l1_history_since(&after, since_ts),
        "the failed L1 catch-up is retried: {:?}",
        tags(&after)
    );
    assert!(h.core.relay_summary(&url(REMOTE)).expect("known").synced);
}

#[test]
fn l1_catch_up_cut_by_a_second_disconnect_is_not_narrowed() {
    let mut h = Harness::standard();
    synced_alpha(&mut h, None);
    h.advance(HOUR);
    let first_disconnect = h.now;
    h.disconnected(REMOTE);
    h.advance(MIN);
    h.connected(REMOTE, None);
    // The catch-up is still running when the connection drops again, 10 s later.
    h.advance(Duration::from_secs(10));
    h.disconnected(REMOTE);
    h.advance(MIN);
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tag(&cmds[0]), "Metric(QuickReconnect)");
    let first_since = (first_disconnect - 15 * MIN).to_timestamp();
    assert!(
        fetches_l1_history_since(&cmds, first_since),
        "the second catch-up still covers the first gap: {cmds:?}"
    );
}

#[test]
fn rate_limit_holds_queued_historic_parts_until_the_cooldown_ends() {
    let limits = RelayLimits {
        max_subscriptions: 8,
        max_filters: 10,
        max_limit: 500,
    };
    let mut h = Harness::standard();
    let a = alpha(h.now);
    h.own_batch(&a.events);
    h.manage(REMOTE, Some(limits));
    let cmds = h.connected(REMOTE, None);
    let sessions: Vec<_> = cmds
        .iter()
        .filter(|c| tag(c) == "Negentropy")
        .map(sub_id)
        .collect();
    assert_eq!(sessions.len(), 2, "two historic slots; five parts queued");
    let limited_at = h.now;
    let cmds = h.send(Input::Notice {
        relay: url(REMOTE),
        message: "rate limit exceeded".into(),
    });
    assert_eq!(tags(&cmds), ["Metric(RateLimited)"]);
    // A slot frees up, but no queued part starts during the cooldown.
    h.advance(Duration::from_secs(5));
    let cmds = h.neg_done(REMOTE, &sessions[0], NegentropyOutcome::Done);
    assert_eq!(tags(&cmds), ["Metric(BatchConfirmed(Negentropy))"]);
    h.advance((limited_at + Duration::from_millis(64_999)).since(h.now));
    assert!(h.tick().is_empty());
    let cmds = h.tick_after(Duration::from_millis(1));
    // Any REQ sent before the NOTICE may have been dropped: everything is rebuilt (the parts
    // re-planned within the budget, the live REQ reaching back over the gap).
    assert_eq!(
        tags(&cmds),
        [
            "Metric(Consolidation)",
            "ClearPending",
            "UnsubscribeAll",
            "Subscribe(Live)",
            "Metric(BatchStarted(Negentropy))",
            "Negentropy",
            "Negentropy",
        ],
        "nothing started during the cooldown; then a consolidation"
    );
}

#[test]
fn root_event_before_its_announcement_is_kept_and_synced() {
    let mut h = Harness::standard();
    let a = alpha(h.now);
    // The issue arrives first: no relay is known for its repo yet.
    assert!(h.own_batch(&a.events[1..]).is_empty());
    assert!(h.core.targets.by_relay.is_empty());
    h.advance(MIN);
    let cmds = h.own_batch(&a.events[..1]);
    assert_eq!(cmds, vec![Command::Discovered { relay: url(REMOTE) }]);
    let s = h.core.targets.by_relay.values().next().expect("one target");
    assert_eq!((s.repos.len(), s.roots.len()), (1, 1));
    h.manage(REMOTE, None);
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tags(&cmds), FRESH_START_ALPHA);
    assert_fresh_start_filters(&cmds, &a);
}

#[test]
fn small_budget_is_never_exceeded_under_churn() {
    let limits = RelayLimits {
        max_subscriptions: 3,
        max_filters: 10,
        max_limit: 500,
    };
    for seed in 1..=6u64 {
        let nip77 = seed % 2 == 0;
        // `churn` checks the budget after every step.
        let mut h = churn(seed, nip77, limits, 200);
        // Everything still converges.
        for _ in 0..60 {
            h.finish_connecting(REMOTE, (!nip77).then_some(false));
            h.confirm_all(REMOTE);
            h.tick_after(MIN);
        }
        let s = h.core.relay_summary(&url(REMOTE)).expect("known");
        assert!(s.synced, "seed {seed}: converged: {s:?}");
        assert!(h.max_open(REMOTE) <= 3);
        assert!(h.log.len() > 100, "seed {seed}: the run did something");
    }
}
