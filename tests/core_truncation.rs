//! REQ paging cannot reach the rest of a run of events sharing one `created_at` once the run is
//! longer than a page. These scenarios pin what the core does about it, the loss found by
//! `sync_remanage` (docs/reliability.md): a truncated walk is redone by negentropy on a relay
//! that may speak NIP-77, a failed negentropy session is retried by negentropy before it falls
//! back to REQ, and every path ends.

mod support_core;

use grasp_sync::core::pagination::PageReport;
use grasp_sync::core::{Command, MetricEvent, NegentropyOutcome};
use nostr::{Filter, JsonUtil, Timestamp};
use std::time::Duration;
use support_core::*;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Repo "alpha" (listing our relay and [`REMOTE`]) with one issue, synced by negentropy, then
/// disconnected for a minute and reconnected: the catch-up REQs (with `since`) are open.
/// Returns the repo ref, the root id and the catch-up `since`.
fn reconnected_for_catch_up(h: &mut Harness, nip77: Option<bool>) -> (String, String, Timestamp) {
    let keys = maintainer();
    let repo = repo_ref(&keys, "alpha");
    let ann = announcement(&keys, "alpha", &[OWN, REMOTE], h.now);
    let issue = root_event(&keys, 1621, &repo, "crash on start", h.now);
    let root = issue.id.to_hex();
    h.sync_up(&[ann, issue], REMOTE, None, None);
    h.advance(HOUR);
    let disconnected_at = h.now;
    h.disconnected(REMOTE);
    h.advance(MIN);
    let cmds = h.connected(REMOTE, nip77);
    assert!(
        count(&cmds, "Subscribe(Historic)") > 0,
        "a quick reconnect catches up by REQ: {:?}",
        tags(&cmds)
    );
    (repo, root, (disconnected_at - 15 * MIN).to_timestamp())
}

/// Answers every open historic REQ as a relay holding a 600-event run at one second would:
/// a full page at that second, then the same second again (the run fills the page), then
/// nothing. Negentropy sessions are left open. Returns every command.
fn answer_reqs_with_a_long_run(h: &mut Harness, at: Timestamp) -> Vec<Command> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let Some((sub, open)) = h
            .historic_open(REMOTE)
            .into_iter()
            .find(|(_, s)| s.kind == SubKind::Historic)
        else {
            return out;
        };
        let pages = open
            .filters
            .iter()
            .map(|f| {
                let limit = f.limit.map_or(500, |l| l as u32);
                match f.until {
                    Some(u) if u < at => PageReport::default(),
                    _ => PageReport {
                        received: limit,
                        oldest: Some(at),
                    },
                }
            })
            .collect();
        out.extend(h.eose(REMOTE, &sub, pages));
    }
    panic!("the REQ walk never ended");
}

fn metrics(cmds: &[Command]) -> Vec<MetricEvent> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Metric { event, .. } => Some(*event),
            _ => None,
        })
        .collect()
}

fn synced(h: &Harness) -> bool {
    h.core
        .relay_summary(&url(REMOTE))
        .expect("relay known")
        .synced
}

#[test]
fn a_truncated_catch_up_walk_is_redone_by_negentropy_before_the_relay_counts_as_synced() {
    let mut h = Harness::standard();
    let (repo, root, ts) = reconnected_for_catch_up(&mut h, None);
    let at = (h.now - MIN).to_timestamp();
    let cmds = answer_reqs_with_a_long_run(&mut h, at);
    assert!(
        metrics(&cmds).contains(&MetricEvent::HistoryTruncated { retried: true }),
        "the truncation is counted: {:?}",
        metrics(&cmds)
    );
    assert!(!synced(&h), "a truncated walk confirms nothing yet");
    // Each layer's catch-up is redone as negentropy sessions, one filter each, keeping `since`
    // (they start as the subscription budget allows).
    let mut sessions = reconcile_all(&mut h);
    let mut expected: Vec<Filter> = since(vec![l1()], ts);
    expected.extend(since(l2(&[&repo]), ts));
    expected.extend(since(l3(&[&root]), ts));
    sessions.sort_by_key(|f| f.as_json());
    expected.sort_by_key(|f| f.as_json());
    assert_eq!(sessions, expected);
    // Once they reconcile, the relay is synced again.
    assert!(synced(&h));
}

/// Finishes every negentropy session as they open (no REQ may be open); returns their filters.
fn reconcile_all(h: &mut Harness) -> Vec<Filter> {
    let mut filters = Vec::new();
    for _ in 0..100 {
        let open = h.historic_open(REMOTE);
        assert!(open.iter().all(|(_, s)| s.kind == SubKind::Negentropy));
        let Some((sub, session)) = open.into_iter().next() else {
            return filters;
        };
        filters.extend(session.filters);
        h.neg_done(REMOTE, &sub, NegentropyOutcome::Done);
    }
    panic!("the sessions never ended");
}

#[test]
fn a_truncated_walk_on_a_relay_without_nip77_is_confirmed_and_counted() {
    let mut h = Harness::standard();
    // The relay's NIP-11 says it lacks NIP-77.
    reconnected_for_catch_up(&mut h, Some(false));
    let at = (h.now - MIN).to_timestamp();
    let cmds = answer_reqs_with_a_long_run(&mut h, at);
    assert_eq!(count(&cmds, "Negentropy"), 0, "nothing to escalate to");
    assert!(metrics(&cmds).contains(&MetricEvent::HistoryTruncated { retried: false }));
    assert!(synced(&h), "what the relay can serve was fetched");
}

#[test]
fn a_failed_negentropy_session_is_retried_by_negentropy_then_by_req() {
    let mut h = Harness::standard();
    let keys = maintainer();
    h.own_batch(&[announcement(&keys, "alpha", &[OWN, REMOTE], h.now)]);
    h.manage(REMOTE, None);
    let cmds = h.connected(REMOTE, None);
    let first = negentropy_filters(&cmds);
    assert!(
        !first.is_empty(),
        "history by negentropy: {:?}",
        tags(&cmds)
    );
    let (sub, session) = h
        .historic_open(REMOTE)
        .into_iter()
        .find(|(_, s)| s.kind == SubKind::Negentropy)
        .expect("a session is open");
    // First failure (an interrupted download): the same session again.
    let retry = h.neg_done(REMOTE, &sub, NegentropyOutcome::Failed);
    assert_eq!(count(&retry, "Subscribe(Historic)"), 0);
    assert_eq!(negentropy_filters(&retry), session.filters);
    // Second failure: REQ paging of the same filter.
    let (sub, _) = h
        .historic_open(REMOTE)
        .into_iter()
        .find(|(_, s)| s.kind == SubKind::Negentropy && s.filters == session.filters)
        .expect("the retried session is open");
    let fallback = h.neg_done(REMOTE, &sub, NegentropyOutcome::Failed);
    assert_eq!(count(&fallback, "Negentropy"), 0);
    assert_eq!(
        sub_filters(&fallback, false),
        vec![paged(session.filters.clone(), 500)]
    );
    h.confirm_all(REMOTE);
    assert!(synced(&h));
}

#[test]
fn an_escalated_part_whose_negentropy_keeps_failing_ends_after_one_more_walk() {
    let mut h = Harness::standard();
    reconnected_for_catch_up(&mut h, None);
    let at = (h.now - MIN).to_timestamp();
    answer_reqs_with_a_long_run(&mut h, at);
    // Every escalated session fails (twice, so it falls back to REQ), and every walk
    // truncates again: each part then ends, with no second escalation.
    let mut cmds = Vec::new();
    for _ in 0..200 {
        let Some((sub, open)) = h.historic_open(REMOTE).into_iter().next() else {
            break;
        };
        if open.kind == SubKind::Negentropy {
            cmds.extend(h.neg_done(REMOTE, &sub, NegentropyOutcome::Failed));
        } else {
            cmds.extend(answer_reqs_with_a_long_run(&mut h, at));
        }
    }
    let m = metrics(&cmds);
    assert!(!m.contains(&MetricEvent::HistoryTruncated { retried: true }));
    assert!(m.contains(&MetricEvent::HistoryTruncated { retried: false }));
    assert!(h.historic_open(REMOTE).is_empty());
    assert!(synced(&h));
}
