//! Regression tests for the upstream defects listed in DESIGN.md section 4. Each test is
//! written so that the upstream behaviour would make it fail.

mod support_core;

use grasp_sync::core::pagination::{PageCursor, PageReport, PageStep};
use grasp_sync::core::relay_index::ConnectionStatus;
use grasp_sync::core::settings::RelayLimits;
use grasp_sync::core::{Command, DisconnectReason, Input, Millis, SubPurpose, SyncCore};
use nostr::{Event, Filter, Keys, Timestamp};
use std::collections::BTreeSet;
use std::time::Duration;
use support_core::*;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Repo "alpha" listing our relay and the remote one, with one issue; synced.
fn synced_alpha(h: &mut Harness) -> (Keys, String, String) {
    let keys = maintainer();
    let repo = repo_ref(&keys, "alpha");
    let ann = announcement(&keys, "alpha", &[OWN, REMOTE], h.now);
    let issue = root_event(&keys, 1621, &repo, "crash on start", h.now);
    let root = issue.id.to_hex();
    h.sync_up(&[ann, issue], REMOTE, None, None);
    (keys, repo, root)
}

/// Historic `Subscribe` filters of a command list, flattened.
fn historic_filters(cmds: &[Command]) -> Vec<Filter> {
    sub_filters(cmds, false).into_iter().flatten().collect()
}

/// Upstream built `since` from a duration, which gave a 1970 date.
#[test]
fn quick_reconnect_since_is_an_absolute_time_near_disconnect_minus_15_min() {
    let mut h = Harness::standard();
    let events_at = h.now;
    synced_alpha(&mut h);
    // The self-subscriber's own resume point is an absolute time too.
    assert_eq!(
        h.core.self_subscriber_since(),
        Some((events_at - 15 * MIN).to_timestamp())
    );
    h.advance(HOUR);
    let disconnected_at = h.now;
    h.disconnected(REMOTE);
    h.advance(2 * MIN);
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tag(&cmds[0]), "Metric(QuickReconnect)");
    let historic = historic_filters(&cmds);
    assert_eq!(historic.len(), 7, "L1 plus three L2 and three L3 filters");
    let expected = (disconnected_at - 15 * MIN).to_timestamp();
    for f in &historic {
        let since = f.since.expect("catch-up carries since");
        assert_eq!(since, expected);
        // 2026, not 1970: within a day of the disconnect.
        assert!(
            since.as_secs() > 1_700_000_000,
            "since {since} is a real date"
        );
        let gap = disconnected_at.as_secs() - since.as_secs();
        assert_eq!(gap, 900);
    }
}

/// Upstream measured the 15 minutes from the last connect.
#[test]
fn fifteen_minute_rule_is_measured_from_disconnect_not_from_last_connect() {
    let mut h = Harness::standard();
    synced_alpha(&mut h);
    let connected_at = h.now;
    // Stay connected for an hour, with the timers running.
    for _ in 0..60 {
        assert!(h.tick_after(MIN).is_empty());
    }
    assert_eq!(
        h.core
            .relay_summary(&url(REMOTE))
            .expect("known")
            .last_connected,
        Some(connected_at)
    );
    h.disconnected(REMOTE);
    h.advance(MIN);
    let cmds = h.connected(REMOTE, None);
    assert_eq!(tag(&cmds[0]), "Metric(QuickReconnect)");
    assert_eq!(count(&cmds, "Metric(LongReconnect)"), 0);
    assert_eq!(count(&cmds, "ClearConfirmed"), 0, "confirmed state kept");
}

/// Upstream's quick reconnect resubscribed layer 1 only.
#[test]
fn quick_reconnect_catches_up_layer2_and_layer3() {
    let mut h = Harness::standard();
    let (_, repo, root) = synced_alpha(&mut h);
    h.advance(HOUR);
    let disconnected_at = h.now;
    h.disconnected(REMOTE);
    h.advance(MIN);
    let cmds = h.connected(REMOTE, None);
    let ts = (disconnected_at - 15 * MIN).to_timestamp();
    let historic = historic_filters(&cmds);
    let mut expected = paged(since(vec![l1()], ts), 500);
    expected.extend(paged(since(l2(&[&repo]), ts), 500));
    expected.extend(paged(since(l3(&[&root]), ts), 500));
    assert_eq!(
        historic, expected,
        "catch-up for the repo and its root event"
    );
    let mut live_expected = vec![l1()];
    live_expected.extend(l2(&[&repo]));
    live_expected.extend(l3(&[&root]));
    assert_eq!(sub_filters(&cmds, true), vec![live(live_expected)]);
    // The catch-up confirms, and the relay is synced again.
    h.confirm_all(REMOTE);
    assert!(h.core.relay_summary(&url(REMOTE)).expect("known").synced);
}

/// Upstream held a global mutex across network I/O. The core is a plain value: it can be
/// moved to another task, and `handle` depends only on its inputs and the seed.
#[test]
fn core_is_a_plain_send_value_and_handle_is_deterministic() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<SyncCore>();

    let keys = maintainer();
    let repo = repo_ref(&keys, "alpha");
    let events: Vec<Event> = vec![
        announcement(&keys, "alpha", &[OWN, REMOTE], T0),
        root_event(&keys, 1621, &repo, "one", T0),
        root_event(&keys, 1617, &repo, "two", T0),
        announcement(&keys, "beta", &[OWN, REMOTE, "wss://third.example"], T0),
    ];
    let script = move |seed: u64| -> Vec<(Millis, Command)> {
        let mut h = Harness::new(settings(), seed);
        h.own_batch(&events);
        h.manage(REMOTE, None);
        h.manage("wss://third.example", None);
        h.connected(REMOTE, None);
        h.connected("wss://third.example", None);
        // Negentropy sessions time out (several parts per batch fail together).
        h.tick_after(Duration::from_secs(121));
        h.tick_after(MIN);
        // A relay that does not speak NIP-77 answers with a NOTICE while sessions run.
        h.send(Input::Notice {
            relay: url(REMOTE),
            message: "ERROR: could not parse command".into(),
        });
        h.confirm_all(REMOTE);
        h.disconnected("wss://third.example");
        h.tick_after(MIN);
        h.connected("wss://third.example", None);
        h.confirm_all("wss://third.example");
        h.tick_after(26 * HOUR);
        h.log
    };
    let first = script(42);
    assert!(first.len() > 40, "the script exercises the core");
    // The same script on other threads, each moving its core there: no lock, no shared state.
    let others: Vec<_> = (0..4)
        .map(|_| {
            let run = script.clone();
            std::thread::spawn(move || run(42))
        })
        .collect();
    for other in others {
        let other = other.join().expect("thread ran");
        let diverge = (0..first.len().max(other.len())).find(|i| first.get(*i) != other.get(*i));
        if let Some(i) = diverge {
            panic!(
                "same inputs and seed, different commands at #{i}: {:?} vs {:?}",
                first.get(i),
                other.get(i)
            );
        }
    }
    // A long random run (refusals, rate limits, reconnects, removals) is just as repeatable.
    let limits = RelayLimits {
        max_subscriptions: 3,
        max_filters: 10,
        max_limit: 500,
    };
    for nip77 in [true, false] {
        let runs: Vec<_> = (0..3)
            .map(|_| std::thread::spawn(move || churn(11, nip77, limits, 300).log))
            .collect();
        let logs: Vec<_> = runs
            .into_iter()
            .map(|r| r.join().expect("thread ran"))
            .collect();
        assert!(logs[0].len() > 100);
        for other in &logs[1..] {
            let diverge =
                (0..logs[0].len().max(other.len())).find(|i| logs[0].get(*i) != other.get(*i));
            assert!(
                diverge.is_none(),
                "churn runs diverge at #{:?}: {:?} vs {:?}",
                diverge,
                diverge.and_then(|i| logs[0].get(i)),
                diverge.and_then(|i| other.get(i))
            );
        }
    }
    assert!(first
        .iter()
        .any(|(_, c)| tag(c) == "Metric(Nip77Unsupported)"));
    assert!(first
        .iter()
        .any(|(_, c)| tag(c) == "Metric(BatchFailed(Negentropy))"));
    assert!(first.iter().any(|(_, c)| tag(c) == "Metric(DailySync)"));
}

/// Upstream's self-subscriber bypassed compute_actions and re-subscribed everything.
#[test]
fn self_subscriber_batch_subscribes_only_the_new_root() {
    let mut h = Harness::standard();
    let (keys, repo, first_root) = synced_alpha(&mut h);
    h.advance(MIN);
    let patch = root_event(&keys, 1617, &repo, "new patch", h.now);
    let id = patch.id.to_hex();
    let cmds = h.own_batch(std::slice::from_ref(&patch));
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
    assert_eq!(sub_filters(&cmds, true), vec![live(l3(&[&id]))]);
    assert_eq!(negentropy_filters(&cmds), l3(&[&id]));
    let text = format!("{cmds:?}");
    assert!(!text.contains(&first_root), "the old root is not re-sent");
    assert!(!text.contains(&repo), "the repo is not re-sent");
    h.confirm_all(REMOTE);

    // The same event again, and an unrelated kind: nothing at all.
    h.advance(MIN);
    let other = nostr::EventBuilder::text_note("hello")
        .custom_created_at(h.now.to_timestamp())
        .sign_with_keys(&keys)
        .expect("signs");
    assert!(h.own_batch(&[patch, other]).is_empty());
    // Nothing happens on later ticks either: no periodic re-subscription.
    for _ in 0..10 {
        assert!(h.tick_after(Duration::from_secs(5)).is_empty());
    }
}

/// Upstream reaped relays with nothing *confirmed*, killing relays that were still syncing.
#[test]
fn relay_still_syncing_with_nothing_confirmed_is_not_reaped() {
    let mut h = Harness::standard();
    let keys = maintainer();
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, None);
    h.connected(REMOTE, None);
    // No session ever completes: nothing is confirmed for half an hour.
    let mut all = Vec::new();
    for _ in 0..60 {
        all.extend(h.tick_after(Duration::from_secs(30)));
    }
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!((s.confirmed_repos, s.desired_repos), (0, 1));
    assert!(
        !all.iter().any(|c| matches!(c, Command::Disconnect { .. })),
        "a relay with a target is never reaped"
    );
    assert!(!s.reaped);
    assert_eq!(s.connection, ConnectionStatus::Connected);
}

/// A simulated relay for pagination: `(created_at, id)` pairs, newest first, ties by id.
fn serve(store: &[(u64, u32)], f: &Filter) -> (PageReport, Vec<u32>) {
    let mut hits: Vec<&(u64, u32)> = store
        .iter()
        .filter(|(ts, _)| f.until.is_none_or(|u| *ts <= u.as_secs()))
        .filter(|(ts, _)| f.since.is_none_or(|s| *ts >= s.as_secs()))
        .collect();
    hits.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    hits.truncate(f.limit.unwrap_or(usize::MAX));
    let report = PageReport {
        received: u32::try_from(hits.len()).expect("small"),
        oldest: hits.last().map(|e| Timestamp::from_secs(e.0)),
    };
    (report, hits.iter().map(|e| e.1).collect())
}

/// Upstream counted only accepted events (so a page of duplicates ended the walk) and could
/// loop for ever on a run of equal timestamps.
#[test]
fn pagination_counts_every_received_event_and_ends_on_equal_timestamps() {
    // A page whose events our relay already had (none accepted) is still a full page.
    let mut c = PageCursor::new(l1(), 500, 1000);
    let step = c.advance(PageReport {
        received: 500,
        oldest: Some(Timestamp::from_secs(1_789_999_000)),
    });
    assert_eq!(
        step,
        PageStep::Next(l1().limit(500).until(Timestamp::from_secs(1_789_999_000)))
    );
    assert_eq!(c.received_total(), 500);

    // 1200 events share one second, then 300 older ones: the walk reaches them all and ends.
    let run_at = 1_790_000_000u64;
    let mut store: Vec<(u64, u32)> = (0..1200).map(|i| (run_at, i)).collect();
    store.extend((0..300).map(|i| (run_at - 10_000 + u64::from(i), 10_000 + i)));
    let mut c = PageCursor::new(Filter::new(), 500, 1000);
    let mut page = c.current();
    let mut seen = BTreeSet::new();
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "pagination must end");
        let (report, ids) = serve(&store, &page);
        seen.extend(ids);
        match c.advance(report) {
            PageStep::Done => break,
            PageStep::Next(next) => {
                assert!(
                    next.until < page.until || page.until.is_none(),
                    "every page moves strictly back"
                );
                page = next;
            }
        }
    }
    assert!(
        (10_000..10_300).all(|id| seen.contains(&id)),
        "every older event fetched"
    );
    assert_eq!(c.truncated_runs(), 1, "the oversized run is counted");
    assert!(c.received_total() >= 1300, "every received event counted");

    // Through the core: a full page stuck on one timestamp steps below it.
    let mut h = Harness::standard();
    let keys = maintainer();
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, None);
    let cmds = h.connected(REMOTE, Some(false));
    let first = subscribes(&cmds)
        .into_iter()
        .find(|(_, f, p)| *p != SubPurpose::Live && *f == paged(vec![l1()], 500))
        .map(|(sub, _, _)| sub)
        .expect("L1 history");
    let x = Timestamp::from_secs(run_at);
    let full_at_x = vec![PageReport {
        received: 500,
        oldest: Some(x),
    }];
    let cmds = h.eose(REMOTE, &first, full_at_x.clone());
    assert_eq!(
        sub_filters(&cmds, false),
        vec![vec![l1().limit(500).until(x)]]
    );
    let cmds = h.eose(REMOTE, &sub_id(&cmds[1]), full_at_x);
    assert_eq!(
        sub_filters(&cmds, false),
        vec![vec![l1()
            .limit(500)
            .until(Timestamp::from_secs(run_at - 1))]]
    );
    let cmds = h.eose(REMOTE, &sub_id(&cmds[1]), vec![PageReport::default()]);
    assert_eq!(
        tags(&cmds),
        [
            "Unsubscribe",
            // The relay lacks NIP-77: the rest of the run is out of reach, and counted.
            "Metric(HistoryTruncated { retried: false })",
            "Metric(BatchConfirmed(ReqEose))"
        ]
    );
}

/// Upstream never removed or unsubscribed anything.
#[test]
fn shrinking_target_reopens_live_without_the_removed_repo_then_unsubscribes() {
    let mut h = Harness::standard();
    let keys = maintainer();
    let (ra, rb) = (repo_ref(&keys, "alpha"), repo_ref(&keys, "beta"));
    h.sync_up(
        &[
            announcement(&keys, "alpha", &[OWN, REMOTE], h.now),
            announcement(&keys, "beta", &[OWN, REMOTE], h.now),
        ],
        REMOTE,
        None,
        None,
    );
    let old = h
        .open_subs(REMOTE)
        .into_iter()
        .find(|(_, s)| s.filters == live(l2(&[&ra, &rb])))
        .map(|(sub, _)| sub)
        .expect("one live REQ covers both repos");
    h.advance(MIN);
    let cmds = h.own_batch(&[announcement(&keys, "alpha", &[OWN], h.now)]);
    // Subscribe before unsubscribe: beta is never without a live REQ.
    assert_eq!(tags(&cmds), ["Subscribe(Live)", "Unsubscribe"]);
    assert_eq!(sub_filters(&cmds, true), vec![live(l2(&[&rb]))]);
    assert_eq!(sub_id(&cmds[1]), old);
    let s = h.core.relay_summary(&url(REMOTE)).expect("known");
    assert_eq!((s.desired_repos, s.confirmed_repos), (1, 1));
    assert!(s.synced);
    assert_eq!(
        h.core.reconstruct_filters(&url(REMOTE)),
        [vec![l1()], l2(&[&rb])].concat()
    );

    // The last repo goes too: its live REQ closes, and the relay is reaped later.
    h.advance(MIN);
    let cmds = h.own_batch(&[announcement(&keys, "beta", &[OWN], h.now)]);
    assert_eq!(tags(&cmds), ["Unsubscribe"]);
    let mut later = Vec::new();
    for _ in 0..12 {
        later.extend(h.tick_after(MIN));
    }
    assert_eq!(
        later,
        vec![Command::Disconnect {
            relay: url(REMOTE),
            reason: DisconnectReason::EmptyTarget,
        }]
    );
}

/// Upstream reconciled against an empty in-memory store. The core hands the shell the exact
/// layer filter, which it reconciles against what our relay holds for that filter.
#[test]
fn negentropy_is_requested_with_the_layer_filter() {
    let mut h = Harness::standard();
    let keys = maintainer();
    let repo = repo_ref(&keys, "alpha");
    let issue = root_event(&keys, 1621, &repo, "issue", h.now);
    let root = issue.id.to_hex();
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now), issue]);
    h.manage(REMOTE, None);
    let cmds = h.connected(REMOTE, None);
    let sessions: Vec<(Filter, u64)> = cmds
        .iter()
        .filter_map(|c| match c {
            Command::Negentropy { filter, batch, .. } => Some((filter.clone(), batch.0)),
            _ => None,
        })
        .collect();
    assert_eq!(
        sessions.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>(),
        vec![
            l1(),
            tagf('a', &[&repo]),
            tagf('A', &[&repo]),
            tagf('q', &[&repo]),
            tagf('e', &[&root]),
        ]
    );
    assert!(sessions.iter().all(|(f, _)| *f != Filter::new()));
    assert!(
        sessions.iter().all(|(f, _)| f.limit.is_none()),
        "no limit: reconcile the whole set"
    );
    // L1 has its own batch; the L2/L3 sessions share the other.
    assert_ne!(sessions[0].1, sessions[1].1);
    assert!(sessions[1..].iter().all(|(_, b)| *b == sessions[1].1));
}

/// Upstream did not normalise relay URLs and tested "is this our relay" by substring.
#[test]
fn relay_urls_are_normalised_and_our_relay_is_matched_exactly() {
    let mut h = Harness::standard();
    let keys = maintainer();
    let lookalike = announcement(
        &keys,
        "lookalike",
        &["wss://our.relay.example.evil.com", REMOTE],
        h.now,
    );
    assert!(
        h.own_batch(&[lookalike]).is_empty(),
        "a look-alike host is not our relay"
    );
    assert_eq!(h.core.stats.not_listing_us, 1);
    assert!(h.core.targets.by_relay.is_empty());

    h.advance(MIN);
    let spelled = announcement_with_clone(
        &keys,
        "beta",
        &[
            "WSS://Our.Relay.EXAMPLE:443/",
            "wss://Remote.Example:443/",
            "wss://remote.example/",
        ],
        &["https://REMOTE.example/npub1x/beta.git"],
        h.now,
    );
    let cmds = h.own_batch(&[spelled]);
    assert_eq!(
        cmds,
        vec![Command::Discovered {
            relay: url("wss://remote.example"),
        }],
        "one relay, whatever the spelling; ours excluded"
    );
    assert_eq!(h.core.stats.not_listing_us, 1);
    assert_eq!(h.core.targets.by_relay.len(), 1);
    assert!(
        h.core.relay_id(&url(OWN)).is_none(),
        "our relay is never a sync target"
    );
    assert_eq!(
        tags(&h.manage("wss://REMOTE.example:443", None)),
        ["Connect"]
    );
    let cmds = h.connected("wss://remote.example/", None);
    assert_eq!(
        sub_filters(&cmds, true)[1],
        live(l2(&[&repo_ref(&keys, "beta")]))
    );
}
