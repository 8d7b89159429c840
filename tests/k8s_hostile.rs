//! Fault-matrix rows (issue 6) that used to run only in standalone mode, lifted to the whole
//! system: a `grasp-sync controller` process and a `grasp-sync worker` process against a real
//! kube-apiserver + etcd, the embedded relay as ours, the remote relays as separate servers.
//! Each row has its own bed (its own API server), so the rows run in parallel; each checks by
//! event id that our relay holds every event the source holds for the repos concerned.
//!
//! Rows, one test each:
//! 1. a real relay (nostr-relay-builder with `max_reqs`) answers `CLOSED "rate-limited: too
//!    many REQs"` once more REQs are open than it allows; the SyncRelay carries no `limits`
//!    hint and the relay publishes no NIP-11, so the budget can only be learned from the
//!    CLOSED; repos are announced in waves so that more subscriptions are wanted than allowed
//!    (`a_relay_closing_reqs_over_its_cap_still_gets_everything`);
//! 2. a real relay's rate limiter (PyPI `nostr-relay` with `rate_limits`) drops REQs over the
//!    limit with `NOTICE "rate-limited"` and throttles the connection; history and live
//!    events both arrive (`a_rate_limiting_relay_loses_nothing`; this row found the loss of a
//!    live REQ dropped that way, fixed in `SyncCore::on_notice`);
//! 3. the hand-written hostile relay (no real relay forges): garbage frames, invalid
//!    signatures, forged ids, events matching no filter, oversized events, no EOSE for history
//!    (`a_hostile_relay_gets_nothing_bad_through`);
//! 4. relay URLs pointing at private addresses in a namespace whose allowlist does not allow
//!    private networks: loopback literals and `localhost` are refused by the controller at
//!    discovery, a host name that resolves to loopback (when this machine has one) by the
//!    worker's resolved-address check, before any socket is opened, while an explicit
//!    SyncRelay's repo syncs fully (`private_relay_urls_are_refused_before_any_socket`);
//! 5. an announcement listing 10,000 relays (the repo's relay first, our relay last): at most
//!    `maxRelaysPerAnnouncement` SyncRelays ever exist, the repo syncs
//!    (`an_announcement_listing_10000_relays_is_capped`).
//!
//! Needs the binaries from `scripts/k8s-tools` and, for row 2, the test-bed venv from
//! `scripts/test`. Every wait is bounded; everything is on 127.0.0.1.

mod support;

use grasp_sync::api::types::{discovered_name, RelayAllowlist, SyncRelay};
use grasp_sync::core::url::RelayUrl;
use grasp_sync::k8s::consts::{ALLOW_PRIVATE_ANNOTATION, WORKER_LABEL};
use grasp_sync::relay::embedded::{EmbeddedRelay, EmbeddedRelayConfig};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use nostr::{Event, EventId, JsonUtil, Keys};
use std::collections::HashSet;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::apiserver::TestApiServer;
use support::bed::{announcement, free_addr, huge_announcement, scratch_dir};
use support::fault_proxy::FaultProxy;
use support::hostile_relay::HostileRelay;
use support::k8s_bed::{
    create_namespace, create_retrying, from_json, http_get, install_crds, spawn_controller,
    spawn_worker, wait_for, Role,
};
use support::py_relays::PyRelay;
use support::sync_bed::{
    coordinate, held, metric, publish, tagged, wait_for_ids, RemoteRelay, FAST_SETTINGS,
    LOOPBACK_ALLOWLIST, SHORT_EOSE_SETTINGS,
};

const NS: &str = "grasp-hostile";

/// One API server, our relay, one controller and one worker, all for one row.
struct Bed {
    server: TestApiServer,
    own: EmbeddedRelay,
    own_url: String,
    relays: Api<SyncRelay>,
    allowlists: Api<RelayAllowlist>,
    controller: Role,
    worker: Role,
    dir: PathBuf,
}

impl Bed {
    /// Starts the bed: CRDs, namespace, `allowlist` (YAML), the roles with `settings` (YAML).
    async fn start(name: &str, allowlist: &str, settings: &str) -> Bed {
        let server = TestApiServer::start();
        let kube = server.client().await;
        let dir = scratch_dir(name);
        std::fs::create_dir_all(&dir).expect("scratch");
        let settings_file = dir.join("settings.yaml");
        std::fs::write(&settings_file, settings).expect("settings");
        let own = EmbeddedRelay::start(EmbeddedRelayConfig::new(free_addr(), dir.join("own")))
            .await
            .expect("own relay");
        let own_url = own.url().to_string();
        create_namespace(&kube, NS).await;
        install_crds(&kube).await;
        let allowlists: Api<RelayAllowlist> = Api::namespaced(kube.clone(), NS);
        let list: RelayAllowlist = serde_yaml::from_str(allowlist).expect("allowlist");
        create_retrying(&allowlists, &list).await;
        let config = settings_file.display().to_string();
        let mut controller = spawn_controller(
            &server,
            &dir,
            "controller",
            "controller",
            &own_url,
            NS,
            Some(&config),
        );
        let mut worker = spawn_worker(&server, &dir, "worker", &own_url, NS, Some(&config));
        controller.wait_ready(Duration::from_secs(30)).await;
        worker.wait_ready(Duration::from_secs(30)).await;
        Bed {
            relays: Api::namespaced(kube, NS),
            allowlists,
            server,
            own,
            own_url,
            controller,
            worker,
            dir,
        }
    }

    /// The SyncRelay discovery made (or would make) for `url`, if it exists.
    async fn discovered(&self, url: &str) -> Option<SyncRelay> {
        let name = discovered_name(&RelayUrl::parse(url).expect("url"));
        self.relays.get_opt(&name).await.ok()?
    }

    /// Waits until the discovered SyncRelay for `url` exists.
    async fn wait_discovered(&self, url: &str, limit: Duration) -> SyncRelay {
        wait_for("relay discovered", limit, || self.discovered(url)).await
    }

    /// How many SyncRelays the API server holds (`None` when it cannot be asked now).
    async fn count(&self) -> Option<usize> {
        Some(
            self.relays
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len(),
        )
    }

    /// The sum of every sample whose line starts with `prefix` on a role's `/metrics`.
    async fn metric(role: &Role, prefix: &str) -> f64 {
        match http_get(role.http, "/metrics").await {
            Some((200, text)) => metric(&text, prefix),
            _ => 0.0,
        }
    }

    async fn worker_metric(&self, prefix: &str) -> f64 {
        Self::metric(&self.worker, prefix).await
    }

    async fn controller_metric(&self, prefix: &str) -> f64 {
        Self::metric(&self.controller, prefix).await
    }

    /// Stops the roles (SIGTERM, bounded wait), the API server and our relay.
    fn stop(mut self) {
        for r in [&mut self.controller, &mut self.worker] {
            r.proc.signal("TERM");
        }
        for r in [&mut self.controller, &mut self.worker] {
            r.proc.wait_stopped();
        }
        drop(self.server);
        self.own.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` issues (kind 1621) of repo `d`, each with a `content` prefix.
fn issues(keys: &Keys, d: &str, n: usize, content: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            tagged(
                keys,
                1621,
                "a",
                &coordinate(keys, d),
                &format!("{d} {content} {i}"),
            )
        })
        .collect()
}

fn ids(events: &[Event]) -> Vec<EventId> {
    events.iter().map(|e| e.id).collect()
}

// ---------------------------------------------------------------------------------------
// Row 1: CLOSED for too many subscriptions, from a real relay.

/// REQs nostr-relay-builder keeps open per connection in row 1. grasp-sync's default budget
/// is 20 and the relay publishes no NIP-11, so 3 is far below what it assumes.
const MAX_REQS: usize = 3;
/// Repos in row 1, announced in waves so that each wave is its own batch and wants its own
/// live REQ (more than `MAX_REQS` before any consolidation).
const CLOSED_REPOS: usize = 40;
const CLOSED_WAVES: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_closing_reqs_over_its_cap_still_gets_everything() {
    let remote = RemoteRelay::start_max_reqs(MAX_REQS).await;
    let bed = Bed::start("k8s-hostile-closed", LOOPBACK_ALLOWLIST, FAST_SETTINGS).await;
    let keys = Keys::generate();
    // Per repo: a patch, a reply to it (wanted only once the patch is on our relay: a second
    // wave of subscriptions by root id) and a quote of the repo.
    let mut on_remote = Vec::new();
    let mut anns = Vec::new();
    for i in 0..CLOSED_REPOS {
        let d = format!("r{i}");
        let repo = coordinate(&keys, &d);
        let root = tagged(&keys, 1617, "a", &repo, "patch");
        let reply = tagged(&keys, 1111, "E", &root.id.to_hex(), "review");
        let quote = tagged(&keys, 1, "q", &repo, "quote");
        on_remote.extend([root, reply, quote]);
        anns.push(announcement(&keys, &d, &[&bed.own_url, &remote.url()]));
    }
    publish(&remote.url(), &on_remote).await;
    let start = Instant::now();
    for wave in anns.chunks(CLOSED_REPOS / CLOSED_WAVES) {
        publish(&bed.own_url, wave).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut wanted = ids(&on_remote);

    // While it syncs, watch how many subscriptions the worker reports open (REQs and
    // NEG-OPENs; the relay counts only REQs). Until the first CLOSED it assumes the default
    // budget, so the peak is above the cap: only what it settles on must fit.
    let relay = bed
        .wait_discovered(&remote.url(), Duration::from_secs(30))
        .await;
    assert!(relay.spec.limits.is_none(), "no limits hint on the relay");
    let mut max_subs = 0;
    loop {
        if let Some(s) = bed.discovered(&remote.url()).await.and_then(|r| r.status) {
            max_subs = max_subs.max(s.sync.subscriptions);
        }
        if held(&bed.own_url, &wanted).await.len() == wanted.len() {
            break;
        }
        if start.elapsed() > Duration::from_secs(90) {
            break; // wait_for_ids below reports what is missing
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_for_ids(
        &bed.own_url,
        &wanted,
        Duration::from_secs(1),
        "row 1: history under a cap of 3 REQs",
    )
    .await;
    let history_secs = start.elapsed().as_secs_f64();

    // Live: a new issue per repo, on the subscriptions packed within the learned budget.
    let mut live = Vec::new();
    for i in 0..CLOSED_REPOS {
        live.extend(issues(&keys, &format!("r{i}"), 1, "live"));
    }
    publish(&remote.url(), &live).await;
    wanted.extend(ids(&live));
    wait_for_ids(
        &bed.own_url,
        &wanted,
        Duration::from_secs(60),
        "row 1: live under a cap of 3 REQs",
    )
    .await;

    let lowered = bed
        .worker_metric("grasp_sync_lifecycle_total{kind=\"budget_lowered\"}")
        .await;
    assert!(
        lowered >= 1.0,
        "the relay's CLOSED never lowered the budget: the row did not exercise the cap"
    );
    // Synced, only live REQs remain open: they must fit in what the relay allows (a live
    // REQ over the cap would have been CLOSED and its repos left without live coverage,
    // which the live wave above would have shown).
    let settled = wait_for(
        "subscriptions within the cap",
        Duration::from_secs(20),
        || async {
            let s = bed.discovered(&remote.url()).await?.status?;
            (s.sync.subscriptions <= MAX_REQS as u64).then_some(s.sync.subscriptions)
        },
    )
    .await;
    println!(
        "row 1: {CLOSED_REPOS} repos in {CLOSED_WAVES} waves on a relay allowing {MAX_REQS} REQs: \
         budget lowered {lowered} times, {max_subs} subscriptions open at the peak (before \
         the first CLOSED), {settled} once synced; history in {history_secs:.1} s, {} / {} \
         stored",
        held(&bed.own_url, &wanted).await.len(),
        wanted.len()
    );
    bed.stop();
    remote.stop();
}

// ---------------------------------------------------------------------------------------
// Row 2: rate-limited, from a real relay's rate limiter.

/// nostr-relay's rule: REQs per second, for all clients together.
const REQ_RATE: &str = "2/s";
const RATE_REPOS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limiting_relay_loses_nothing() {
    let remote = PyRelay::start_req_rate_limited(REQ_RATE);
    let bed = Bed::start("k8s-hostile-rate", LOOPBACK_ALLOWLIST, FAST_SETTINGS).await;
    let keys = Keys::generate();
    let mut on_remote = Vec::new();
    let mut anns = Vec::new();
    for i in 0..RATE_REPOS {
        let d = format!("r{i}");
        let repo = coordinate(&keys, &d);
        let issue = tagged(&keys, 1621, "a", &repo, "issue");
        let reply = tagged(&keys, 1111, "E", &issue.id.to_hex(), "reply");
        on_remote.extend([issue, reply]);
        anns.push(announcement(&keys, &d, &[&bed.own_url, &remote.url()]));
    }
    publish(&remote.url(), &on_remote).await;
    // Two waves: more REQs in a short time than the relay takes.
    let start = Instant::now();
    for wave in anns.chunks(RATE_REPOS / 2) {
        publish(&bed.own_url, wave).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut wanted = ids(&on_remote);
    // History survives: a dropped historic REQ gets no EOSE, its batch times out (5 s) and
    // is retried after the cooldown and backoff.
    wait_for_ids(
        &bed.own_url,
        &wanted,
        Duration::from_secs(90),
        "row 2: history from a rate-limiting relay",
    )
    .await;
    let history_secs = start.elapsed().as_secs_f64();
    let limited = bed
        .worker_metric("grasp_sync_lifecycle_total{kind=\"rate_limited\"}")
        .await;
    assert!(
        limited >= 1.0,
        "no rate-limited reply counted: the row did not exercise the limiter"
    );
    let failed = bed.worker_metric("grasp_sync_batches_failed_total").await;
    println!(
        "row 2: {RATE_REPOS} repos on a relay allowing {REQ_RATE} REQs: {limited} rate-limited \
         replies counted (cooldown each), {failed} batches failed and retried, history \
         {} / {} stored in {history_secs:.1} s",
        wanted.len(),
        wanted.len()
    );

    // Live events must come too. The relay drops the burst's third REQ, which is the live
    // REQ for the repos' `#a` tags (seen in the relay's debug log), answering only
    // `["NOTICE","rate-limited"]`, which names no subscription. A historic part recovers
    // through its EOSE deadline, but a live REQ has none: before the fix in
    // `SyncCore::on_notice` the core kept believing those repos were covered live and all
    // 20 of these issues were lost, in every run. Now the relay is consolidated once the
    // cooldown ends, and the replacement live REQ reaches back over the gap.
    let mut live = Vec::new();
    for i in 0..RATE_REPOS {
        live.extend(issues(&keys, &format!("r{i}"), 2, "live"));
    }
    publish(&remote.url(), &live).await;
    wanted.extend(ids(&live));
    wait_for_ids(
        &bed.own_url,
        &wanted,
        Duration::from_secs(30),
        "row 2: live events after a live REQ was dropped with NOTICE rate-limited",
    )
    .await;
    println!(
        "row 2: live: {} / {} stored",
        held(&bed.own_url, &wanted).await.len(),
        wanted.len()
    );
    bed.stop();
}

// ---------------------------------------------------------------------------------------
// Row 3: the hostile relay.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_relay_gets_nothing_bad_through() {
    let hostile = HostileRelay::start().await;
    let bed = Bed::start("k8s-hostile-relay", LOOPBACK_ALLOWLIST, SHORT_EOSE_SETTINGS).await;
    let keys = Keys::generate();
    publish(
        &bed.own_url,
        &[announcement(&keys, "repo", &[&bed.own_url, &hostile.url()])],
    )
    .await;

    // The never-EOSE batch times out, is failed, and the relay backs off; wait for a retry
    // to fail too, so that what was sent spans more than one connection attempt.
    wait_for("two failed batches", Duration::from_secs(30), || async {
        (bed.worker_metric("grasp_sync_batches_failed_total").await >= 2.0).then_some(())
    })
    .await;
    let status = wait_for("backoff in the status", Duration::from_secs(20), || async {
        let s = bed.discovered(&hostile.url()).await?.status?;
        (s.health.failures >= 2 && s.connection.nip77 == "Unsupported").then_some(s)
    })
    .await;
    // Everything it sent by now, over every REQ of every attempt.
    let sent = hostile.sent.lock().expect("lock").clone();
    assert!(!sent.valid.is_empty() && !sent.bad.is_empty());
    let valid = ids(&sent.valid);
    wait_for_ids(
        &bed.own_url,
        &valid,
        Duration::from_secs(20),
        "row 3: the hostile relay's valid events",
    )
    .await;
    let bad = ids(&sent.bad);
    let leaked = held(&bed.own_url, &bad).await;
    assert!(
        leaked.is_empty(),
        "{} forged, unrelated or oversized events reached our relay",
        leaked.len()
    );

    let mut counted = Vec::new();
    for reason in [
        "invalid_signature",
        "invalid_id",
        "unrequested",
        "too_large",
        "malformed",
    ] {
        let line = format!("grasp_sync_events_rejected_total{{reason=\"{reason}\"}}");
        let n = bed.worker_metric(&line).await;
        assert!(n >= 1.0, "{reason} not counted by the worker");
        counted.push(format!("{reason} {n}"));
    }
    println!(
        "row 3: hostile relay: {} / {} valid events stored, 0 of {} bad; rejected by reason: \
         {}; status: {} failures, health {}, NIP-77 {}",
        valid.len(),
        valid.len(),
        bad.len(),
        counted.join(", "),
        status.health.failures,
        status.health.state,
        status.connection.nip77
    );
    bed.stop();
}

// ---------------------------------------------------------------------------------------
// Row 4: relay URLs pointing at private addresses.

/// This machine's host name, when it resolves to loopback addresses only (e.g. through
/// /etc/hosts): a URL naming it passes the controller's literal check (it is no IP literal
/// and not `localhost`), so only the worker's resolved-address check stands in the way.
fn loopback_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_ascii_lowercase();
    if name.is_empty() || name == "localhost" || name.ends_with(".localhost") {
        return None;
    }
    let addrs: Vec<_> = (name.as_str(), 80).to_socket_addrs().ok()?.collect();
    (!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())).then_some(name)
}

/// Allows loopback hosts (so that discovery gets as far as the private-address check) but
/// not private networks.
fn strict_allowlist(hostname: Option<&str>) -> String {
    let mut doc = "\
apiVersion: sync.grasp.dev/v1alpha1
kind: RelayAllowlist
metadata: {name: strict}
spec:
  allowPrivateNetworks: false
  allow:
    - host: \"127.0.0.1\"
      schemes: [ws]
    - host: localhost
      schemes: [ws]
"
    .to_string();
    if let Some(h) = hostname {
        doc.push_str(&format!("    - host: \"{h}\"\n      schemes: [ws]\n"));
    }
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_relay_urls_are_refused_before_any_socket() {
    // The good remote, and a bait relay that holds the same repo's events: a connection to it
    // would be worth making, and its proxy counts every connection attempt.
    let good = RemoteRelay::start().await;
    let bait = RemoteRelay::start().await;
    let bait_proxy = FaultProxy::start(bait.addr).await.expect("bait proxy");
    let hostname = loopback_hostname();
    let bed = Bed::start(
        "k8s-hostile-private",
        &strict_allowlist(hostname.as_deref()),
        FAST_SETTINGS,
    )
    .await;
    // Our relay is the roles' `--own-relay` (configuration, not discovery) and the good
    // remote an explicit SyncRelay: operator intent, which the allowlist does not gate.
    let explicit: SyncRelay = from_json(serde_json::json!({
        "apiVersion": "sync.grasp.dev/v1alpha1",
        "kind": "SyncRelay",
        "metadata": {"name": "good", "namespace": NS},
        "spec": {"url": good.url()},
    }));
    create_retrying(&bed.relays, &explicit).await;
    wait_for(
        "explicit relay assigned",
        Duration::from_secs(30),
        || async {
            let r = bed.relays.get_opt("good").await.ok()??;
            r.labels().get(WORKER_LABEL).cloned()
        },
    )
    .await;

    let keys = Keys::generate();
    let events = issues(&keys, "repo", 50, "issue");
    publish(&good.url(), &events).await;
    publish(&bait.url(), &events).await;
    let literal = bait_proxy.url();
    let by_localhost = literal.replace("127.0.0.1", "localhost");
    let mut listed = vec![
        bed.own_url.clone(),
        good.url(),
        literal.clone(),
        by_localhost.clone(),
    ];
    let by_hostname = hostname.as_deref().map(|h| literal.replace("127.0.0.1", h));
    listed.extend(by_hostname.clone());
    let refs: Vec<&str> = listed.iter().map(String::as_str).collect();
    publish(&bed.own_url, &[announcement(&keys, "repo", &refs)]).await;

    let wanted = ids(&events);
    wait_for_ids(
        &bed.own_url,
        &wanted,
        Duration::from_secs(60),
        "row 4: the good repo next to private URLs",
    )
    .await;
    // Discovery refused both literal forms (each counted once) and created nothing for them.
    let refused = wait_for("refusals counted", Duration::from_secs(20), || async {
        let n = bed
            .controller_metric("grasp_sync_relays_discovered_total{reason=\"private_address\"}")
            .await;
        (n >= 2.0).then_some(n)
    })
    .await;
    for url in [&literal, &by_localhost] {
        assert!(
            bed.discovered(url).await.is_none(),
            "{url} became a SyncRelay"
        );
    }
    let allowlist_refused = wait_for("allowlist status", Duration::from_secs(20), || async {
        let s = bed.allowlists.get("strict").await.ok()?.status?;
        (s.refused >= 2).then_some(s.refused)
    })
    .await;
    // A host name resolving to loopback is admitted by discovery (no literal to check), with
    // private networks off; the worker resolves it and refuses before connecting.
    let mut ssrf_line = String::from("(no host name resolving to loopback here)");
    if let Some(url) = &by_hostname {
        let r = bed.wait_discovered(url, Duration::from_secs(20)).await;
        assert_eq!(
            r.annotations()
                .get(ALLOW_PRIVATE_ANNOTATION)
                .map(String::as_str),
            Some("false")
        );
        let n = wait_for("SSRF refusal counted", Duration::from_secs(20), || async {
            let n = bed
                .worker_metric("grasp_sync_ssrf_refusals_total{reason=\"loopback\"}")
                .await;
            (n >= 1.0).then_some(n)
        })
        .await;
        let error = wait_for("refusal in the status", Duration::from_secs(20), || async {
            let s = bed.discovered(url).await?.status?;
            s.connection.last_error.filter(|e| e.contains("refusing"))
        })
        .await;
        ssrf_line = format!("{url}: {n} SSRF refusals in the worker, status says {error:?}");
    }
    // Give any stray dial a moment to land before the zero is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        bait_proxy.accepted(),
        0,
        "a connection was opened to a private address"
    );
    println!(
        "row 4: {} / {} of the good repo stored; {refused} private URLs refused at discovery \
         (allowlist refused {allowlist_refused}); {ssrf_line}; 0 connections to the bait",
        held(&bed.own_url, &wanted).await.len(),
        wanted.len()
    );
    bed.stop();
    good.stop();
    bait.stop();
}

// ---------------------------------------------------------------------------------------
// Row 5: an announcement listing 10,000 relays.

const LISTED: usize = 10_000;
/// `maxRelaysPerAnnouncement` (the default).
const CAP: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_announcement_listing_10000_relays_is_capped() {
    let remote = RemoteRelay::start().await;
    let bed = Bed::start("k8s-hostile-huge", LOOPBACK_ALLOWLIST, FAST_SETTINGS).await;
    let keys = Keys::generate();
    let events = issues(&keys, "huge", 20, "issue");
    publish(&remote.url(), &events).await;

    // The remote first, then 9,998 loopback URLs nothing listens on, then our relay.
    let huge = huge_announcement(&keys, "huge", &remote.url(), &bed.own_url, LISTED);
    let size = huge.as_json().len();
    assert!(size > 150_000, "the announcement is large: {size} bytes");
    publish(&bed.own_url, &[huge]).await;

    // Poll the count the whole time: never more than the cap, not only at the end.
    let wanted = ids(&events);
    let start = Instant::now();
    let mut max_seen = 0;
    let mut synced_at = None;
    while start.elapsed() < Duration::from_secs(60) {
        max_seen = max_seen.max(bed.count().await.unwrap_or(0));
        assert!(
            max_seen <= CAP,
            "{max_seen} SyncRelays for one announcement (cap {CAP})"
        );
        if synced_at.is_none() && held(&bed.own_url, &wanted).await.len() == wanted.len() {
            synced_at = Some(start.elapsed());
        }
        // Keep watching a while after the sync: discovery must not creep past the cap.
        if synced_at.is_some_and(|t| start.elapsed() > t + Duration::from_secs(5)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    wait_for_ids(
        &bed.own_url,
        &wanted,
        Duration::from_secs(1),
        "row 5: the capped announcement's repo",
    )
    .await;
    let out = bed
        .server
        .kubectl()
        .args(["get", "syncrelays", "-n", NS, "-o", "name"])
        .output()
        .expect("kubectl");
    let listed_by_kubectl = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(
        listed_by_kubectl <= CAP,
        "kubectl lists {listed_by_kubectl} SyncRelays (cap {CAP})"
    );
    assert!(bed.discovered(&remote.url()).await.is_some());
    assert!(
        bed.discovered(&bed.own_url).await.is_none(),
        "our own relay became a SyncRelay"
    );
    let admitted = bed
        .controller_metric("grasp_sync_relays_discovered_total{reason=\"admitted\"}")
        .await;
    assert!(
        admitted <= CAP as f64,
        "{admitted} relays admitted (cap {CAP})"
    );
    let urls: HashSet<String> = bed
        .relays
        .list(&ListParams::default())
        .await
        .map(|l| l.items.iter().map(|r| r.spec.url.clone()).collect())
        .unwrap_or_default();
    println!(
        "row 5: announcement of {size} bytes listing {LISTED} relays: {listed_by_kubectl} \
         SyncRelays (at most {max_seen} seen while polling, {} distinct URLs), {admitted} \
         admitted; {} / {} stored",
        urls.len(),
        held(&bed.own_url, &wanted).await.len(),
        wanted.len()
    );
    bed.stop();
    remote.stop();
}
