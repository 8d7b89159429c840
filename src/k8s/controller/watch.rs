//! Watches (reflector caches) of SyncRelays, RelayAllowlists and worker Leases, and the
//! predicate filter that decides which watch events wake the controller: a SyncRelay wakes it
//! only when [`super::view::trigger_hash`] changes (so the workers' count updates do not), an
//! allowlist on a spec change, a Lease when its holder changes (renewals do not; expiry is a
//! timer in the loop). Also the read-your-writes overlay over the SyncRelay cache.

use super::view;
use crate::api::types::{RelayAllowlist, SyncRelay};
use crate::k8s::consts::{ROLE_LABEL, ROLE_WORKER};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The controller's caches.
#[derive(Clone)]
pub struct Stores {
    /// SyncRelays (all watched namespaces).
    pub relays: Store<SyncRelay>,
    /// RelayAllowlists.
    pub allowlists: Store<RelayAllowlist>,
    /// Worker Leases (lease namespace, `sync.grasp.dev/role=worker`).
    pub leases: Store<Lease>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stores")
    }
}

impl Stores {
    /// Waits until every cache has its first full list.
    pub async fn ready(&self) -> bool {
        self.relays.wait_until_ready().await.is_ok()
            && self.allowlists.wait_until_ready().await.is_ok()
            && self.leases.wait_until_ready().await.is_ok()
    }
}

/// The allowlist predicate: spec generation and deletion.
pub fn allowlist_hash(a: &RelayAllowlist) -> u64 {
    let mut h = DefaultHasher::new();
    a.metadata.generation.hash(&mut h);
    a.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// The Lease predicate: holder and duration (a renewal changes neither).
pub fn lease_hash(l: &Lease) -> u64 {
    let mut h = DefaultHasher::new();
    if let Some(s) = &l.spec {
        s.holder_identity.hash(&mut h);
        s.lease_duration_seconds.hash(&mut h);
    }
    h.finish()
}

fn spawn_watch<K>(
    api: Api<K>,
    config: watcher::Config,
    hash: fn(&K) -> u64,
    trigger: Arc<Notify>,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    let task = tokio::spawn(async move {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let wake = match event {
                Ok(Event::Apply(obj) | Event::InitApply(obj)) => {
                    let h = hash(&obj);
                    let uid = obj.uid().unwrap_or_else(|| obj.name_any());
                    seen.insert(uid, h) != Some(h)
                }
                Ok(Event::Delete(obj)) => {
                    seen.remove(&obj.uid().unwrap_or_else(|| obj.name_any()));
                    true
                }
                Ok(Event::InitDone) => true,
                Ok(Event::Init) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "watch failed; retrying with backoff");
                    false
                }
            };
            if wake {
                trigger.notify_one();
            }
        }
    });
    (store, task)
}

use kube::runtime::watcher::watcher;

/// Starts the three watches; each wakes `trigger` on a relevant change.
pub fn spawn_watches(
    client: &Client,
    namespace: Option<&str>,
    lease_namespace: &str,
    trigger: Arc<Notify>,
) -> (Stores, Vec<JoinHandle<()>>) {
    let (relays_api, allowlists_api): (Api<SyncRelay>, Api<RelayAllowlist>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let leases_api: Api<Lease> = Api::namespaced(client.clone(), lease_namespace);
    let (relays, t1) = spawn_watch(
        relays_api,
        watcher::Config::default(),
        view::trigger_hash,
        trigger.clone(),
    );
    let (allowlists, t2) = spawn_watch(
        allowlists_api,
        watcher::Config::default(),
        allowlist_hash,
        trigger.clone(),
    );
    let (leases, t3) = spawn_watch(
        leases_api,
        watcher::Config::default().labels(&format!("{ROLE_LABEL}={ROLE_WORKER}")),
        lease_hash,
        trigger,
    );
    (
        Stores {
            relays,
            allowlists,
            leases,
        },
        vec![t1, t2, t3],
    )
}

/// How long an object the controller created is shown before its watch event arrives.
const CREATED_TTL: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Written {
    superseded: HashSet<String>,
    object: SyncRelay,
    created_at: Option<Instant>,
}

/// Read-your-writes over the SyncRelay cache: the objects the controller's writes returned
/// stand in for cached ones until the watch delivers a newer version, so a pass that runs
/// before the watch catches up neither repeats writes nor records events twice.
#[derive(Debug, Default)]
pub struct Overlay {
    written: HashMap<String, Written>,
}

impl Overlay {
    /// Records the objects a pass's writes returned (`superseded`: the version each write
    /// replaced; `None` for a creation).
    pub fn record(&mut self, updated: Vec<(Option<String>, SyncRelay)>) {
        for (superseded, object) in updated {
            let key = view::key(&object);
            let entry = self.written.entry(key).or_insert_with(|| Written {
                superseded: HashSet::new(),
                object: object.clone(),
                created_at: None,
            });
            match superseded {
                Some(rv) => entry.superseded.insert(rv),
                None => {
                    entry.created_at = Some(Instant::now());
                    false
                }
            };
            // Every version before the newest is superseded too.
            if let Some(rv) = entry.object.metadata.resource_version.clone() {
                if entry.object.metadata.resource_version != object.metadata.resource_version {
                    entry.superseded.insert(rv);
                }
            }
            entry.object = object;
        }
    }

    /// The cached objects with this controller's newer writes standing in.
    pub fn merge(&mut self, cached: Vec<Arc<SyncRelay>>) -> Vec<SyncRelay> {
        let mut out = Vec::with_capacity(cached.len());
        let mut present = HashSet::new();
        for obj in cached {
            let key = view::key(&obj);
            present.insert(key.clone());
            let stale = self.written.get(&key).is_some_and(|w| {
                obj.metadata
                    .resource_version
                    .as_ref()
                    .is_some_and(|rv| w.superseded.contains(rv))
            });
            if stale {
                if let Some(w) = self.written.get(&key) {
                    out.push(w.object.clone());
                }
            } else {
                self.written.remove(&key);
                out.push((*obj).clone());
            }
        }
        // Creations the watch has not delivered yet.
        self.written.retain(|key, w| {
            if present.contains(key) {
                return true;
            }
            match w.created_at {
                Some(at) if at.elapsed() < CREATED_TTL => {
                    out.push(w.object.clone());
                    true
                }
                _ => false,
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::SyncRelaySpec;

    fn relay(rv: &str, label: Option<&str>) -> SyncRelay {
        let mut r = SyncRelay::new(
            "r",
            SyncRelaySpec {
                url: "wss://a.example.org".into(),
                bootstrap: false,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
        );
        r.metadata.namespace = Some("ns".into());
        r.metadata.resource_version = Some(rv.into());
        if let Some(l) = label {
            r.labels_mut()
                .insert(crate::k8s::consts::WORKER_LABEL.into(), l.into());
        }
        r
    }

    #[test]
    fn the_overlay_stands_in_until_the_watch_catches_up() {
        let mut overlay = Overlay::default();
        overlay.record(vec![
            (Some("1".into()), relay("2", None)),
            (Some("1".into()), relay("3", Some("w"))),
        ]);
        // Cache still at 1 (or 2): our newest write (3) stands in.
        for rv in ["1", "2"] {
            let merged = overlay.merge(vec![Arc::new(relay(rv, None))]);
            assert_eq!(merged[0].metadata.resource_version.as_deref(), Some("3"));
        }
        // The watch delivered something newer: the cache wins and the entry goes.
        let merged = overlay.merge(vec![Arc::new(relay("4", Some("w")))]);
        assert_eq!(merged[0].metadata.resource_version.as_deref(), Some("4"));
        assert!(overlay.written.is_empty());
        // A creation shows up before its watch event.
        overlay.record(vec![(None, relay("9", None))]);
        assert_eq!(overlay.merge(Vec::new()).len(), 1);
    }

    #[test]
    fn lease_renewals_do_not_trigger() {
        let mut l = crate::k8s::lease::worker_lease(
            "w",
            crate::core::Millis(1_000),
            crate::k8s::consts::LEASE_DURATION,
        );
        let h = lease_hash(&l);
        if let Some(s) = l.spec.as_mut() {
            s.renew_time = Some(crate::k8s::lease::millis_to_micro(crate::core::Millis(
                6_000,
            )));
        }
        assert_eq!(lease_hash(&l), h);
        if let Some(s) = l.spec.as_mut() {
            s.holder_identity = None;
        }
        assert_ne!(lease_hash(&l), h);
    }
}
