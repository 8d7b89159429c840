//! What `run` shows while it works. On a terminal: a live progress bar per relay (confirmed
//! over desired repos and root events, connection state, NIP-77) and, every minute, the
//! `kubectl get syncrelays` table. Without a terminal: one structured log line per relay per
//! minute.

use super::Standalone;
use crate::api::conditions::{CONNECTED, SYNCED};
use crate::engine::wall_clock;
use crate::observe::table::render;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::time::Duration;

/// Runs until dropped (the caller selects it against Ctrl-C).
pub async fn report_loop(app: &Standalone, interactive: bool) {
    let table_every = Duration::from_secs(60);
    let mut last_table = tokio::time::Instant::now();
    if !interactive {
        loop {
            tokio::time::sleep(table_every).await;
            for o in app.status().await {
                let s = &o.status.sync;
                tracing::info!(
                    relay = %o.spec.url,
                    connected = o.status.holds(CONNECTED),
                    synced = o.status.holds(SYNCED),
                    confirmed_repos = s.confirmed_repos,
                    desired_repos = s.desired_repos,
                    confirmed_root_events = s.confirmed_root_events,
                    desired_root_events = s.desired_root_events,
                    events_forwarded = s.events_forwarded,
                    nip77 = %o.status.connection.nip77,
                    "relay status"
                );
            }
        }
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    let style = ProgressStyle::with_template("{prefix:40!} [{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    loop {
        let objects = app.status().await;
        for o in &objects {
            let bar = bars.entry(o.metadata.name.clone()).or_insert_with(|| {
                let b = multi.add(ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(o.spec.url.clone());
                b
            });
            let s = &o.status.sync;
            bar.set_length((s.desired_repos + s.desired_root_events).max(1));
            bar.set_position(s.confirmed_repos + s.confirmed_root_events);
            let state = if o.status.holds(SYNCED) {
                "synced"
            } else if o.status.holds(CONNECTED) {
                "syncing"
            } else {
                "disconnected"
            };
            bar.set_message(format!(
                "{state} · {} events · nip77 {}",
                s.events_forwarded, o.status.connection.nip77
            ));
        }
        if last_table.elapsed() >= Duration::from_secs(60) {
            last_table = tokio::time::Instant::now();
            let _ = multi.println(render(&objects, wall_clock().as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
