//! No loss over a randomised run: three relays (two behind fault proxies), six repos listing
//! different subsets of them, several hundred events published in rounds while connections are
//! cut at random. At the end our relay holds every event that matches a wanted filter, and
//! none of the unrelated ones.

mod support;

use nostr::{Event, Keys};
use rand::{Rng, SeedableRng};
use std::time::Duration;
use support::bed::announcement;
use support::fault_proxy::FaultProxy;
use support::sync_bed::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomised_cuts_lose_nothing() {
    let seed: u64 = std::env::var("NO_LOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let relays = [
        RemoteRelay::start().await,
        RemoteRelay::start().await,
        RemoteRelay::start().await,
    ];
    let proxies = [
        FaultProxy::start(relays[1].addr).await.expect("proxy"),
        FaultProxy::start(relays[2].addr).await.expect("proxy"),
    ];
    // What announcements list: relay 0 directly, relays 1 and 2 through their proxies.
    let listed = [relays[0].url(), proxies[0].url(), proxies[1].url()];
    let app = start_app("no-loss", &[LOOPBACK_ALLOWLIST]).await;
    let own = app.own_url().to_string();

    let repos: Vec<(Keys, String, Vec<usize>)> = (0..6)
        .map(|i| {
            let keys = Keys::generate();
            let on: Vec<usize> = (0..3).filter(|r| (i + r) % 3 != 2).collect();
            let coord = coordinate(&keys, &format!("repo{i}"));
            (keys, coord, on)
        })
        .collect();
    for (i, (keys, _, on)) in repos.iter().enumerate() {
        let mut list = vec![own.as_str()];
        list.extend(on.iter().map(|r| listed[*r].as_str()));
        publish(&own, &[announcement(keys, &format!("repo{i}"), &list)]).await;
    }

    let mut wanted: Vec<Event> = Vec::new();
    let mut unwanted: Vec<Event> = Vec::new();
    let mut roots: Vec<(usize, Event)> = Vec::new();
    for round in 0..6 {
        // Publish a round: roots, replies to earlier roots, repo comments, noise.
        let mut per_relay: Vec<Vec<Event>> = vec![Vec::new(); 3];
        for _ in 0..50 {
            let r = rng.random_range(0..repos.len());
            let (keys, coord, on) = &repos[r];
            let relay = on[rng.random_range(0..on.len())];
            let e = match rng.random_range(0..4) {
                0 => {
                    let root = tagged(keys, 1621, "a", coord, &format!("issue {round}"));
                    roots.push((r, root.clone()));
                    root
                }
                1 if !roots.iter().any(|(rr, _)| *rr == r) => {
                    tagged(keys, 1111, "A", coord, "comment")
                }
                1 => {
                    let (_, root) = roots.iter().rev().find(|(rr, _)| *rr == r).expect("root");
                    tagged(keys, 1, "e", &root.id.to_hex(), "reply")
                }
                2 => tagged(keys, 1, "q", coord, "quote"),
                _ => {
                    let noise = tagged(keys, 1, "t", "noise", "unrelated");
                    unwanted.push(noise.clone());
                    per_relay[relay].push(noise);
                    continue;
                }
            };
            wanted.push(e.clone());
            per_relay[relay].push(e);
        }
        // A random cut (or refusal for a while) on one proxied relay.
        let p = &proxies[rng.random_range(0..2)];
        let outage = rng.random_bool(0.5);
        if outage {
            p.refuse(true);
        }
        p.cut();
        for (r, events) in per_relay.iter().enumerate() {
            publish(&relays[r].url(), events).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1500))).await;
        p.refuse(false);
    }
    let ids: Vec<_> = wanted.iter().map(|e| e.id).collect();
    wait_for_ids(
        &own,
        &ids,
        Duration::from_secs(60),
        &format!("no-loss (seed {seed})"),
    )
    .await;
    let noise: Vec<_> = unwanted.iter().map(|e| e.id).collect();
    assert!(
        held(&own, &noise).await.is_empty(),
        "unrelated events were copied"
    );
    let text = app.metrics().encode();
    eprintln!(
        "no-loss: {} wanted events, {} reconnects",
        ids.len(),
        metric(&text, "grasp_sync_reconnects_total")
    );
    app.shutdown(Duration::from_secs(5)).await;
}
