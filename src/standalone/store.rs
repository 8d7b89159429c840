//! The in-process object store of standalone mode: the SyncRelay objects (from the config file
//! and from discovery) with their last status, and the allowlists. It plays the part the API
//! server plays in a cluster: discovery writes to it, `/status` reads from it.

use crate::api::allowlist::{admit, Admission};
use crate::api::conditions::{merge_conditions, rfc3339, Condition, ACCEPTED, ASSIGNED, READY};
use crate::api::status::{build_status, Assignment, SessionCounters, SyncRelayStatus};
use crate::api::types::{RelayAllowlistSpec, SyncRelaySpec};
use crate::config::{ConfigSet, API_VERSION};
use crate::core::summary::RelaySummary;
use crate::core::time::Millis;
use crate::core::url::RelayUrl;
use crate::observe::table::{ObjectMeta, StatusObject};
use std::collections::{BTreeMap, HashMap};

/// The worker name standalone mode reports in `status.assignment`.
pub const STANDALONE_WORKER: &str = "standalone";

use crate::api::types::{discovered_name, DISCOVERED_LABEL};

/// One SyncRelay.
#[derive(Debug, Clone)]
pub struct RelayObject {
    /// `metadata.name`.
    pub name: String,
    /// The spec.
    pub spec: SyncRelaySpec,
    /// Created by discovery.
    pub discovered: bool,
    /// May resolve to private addresses.
    pub allow_private: bool,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// The status last served.
    pub status: Option<SyncRelayStatus>,
}

/// What discovery decided for a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovered {
    /// Created: manage it (private networks allowed or not).
    Created {
        /// Allowed private networks.
        allow_private: bool,
    },
    /// Already decided: known (explicit or discovered before) or refused before.
    Known,
    /// Refused (the label says why).
    Refused(&'static str),
}

/// The store.
#[derive(Debug, Default)]
pub struct ObjectStore {
    relays: BTreeMap<RelayUrl, RelayObject>,
    allowlists: Vec<RelayAllowlistSpec>,
    admitted: Vec<u32>,
    refused: HashMap<RelayUrl, &'static str>,
}

impl ObjectStore {
    /// A store holding the file's objects. Explicit SyncRelays are operator intent, so they
    /// may point at private addresses (the SSRF guard is for discovered URLs).
    pub fn from_config(config: &ConfigSet, now_secs: u64) -> Self {
        let mut store = ObjectStore {
            allowlists: config.allowlists.iter().map(|a| a.spec.clone()).collect(),
            admitted: vec![0; config.allowlists.len()],
            ..ObjectStore::default()
        };
        for r in &config.relays {
            store.relays.insert(
                r.url.clone(),
                RelayObject {
                    name: r.name.clone(),
                    spec: r.spec.clone(),
                    discovered: false,
                    allow_private: true,
                    created: now_secs,
                    status: None,
                },
            );
        }
        store
    }

    /// The relays, by URL.
    pub fn relays(&self) -> impl Iterator<Item = (&RelayUrl, &RelayObject)> {
        self.relays.iter()
    }

    /// Relays refused by discovery, with the reason.
    pub fn refused(&self) -> usize {
        self.refused.len()
    }

    /// Applies the allowlists to a URL the core found in its targets.
    pub fn discover(&mut self, url: &RelayUrl, now_secs: u64) -> Discovered {
        if self.relays.contains_key(url) {
            return Discovered::Known;
        }
        if self.refused.contains_key(url) {
            return Discovered::Known;
        }
        match admit(&self.allowlists, &self.admitted, url) {
            Admission::Admitted {
                allowlist,
                allow_private_networks,
            } => {
                if let Some(n) = self.admitted.get_mut(allowlist) {
                    *n += 1;
                }
                self.relays.insert(
                    url.clone(),
                    RelayObject {
                        name: discovered_name(url),
                        spec: SyncRelaySpec {
                            url: url.to_string(),
                            bootstrap: false,
                            suspend: false,
                            limits: None,
                            auth_secret_ref: None,
                        },
                        discovered: true,
                        allow_private: allow_private_networks,
                        created: now_secs,
                        status: None,
                    },
                );
                Discovered::Created {
                    allow_private: allow_private_networks,
                }
            }
            other => {
                let label = other.label();
                self.refused.insert(url.clone(), label);
                Discovered::Refused(label)
            }
        }
    }

    /// Builds every object's status from the core's summaries and the session counters,
    /// keeping condition transition times from the previous status.
    pub fn refresh(
        &mut self,
        summaries: &[RelaySummary],
        counters: impl Fn(&RelayUrl) -> SessionCounters,
        now: Millis,
    ) -> Vec<StatusObject> {
        let by_url: HashMap<&RelayUrl, &RelaySummary> =
            summaries.iter().map(|s| (&s.url, s)).collect();
        let stamp = rfc3339(now.as_secs());
        let mut out = Vec::with_capacity(self.relays.len());
        for (url, obj) in self.relays.iter_mut() {
            let mut status = match by_url.get(url) {
                Some(s) => build_status(s, &counters(url), obj.status.as_ref(), None, now),
                None => obj.status.clone().unwrap_or_default(),
            };
            status.assignment = Some(Assignment {
                worker: STANDALONE_WORKER.into(),
                since: obj
                    .status
                    .as_ref()
                    .and_then(|s| s.assignment.as_ref().map(|a| a.since.clone()))
                    .unwrap_or_else(|| rfc3339(obj.created)),
                draining: false,
            });
            let ready = status.holds(crate::api::conditions::CONNECTED)
                && status.holds(crate::api::conditions::SYNCED);
            let cond = |t: &str, ok: bool, reason: &str| Condition {
                type_: t.into(),
                status: ok.into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: stamp.clone(),
                observed_generation: None,
            };
            let fresh = vec![
                cond(ACCEPTED, true, "Valid"),
                cond(ASSIGNED, true, "Standalone"),
                cond(READY, ready, if ready { "Ready" } else { "NotReady" }),
            ];
            status.conditions = merge_conditions(&status.conditions, fresh);
            obj.status = Some(status.clone());
            let mut labels = BTreeMap::new();
            if obj.discovered {
                labels.insert(DISCOVERED_LABEL.to_string(), "true".to_string());
            }
            out.push(StatusObject {
                api_version: API_VERSION.into(),
                kind: "SyncRelay".into(),
                metadata: ObjectMeta {
                    name: obj.name.clone(),
                    creation_timestamp: Some(rfc3339(obj.created)),
                    labels,
                },
                spec: obj.spec.clone(),
                status,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> RelayUrl {
        RelayUrl::parse(s).expect("valid")
    }

    fn allowlist(private: bool, max: u32) -> ConfigSet {
        let text = format!(
            "apiVersion: sync.grasp.dev/v1alpha1\nkind: RelayAllowlist\nmetadata: {{name: a}}\nspec: {{allowPrivateNetworks: {private}, maxRelays: {max}, allow: [{{host: '*', schemes: [ws, wss]}}], deny: [{{host: bad.example}}]}}\n"
        );
        crate::config::load_config(&text).expect("config")
    }

    #[test]
    fn discovery_follows_the_allowlist() {
        let mut s = ObjectStore::from_config(&allowlist(false, 2), 0);
        assert_eq!(
            s.discover(&url("wss://a.example"), 0),
            Discovered::Created {
                allow_private: false
            }
        );
        assert_eq!(s.discover(&url("wss://a.example"), 0), Discovered::Known);
        assert_eq!(
            s.discover(&url("wss://bad.example"), 0),
            Discovered::Refused("denied")
        );
        assert_eq!(
            s.discover(&url("wss://bad.example"), 0),
            Discovered::Known,
            "counted once"
        );
        assert_eq!(
            s.discover(&url("ws://127.0.0.1:7000"), 0),
            Discovered::Refused("private_address")
        );
        assert_eq!(
            s.discover(&url("wss://b.example"), 0),
            Discovered::Created {
                allow_private: false
            }
        );
        assert_eq!(
            s.discover(&url("wss://c.example"), 0),
            Discovered::Refused("full")
        );
        let (_, obj) = s
            .relays()
            .find(|(u, _)| u.as_str() == "wss://a.example")
            .expect("kept");
        assert!(obj.discovered);
        assert_eq!(obj.name, discovered_name(&url("wss://a.example")));
        assert_eq!(obj.name.len(), 19);
    }

    #[test]
    fn private_networks_need_the_allowlist_flag() {
        let mut s = ObjectStore::from_config(&allowlist(true, 10), 0);
        assert_eq!(
            s.discover(&url("ws://127.0.0.1:7000"), 0),
            Discovered::Created {
                allow_private: true
            }
        );
    }

    #[test]
    fn no_allowlist_discovers_nothing() {
        let mut s = ObjectStore::default();
        assert_eq!(
            s.discover(&url("wss://a.example"), 0),
            Discovered::Refused("not_allowed")
        );
    }
}
