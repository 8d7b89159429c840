//! The controller's own sync core: it holds the RepoSyncIndex (from the self-subscriber to our
//! relay) so that discovery and reaping see the same targets the workers do, but it never
//! connects anywhere. Every SyncRelay is fed to it as managed and *suspended*; the sink keeps
//! only `Discovered` and drops every connection command.

use super::validate::{validate_url, Verdict};
use super::view;
use crate::api::types::SyncRelay;
use crate::core::settings::RelayLimits;
use crate::core::url::RelayUrl;
use crate::core::{Command, Input};
use crate::engine::CommandSink;
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// Keeps only `Command::Discovered`, sent to the controller loop.
#[derive(Debug)]
pub struct DiscoverySink {
    tx: mpsc::UnboundedSender<RelayUrl>,
}

impl DiscoverySink {
    /// A sink and the receiver of discovered URLs.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<RelayUrl>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (DiscoverySink { tx }, rx)
    }
}

impl CommandSink for DiscoverySink {
    fn execute(&mut self, command: Command) {
        if let Command::Discovered { relay } = command {
            // The loop has stopped only when the controller is shutting down.
            let _ = self.tx.send(relay);
        }
    }
}

/// What was last fed to the core per URL: (bootstrap, limits).
#[derive(Debug, Clone, Default)]
pub struct CoreFeed {
    fed: BTreeMap<RelayUrl, (bool, Option<RelayLimits>)>,
}

impl CoreFeed {
    /// The inputs that bring the core in line with `relays`: `ManageRelay { suspended: true }`
    /// for every valid SyncRelay not being deleted (new or changed), `UnmanageRelay` for URLs
    /// no object has any more. Two objects with one URL are one relay (bootstrap if either
    /// is).
    pub fn sync(&mut self, relays: &[SyncRelay], max_url_len: usize) -> Vec<Input> {
        let mut want: BTreeMap<RelayUrl, (bool, Option<RelayLimits>)> = BTreeMap::new();
        for r in relays.iter().filter(|r| !view::is_deleting(r)) {
            if let Verdict::Accepted(url) = validate_url(&r.spec.url, max_url_len) {
                let entry = want.entry(url).or_insert((false, r.spec.limits));
                entry.0 |= r.spec.bootstrap;
            }
        }
        let mut inputs = Vec::new();
        for url in self.fed.keys() {
            if !want.contains_key(url) {
                inputs.push(Input::UnmanageRelay { url: url.clone() });
            }
        }
        for (url, (bootstrap, limits)) in &want {
            if self.fed.get(url) != Some(&(*bootstrap, *limits)) {
                inputs.push(Input::ManageRelay {
                    url: url.clone(),
                    bootstrap: *bootstrap,
                    suspended: true,
                    limits: *limits,
                });
            }
        }
        self.fed = want;
        inputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::SyncRelaySpec;

    fn relay(name: &str, url: &str, bootstrap: bool) -> SyncRelay {
        let mut r = SyncRelay::new(
            name,
            SyncRelaySpec {
                url: url.into(),
                bootstrap,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
        );
        r.metadata.namespace = Some("ns".into());
        r
    }

    #[test]
    fn feeds_suspended_relays_and_only_changes() {
        let mut feed = CoreFeed::default();
        let relays = vec![
            relay("a", "wss://a.example.org", false),
            relay("b", "wss://b.example.org/", true),
            relay("bad", "https://nope", false),
        ];
        let first = feed.sync(&relays, 512);
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|i| matches!(
            i,
            Input::ManageRelay {
                suspended: true,
                ..
            }
        )));
        assert!(feed.sync(&relays, 512).is_empty(), "nothing changed");
        let second = feed.sync(&relays[1..], 512);
        assert_eq!(
            second,
            vec![Input::UnmanageRelay {
                url: RelayUrl::parse("wss://a.example.org").expect("valid")
            }]
        );
    }

    #[test]
    fn the_sink_keeps_only_discoveries() {
        let (mut sink, mut rx) = DiscoverySink::new();
        let url = RelayUrl::parse("wss://a.example.org").expect("valid");
        sink.execute(Command::Connect { relay: url.clone() });
        sink.execute(Command::Discovered { relay: url.clone() });
        assert_eq!(rx.try_recv().ok(), Some(url));
        assert!(rx.try_recv().is_err());
    }
}
