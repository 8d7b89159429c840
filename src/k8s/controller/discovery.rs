//! Phase "discover and reap" (pure): which discovered relay URLs become SyncRelays, which
//! discovered SyncRelays are deleted, and what each RelayAllowlist reports.
//!
//! - The core reports a relay that entered its targets unmanaged (`Command::Discovered`); it
//!   becomes a *candidate* until a SyncRelay with its URL exists. Each pass re-checks the
//!   candidates against the allowlists of every namespace (sorted), so adding or widening an
//!   allowlist admits relays that were refused before. The first namespace whose allowlists
//!   admit a URL gets the SyncRelay, named `sr-<16 hex of SHA-256(url)>` and labelled
//!   `sync.grasp.dev/discovered=true`.
//! - A discovered SyncRelay (never one without the label, never a bootstrap one) is reaped
//!   when its namespace's allowlists now deny it (deny rule, no allow rule, private address),
//!   or when its target (the core's desired counts) has stayed empty for `reapGrace`. A full
//!   allowlist (`maxRelays` lowered) keeps what it has and admits nothing new.
//! - Each allowlist reports `matched` (discovered relays it admits) and `refused` (discovered
//!   URLs it refused: deny rule, private address, or full).

use super::plan::earliest;
use super::validate::Verdict;
use super::view;
use crate::api::allowlist::{admit, Admission};
use crate::api::crd::RelayAllowlistStatus;
use crate::api::types::discovered_name;
use crate::api::types::{RelayAllowlist, RelayAllowlistSpec, SyncRelay, SyncRelaySpec};
use crate::core::url::RelayUrl;
use crate::core::Millis;
use crate::k8s::consts::{ALLOW_PRIVATE_ANNOTATION, DISCOVERED_LABEL, FINALIZER};
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Most candidates remembered (refused URLs are kept for re-checks); the oldest go first.
pub const MAX_CANDIDATES: usize = 10_000;

/// Why a discovered relay is reaped.
pub mod reap_reason {
    /// The allowlists no longer admit it.
    pub const DENIED: &str = "Denied";
    /// Its target stayed empty past the grace period.
    pub const EMPTY_TARGET: &str = "EmptyTarget";
}

/// How long a planned creation waits to be seen in the cache before it is planned again. A
/// candidate stays remembered until its SyncRelay exists: a create that failed (the API server
/// restarting, say) must be retried, and the core reports a discovered URL only once.
pub const CREATE_RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    first_seen: Millis,
    /// The last refusal label, so that metrics and events fire on changes only.
    refused: Option<&'static str>,
    /// When its creation was last planned (`admitted` is counted on the first only).
    create_planned: Option<Millis>,
}

/// What discovery remembers between passes.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryState {
    candidates: BTreeMap<RelayUrl, Candidate>,
    empty_since: BTreeMap<String, Millis>,
}

impl DiscoveryState {
    /// Notes a URL the core discovered.
    pub fn discovered(&mut self, url: RelayUrl, now: Millis) {
        self.candidates.entry(url).or_insert(Candidate {
            first_seen: now,
            refused: None,
            create_planned: None,
        });
        if self.candidates.len() > MAX_CANDIDATES {
            if let Some(oldest) = self
                .candidates
                .iter()
                .min_by_key(|(u, c)| (c.first_seen, (*u).clone()))
                .map(|(u, _)| u.clone())
            {
                self.candidates.remove(&oldest);
            }
        }
    }

    /// URLs waiting for admission.
    pub fn candidates(&self) -> impl Iterator<Item = &RelayUrl> {
        self.candidates.keys()
    }
}

/// Where the core's target for a relay stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Some repo or root event wants it.
    NonEmpty,
    /// Nothing wants it.
    Empty,
}

/// Inputs of the phase.
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryInput<'a> {
    /// Every SyncRelay (all watched namespaces).
    pub relays: &'a [SyncRelay],
    /// The validate phase's verdicts by key.
    pub verdicts: &'a BTreeMap<String, Verdict>,
    /// Every RelayAllowlist.
    pub allowlists: &'a [RelayAllowlist],
    /// The core's targets, for the relays it knows.
    pub targets: &'a BTreeMap<RelayUrl, Target>,
    /// Now.
    pub now: Millis,
    /// How long a discovered relay's target may stay empty.
    pub reap_grace: Duration,
}

/// A SyncRelay to create.
#[derive(Debug, Clone, PartialEq)]
pub struct Creation {
    /// The object.
    pub relay: SyncRelay,
    /// The admitting allowlist (namespace/name), for the event.
    pub allowlist: (String, String),
}

/// A refusal that is new (or changed reason) this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The URL.
    pub url: RelayUrl,
    /// The admission label (`denied`, `not_allowed`, `private_address`, `full`).
    pub label: &'static str,
    /// The allowlist to attach the event to (the first one of the first namespace), if any.
    pub allowlist: Option<(String, String)>,
}

/// The phase's decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DiscoveryOutput {
    /// SyncRelays to create.
    pub create: Vec<Creation>,
    /// Keys of discovered SyncRelays to delete, with the reason.
    pub reap: Vec<(String, &'static str)>,
    /// New refusals.
    pub refused: Vec<Refusal>,
    /// Admission labels to count (`admitted` per creation, and each new refusal).
    pub counted: Vec<&'static str>,
    /// Allowlist statuses that differ from what the objects show: (namespace, name, status).
    pub allowlist_status: Vec<(String, String, RelayAllowlistStatus)>,
    /// When an empty-target timer runs out next, or a planned creation is due again.
    pub next_wakeup: Option<Millis>,
}

struct NsLists<'a> {
    objects: Vec<&'a RelayAllowlist>,
    specs: Vec<RelayAllowlistSpec>,
    matched: Vec<u32>,
    refused: Vec<u64>,
}

impl NsLists<'_> {
    fn count_refusal(&mut self, url: &RelayUrl) {
        for i in 0..self.specs.len() {
            let alone = admit(
                std::slice::from_ref(&self.specs[i]),
                std::slice::from_ref(&self.matched[i]),
                url,
            );
            if matches!(
                alone,
                Admission::Denied | Admission::PrivateAddress | Admission::Full
            ) {
                self.refused[i] += 1;
            }
        }
    }
}

fn ns_of<K: ResourceExt>(k: &K) -> String {
    k.namespace().unwrap_or_default()
}

/// Runs the phase. Mutates the remembered candidates and empty-target timers.
pub fn discover(state: &mut DiscoveryState, input: &DiscoveryInput<'_>) -> DiscoveryOutput {
    let mut out = DiscoveryOutput::default();
    let now = input.now;

    // Allowlists by namespace, each namespace's lists sorted by name.
    let mut namespaces: BTreeMap<String, NsLists<'_>> = BTreeMap::new();
    let mut sorted: Vec<&RelayAllowlist> = input.allowlists.iter().collect();
    sorted.sort_by_key(|a| (ns_of(*a), a.name_any()));
    for a in sorted {
        let ns = namespaces.entry(ns_of(a)).or_insert_with(|| NsLists {
            objects: Vec::new(),
            specs: Vec::new(),
            matched: Vec::new(),
            refused: Vec::new(),
        });
        ns.objects.push(a);
        ns.specs.push(a.spec.clone());
        ns.matched.push(0);
        ns.refused.push(0);
    }

    // Existing relays: their URLs, and the discovered ones' admission, oldest first.
    let mut existing: BTreeSet<RelayUrl> = BTreeSet::new();
    let mut names: BTreeSet<(String, String)> = BTreeSet::new();
    let mut order: Vec<&SyncRelay> = input.relays.iter().collect();
    order.sort_by_key(|r| (view::created(r), view::key(r)));
    let mut live_keys = BTreeSet::new();
    for r in order {
        let key = view::key(r);
        names.insert((ns_of(r), r.name_any()));
        let url = match input.verdicts.get(&key).and_then(Verdict::url) {
            Some(u) => u.clone(),
            None => match RelayUrl::parse(&r.spec.url) {
                Ok(u) => u,
                Err(_) => continue,
            },
        };
        existing.insert(url.clone());
        if !view::is_discovered(r) || view::is_deleting(r) || r.spec.bootstrap {
            continue;
        }
        live_keys.insert(key.clone());
        let verdict = match namespaces.get_mut(&ns_of(r)) {
            Some(ns) => {
                let v = admit(&ns.specs, &ns.matched, &url);
                if let Admission::Admitted { allowlist, .. } = v {
                    ns.matched[allowlist] += 1;
                } else if v != Admission::Full {
                    ns.count_refusal(&url);
                }
                v
            }
            None => Admission::NotAllowed,
        };
        if matches!(
            verdict,
            Admission::Denied | Admission::NotAllowed | Admission::PrivateAddress
        ) {
            out.reap.push((key, reap_reason::DENIED));
            continue;
        }
        match input.targets.get(&url) {
            Some(Target::Empty) => {
                let since = *state.empty_since.entry(key.clone()).or_insert(now);
                let deadline = since + input.reap_grace;
                if now >= deadline {
                    out.reap.push((key, reap_reason::EMPTY_TARGET));
                } else {
                    out.next_wakeup = earliest(out.next_wakeup, Some(deadline));
                }
            }
            Some(Target::NonEmpty) => {
                state.empty_since.remove(&key);
            }
            // The core does not know it yet: no timer.
            None => {}
        }
    }
    state.empty_since.retain(|k, _| live_keys.contains(k));

    // Candidates: admitted ones are created in the first namespace that admits them.
    state.candidates.retain(|u, _| !existing.contains(u));
    let urls: Vec<RelayUrl> = state.candidates.keys().cloned().collect();
    for url in urls {
        let mut refusal = Admission::NotAllowed;
        let mut refusal_ns: Option<String> = None;
        let mut created = false;
        for (ns_name, ns) in namespaces.iter_mut() {
            match admit(&ns.specs, &ns.matched, &url) {
                Admission::Admitted {
                    allowlist,
                    allow_private_networks,
                } => {
                    let name = discovered_name(&url);
                    if names.contains(&(ns_name.clone(), name.clone())) {
                        // Name taken by an object with another URL: leave it alone.
                        continue;
                    }
                    ns.matched[allowlist] += 1;
                    let last = state.candidates.get(&url).and_then(|c| c.create_planned);
                    let planned_at = match last {
                        Some(at) if now < at + CREATE_RETRY => at,
                        _ => {
                            let admitting = ns.objects[allowlist].name_any();
                            out.create.push(Creation {
                                relay: discovered_relay(
                                    ns_name,
                                    &name,
                                    &url,
                                    allow_private_networks,
                                ),
                                allowlist: (ns_name.clone(), admitting),
                            });
                            if last.is_none() {
                                out.counted.push("admitted");
                            }
                            if let Some(c) = state.candidates.get_mut(&url) {
                                c.create_planned = Some(now);
                            }
                            now
                        }
                    };
                    // Until the object shows up in the cache: plan it again when due.
                    out.next_wakeup = earliest(out.next_wakeup, Some(planned_at + CREATE_RETRY));
                    names.insert((ns_name.clone(), name));
                    created = true;
                    break;
                }
                Admission::NotAllowed => {}
                other => {
                    ns.count_refusal(&url);
                    if refusal == Admission::NotAllowed {
                        refusal = other;
                        refusal_ns = Some(ns_name.clone());
                    }
                }
            }
        }
        if created {
            continue;
        }
        let label = refusal.label();
        if let Some(c) = state.candidates.get_mut(&url) {
            c.create_planned = None;
            if c.refused != Some(label) {
                c.refused = Some(label);
                out.counted.push(label);
                let ns_for_event = refusal_ns.or_else(|| namespaces.keys().next().cloned());
                let allowlist = ns_for_event.and_then(|ns| {
                    let first = namespaces.get(&ns)?.objects.first()?.name_any();
                    Some((ns, first))
                });
                out.refused.push(Refusal {
                    url: url.clone(),
                    label,
                    allowlist,
                });
            }
        }
    }

    // Allowlist statuses, written only when they differ.
    for (ns_name, ns) in &namespaces {
        for (i, a) in ns.objects.iter().enumerate() {
            let status = RelayAllowlistStatus {
                observed_generation: a.metadata.generation,
                matched: u64::from(ns.matched[i]),
                refused: ns.refused[i],
            };
            if a.status.as_ref() != Some(&status) {
                out.allowlist_status
                    .push((ns_name.clone(), a.name_any(), status));
            }
        }
    }
    out
}

/// The SyncRelay discovery creates for `url` in `namespace`: labelled discovered, with the
/// finalizer already on, and the allowlist's `allowPrivateNetworks` passed on to the worker.
pub fn discovered_relay(
    namespace: &str,
    name: &str,
    url: &RelayUrl,
    allow_private_networks: bool,
) -> SyncRelay {
    let mut r = SyncRelay::new(
        name,
        SyncRelaySpec {
            url: url.to_string(),
            bootstrap: false,
            suspend: false,
            limits: None,
            auth_secret_ref: None,
        },
    );
    r.metadata.namespace = Some(namespace.to_string());
    r.labels_mut()
        .insert(DISCOVERED_LABEL.to_string(), "true".to_string());
    r.annotations_mut().insert(
        ALLOW_PRIVATE_ANNOTATION.to_string(),
        allow_private_networks.to_string(),
    );
    r.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::controller::validate::validate_all;

    const T0: Millis = Millis(1_790_000_000_000);
    const GRACE: Duration = Duration::from_secs(600);

    fn url(s: &str) -> RelayUrl {
        RelayUrl::parse(s).expect("valid")
    }

    fn allowlist(ns: &str, name: &str, yaml: &str) -> RelayAllowlist {
        let mut a = RelayAllowlist::new(name, serde_yaml::from_str(yaml).expect("spec"));
        a.metadata.namespace = Some(ns.into());
        a.metadata.generation = Some(1);
        a
    }

    fn run(
        state: &mut DiscoveryState,
        relays: &[SyncRelay],
        lists: &[RelayAllowlist],
        targets: &BTreeMap<RelayUrl, Target>,
        now: Millis,
    ) -> DiscoveryOutput {
        let verdicts = validate_all(relays, 512);
        discover(
            state,
            &DiscoveryInput {
                relays,
                verdicts: &verdicts,
                allowlists: lists,
                targets,
                now,
                reap_grace: GRACE,
            },
        )
    }

    #[test]
    fn candidates_are_created_where_admitted_and_refusals_counted_once() {
        let lists = [allowlist(
            "grasp",
            "default",
            "allow:\n- host: '*.example.org'\ndeny:\n- host: spam.example.org\n",
        )];
        let mut state = DiscoveryState::default();
        state.discovered(url("wss://a.example.org"), T0);
        state.discovered(url("wss://spam.example.org"), T0);
        state.discovered(url("wss://other.net"), T0);
        let out = run(&mut state, &[], &lists, &BTreeMap::new(), T0);
        assert_eq!(out.create.len(), 1);
        let created = &out.create[0].relay;
        assert_eq!(
            created.name_any(),
            discovered_name(&url("wss://a.example.org"))
        );
        assert_eq!(created.namespace().as_deref(), Some("grasp"));
        assert!(view::is_discovered(created));
        assert!(view::has_finalizer(created));
        let mut counted = out.counted.clone();
        counted.sort();
        assert_eq!(counted, ["admitted", "denied", "not_allowed"]);
        assert_eq!(
            out.allowlist_status,
            vec![(
                "grasp".to_string(),
                "default".to_string(),
                RelayAllowlistStatus {
                    observed_generation: Some(1),
                    matched: 1,
                    refused: 1
                }
            )]
        );
        // The next pass sees the created object; refusals are not counted again.
        let again = run(
            &mut state,
            std::slice::from_ref(created),
            &lists,
            &BTreeMap::new(),
            T0,
        );
        assert!(again.create.is_empty());
        assert!(again.counted.is_empty() && again.refused.is_empty());
        assert_eq!(state.candidates().count(), 2);
    }

    #[test]
    fn a_creation_not_seen_in_the_cache_is_planned_again_and_counted_once() {
        let lists = [allowlist(
            "grasp",
            "default",
            "allow:\n- host: '*.example.org'\n",
        )];
        let mut state = DiscoveryState::default();
        state.discovered(url("wss://a.example.org"), T0);
        let first = run(&mut state, &[], &lists, &BTreeMap::new(), T0);
        assert_eq!(first.create.len(), 1);
        assert_eq!(first.counted, ["admitted"]);
        assert_eq!(first.next_wakeup, Some(T0 + CREATE_RETRY));
        // The create failed (the API server was restarting): no object appears. Not planned
        // again before the retry interval, and the allowlist still counts it as matched.
        let soon = run(
            &mut state,
            &[],
            &lists,
            &BTreeMap::new(),
            T0 + CREATE_RETRY / 2,
        );
        assert!(soon.create.is_empty());
        assert_eq!(
            soon.allowlist_status, first.allowlist_status,
            "still matched: 1"
        );
        assert_eq!(soon.next_wakeup, Some(T0 + CREATE_RETRY));
        let later = T0 + CREATE_RETRY;
        let retry = run(&mut state, &[], &lists, &BTreeMap::new(), later);
        assert_eq!(retry.create, first.create, "the same object, planned again");
        assert!(retry.counted.is_empty(), "admitted is counted once");
        // Once it exists the candidate is gone: nothing more is planned.
        let created = retry.create[0].relay.clone();
        let done = run(
            &mut state,
            &[created],
            &lists,
            &BTreeMap::new(),
            later + CREATE_RETRY,
        );
        assert!(done.create.is_empty());
        assert_eq!(state.candidates().count(), 0);
    }

    #[test]
    fn without_allowlists_nothing_is_created() {
        let mut state = DiscoveryState::default();
        state.discovered(url("wss://a.example.org"), T0);
        let out = run(&mut state, &[], &[], &BTreeMap::new(), T0);
        assert!(out.create.is_empty());
        assert_eq!(out.counted, ["not_allowed"]);
    }

    #[test]
    fn reaping_needs_the_label_and_respects_grace_and_denial() {
        let lists = [allowlist(
            "grasp",
            "default",
            "allow:\n- host: '*.example.org'\n",
        )];
        let found = discovered_relay("grasp", "sr-1", &url("wss://a.example.org"), false);
        let denied = discovered_relay("grasp", "sr-2", &url("wss://b.other.net"), false);
        let mut explicit = SyncRelay::new(
            "explicit",
            SyncRelaySpec {
                url: "wss://c.other.net".into(),
                bootstrap: false,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
        );
        explicit.metadata.namespace = Some("grasp".into());
        let relays = [found, denied, explicit];
        let targets = BTreeMap::from([
            (url("wss://a.example.org"), Target::Empty),
            (url("wss://c.other.net"), Target::Empty),
        ]);
        let mut state = DiscoveryState::default();
        let out = run(&mut state, &relays, &lists, &targets, T0);
        assert_eq!(
            out.reap,
            vec![("grasp/sr-2".to_string(), reap_reason::DENIED)]
        );
        assert_eq!(out.next_wakeup, Some(T0 + GRACE));
        let later = run(&mut state, &relays, &lists, &targets, T0 + GRACE);
        assert!(later
            .reap
            .contains(&("grasp/sr-1".to_string(), reap_reason::EMPTY_TARGET)));
        assert!(!later.reap.iter().any(|(k, _)| k == "grasp/explicit"));
        // A target that comes back resets the timer.
        let back = BTreeMap::from([(url("wss://a.example.org"), Target::NonEmpty)]);
        let mut fresh = DiscoveryState::default();
        run(&mut fresh, &relays, &lists, &targets, T0);
        run(&mut fresh, &relays, &lists, &back, T0 + GRACE / 2);
        let out = run(&mut fresh, &relays, &lists, &targets, T0 + GRACE);
        assert!(!out.reap.iter().any(|(k, _)| k == "grasp/sr-1"));
    }

    #[test]
    fn max_relays_caps_creation() {
        let lists = [allowlist(
            "grasp",
            "small",
            "maxRelays: 1\nallow:\n- host: '*'\n",
        )];
        let mut state = DiscoveryState::default();
        state.discovered(url("wss://a.example.org"), T0);
        state.discovered(url("wss://b.example.org"), T0);
        let out = run(&mut state, &[], &lists, &BTreeMap::new(), T0);
        assert_eq!(out.create.len(), 1);
        assert!(out.counted.contains(&"full"));
    }
}
