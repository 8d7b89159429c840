//! One reconcile pass over everything the controller watches, as a pure function: from the
//! observed objects, the live workers and the core's targets, the list of API writes to make.
//! The phases, in order:
//! 1. **validate** (`validate.rs`): the `Accepted` verdict per SyncRelay;
//! 2. **assign** (`crate::k8s::assign`): where each accepted relay should be;
//! 3. **step** (`drain.rs`): per relay, the one move to make now (assign, ask to drain, hand
//!    over, cancel), and the finalizer on create and delete;
//! 4. **build status** (`status.rs`): the controller-owned status, written only when changed;
//! 5. **discover and reap** (`discovery.rs`): SyncRelays to create and delete, allowlist
//!    counts.
//!
//! The only state kept between passes is [`ControllerState`] (drain timers, discovery
//! candidates, empty-target timers); everything else is read afresh, so a pass after a
//! restart or a lost write converges to the same result.

use super::actions::{event_reason, Action, EventKind, EventSpec, Target};
use super::discovery::{self, DiscoveryInput, DiscoveryState};
use super::drain::{next_step, DrainTracker, HolderView, Step};
use super::status::{apply_body, build_owned, current_owned, Holding};
use super::validate::{validate_all, Verdict};
use super::view;
use crate::api::conditions::{self, rfc3339, ConditionStatus};
use crate::api::types::{RelayAllowlist, SyncRelay};
use crate::core::url::RelayUrl;
use crate::core::Millis;
use crate::k8s::assign::assign;
use crate::k8s::consts::{DRAIN_ANNOTATION, FINALIZER, WORKER_LABEL};
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub use super::discovery::Target as TargetState;

/// Tunables of a pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanConfig {
    /// How long to wait for a `Drained` acknowledgement.
    pub drain_timeout: Duration,
    /// How long a discovered relay's target may stay empty before it is reaped.
    pub reap_grace: Duration,
    /// Load slack of the assignment.
    pub epsilon: f64,
    /// Longest URL accepted.
    pub max_url_len: usize,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            drain_timeout: crate::k8s::consts::DRAIN_TIMEOUT,
            reap_grace: Duration::from_secs(600),
            epsilon: crate::k8s::assign::DEFAULT_EPSILON,
            max_url_len: 512,
        }
    }
}

/// What the controller remembers between passes.
#[derive(Debug, Clone, Default)]
pub struct ControllerState {
    /// Drains in progress.
    pub drains: DrainTracker,
    /// Discovery candidates and empty-target timers.
    pub discovery: DiscoveryState,
}

/// Everything a pass reads.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// Every SyncRelay.
    pub relays: &'a [SyncRelay],
    /// Every RelayAllowlist.
    pub allowlists: &'a [RelayAllowlist],
    /// Live workers (sorted).
    pub workers: &'a [String],
    /// The core's targets for the relays it knows.
    pub targets: &'a BTreeMap<RelayUrl, TargetState>,
    /// Now.
    pub now: Millis,
}

/// A pass's result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Writes, in order.
    pub actions: Vec<Action>,
    /// Admission labels to count in `relays_discovered`.
    pub admissions: Vec<&'static str>,
    /// Status writes skipped because nothing changed.
    pub unchanged_statuses: usize,
    /// When a timer (drain timeout, reap grace) runs out next.
    pub next_wakeup: Option<Millis>,
}

fn event(kind: EventKind, reason: &'static str, action: &'static str, note: String) -> EventSpec {
    EventSpec {
        kind,
        reason,
        action,
        note,
    }
}

fn set(key: &str, value: &str) -> BTreeMap<String, Option<String>> {
    BTreeMap::from([(key.to_string(), Some(value.to_string()))])
}

fn unset(key: &str) -> BTreeMap<String, Option<String>> {
    BTreeMap::from([(key.to_string(), None)])
}

pub(super) fn earliest(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Runs one pass. See the module docs.
pub fn plan(state: &mut ControllerState, observed: &Observed<'_>, config: &PlanConfig) -> Plan {
    let now = observed.now;
    let mut out = Plan::default();
    let live: BTreeSet<&str> = observed.workers.iter().map(String::as_str).collect();

    // 1. validate
    let verdicts = validate_all(observed.relays, config.max_url_len);

    // 2. assign: accepted relays that are not being deleted.
    let mut relays: Vec<&SyncRelay> = observed.relays.iter().collect();
    relays.sort_by_key(|r| view::key(r));
    let assignable: Vec<String> = relays
        .iter()
        .filter(|r| !view::is_deleting(r))
        .map(|r| view::key(r))
        .filter(|k| matches!(verdicts.get(k), Some(Verdict::Accepted(_))))
        .collect();
    let current: BTreeMap<String, String> = relays
        .iter()
        .filter_map(|r| Some((view::key(r), view::worker_label(r)?.to_string())))
        .collect();
    let assignment = assign(&assignable, observed.workers, &current, config.epsilon);

    // 3 + 4. per relay: finalizer, step, status.
    let keys: BTreeSet<String> = relays.iter().map(|r| view::key(r)).collect();
    state.drains.retain(|k| keys.contains(k));
    for r in &relays {
        let key = view::key(r);
        let target = Target::of(r);
        let verdict = verdicts.get(&key).cloned().unwrap_or(Verdict::Refused {
            reason: crate::k8s::consts::controller_reason::INVALID_URL,
            message: String::new(),
        });
        let deleting = view::is_deleting(r);
        if deleting && !view::has_finalizer(r) {
            state.drains.forget(&key);
            continue;
        }
        if !deleting && !view::has_finalizer(r) {
            out.actions.push(Action::AddFinalizer {
                target: target.clone(),
                current: r.metadata.finalizers.clone(),
            });
        }

        let label = view::worker_label(r).map(str::to_string);
        let drain = view::drain_annotation(r).map(str::to_string);
        let connected = view::connected(r);
        if let (Some(cur), Some(_)) = (&label, &drain) {
            state.drains.note(&key, cur, connected, false, now);
        }
        let desired = if deleting {
            None
        } else {
            assignment.desired.get(&key).map(String::as_str)
        };
        let holder_view = HolderView {
            label_live: label.as_deref().is_some_and(|l| live.contains(l)),
            acked: label
                .as_deref()
                .is_some_and(|l| state.drains.acked(&key, l, connected)),
            drain_started: state.drains.get(&key).map(|t| t.started),
            label: label.clone(),
            drain: drain.clone(),
        };
        let step = if !deleting && observed.workers.is_empty() {
            // No live worker at all (a rollout, an outage): keep labels as they are, so
            // that a worker coming back finds its relays where it left them.
            Step::Keep
        } else {
            next_step(&holder_view, desired, now, config.drain_timeout)
        };
        let previous = r.status.as_ref();
        let previous_since = previous
            .and_then(|s| s.assignment.as_ref())
            .filter(|a| Some(&a.worker) == label.as_ref())
            .map(|a| a.since.clone());
        let stamp = rfc3339(now.as_secs());
        let regarding = r.object_ref(&());

        if deleting {
            match step {
                Step::RequestDrain { target: value } => {
                    if let Some(cur) = &label {
                        state.drains.note(&key, cur, connected, true, now);
                    }
                    out.actions.push(Action::PatchMeta {
                        target: target.clone(),
                        labels: BTreeMap::new(),
                        annotations: set(DRAIN_ANNOTATION, &value),
                    });
                }
                Step::Keep if label.is_some() => {
                    if let Some(t) = state.drains.get(&key) {
                        out.next_wakeup =
                            earliest(out.next_wakeup, Some(t.started + config.drain_timeout));
                    }
                }
                _ => {
                    // No holder, or it let go: the object may go.
                    let index = r
                        .finalizers()
                        .iter()
                        .position(|f| f == FINALIZER)
                        .unwrap_or(0);
                    out.actions.push(Action::RemoveFinalizer {
                        target: target.clone(),
                        index,
                    });
                    state.drains.forget(&key);
                }
            }
            continue;
        }

        // What the relay looks like after this step.
        let mut holding = match (&label, holder_view.label_live) {
            (Some(w), true) => Holding::Held {
                worker: w.clone(),
                since: previous_since.clone().unwrap_or_else(|| stamp.clone()),
                draining: drain.is_some(),
            },
            _ => Holding::NoLiveWorker,
        };
        match &step {
            Step::Keep => {
                if let Some(t) = state.drains.get(&key) {
                    if drain.is_some() {
                        out.next_wakeup =
                            earliest(out.next_wakeup, Some(t.started + config.drain_timeout));
                    }
                }
            }
            Step::Assign { to, from } => {
                let mut annotations = BTreeMap::new();
                if drain.is_some() {
                    annotations = unset(DRAIN_ANNOTATION);
                }
                out.actions.push(Action::PatchMeta {
                    target: target.clone(),
                    labels: set(WORKER_LABEL, to),
                    annotations,
                });
                let (reason, note) = match from {
                    None => (event_reason::ASSIGNED, format!("assigned to worker {to}")),
                    Some(f) => (
                        event_reason::MOVED,
                        format!("moved from worker {f} (lease expired) to {to}"),
                    ),
                };
                out.actions.push(Action::Event {
                    regarding: regarding.clone(),
                    event: event(EventKind::Normal, reason, "Assign", note),
                });
                state.drains.forget(&key);
                holding = Holding::Held {
                    worker: to.clone(),
                    since: stamp.clone(),
                    draining: false,
                };
            }
            Step::RequestDrain { target: value } => {
                if let Some(cur) = &label {
                    state.drains.note(&key, cur, connected, true, now);
                }
                out.actions.push(Action::PatchMeta {
                    target: target.clone(),
                    labels: BTreeMap::new(),
                    annotations: set(DRAIN_ANNOTATION, value),
                });
                if let Holding::Held { draining, .. } = &mut holding {
                    *draining = true;
                }
                out.next_wakeup = earliest(out.next_wakeup, Some(now + config.drain_timeout));
            }
            Step::Complete { to, cause } => {
                let labels = match to {
                    Some(w) => set(WORKER_LABEL, w),
                    None => unset(WORKER_LABEL),
                };
                out.actions.push(Action::PatchMeta {
                    target: target.clone(),
                    labels,
                    annotations: unset(DRAIN_ANNOTATION),
                });
                if let (Some(to), Some(from)) = (to, &label) {
                    out.actions.push(Action::Event {
                        regarding: regarding.clone(),
                        event: event(
                            EventKind::Normal,
                            event_reason::MOVED,
                            "Move",
                            format!("moved from worker {from} to {to} ({cause:?})"),
                        ),
                    });
                }
                state.drains.forget(&key);
                holding = match to {
                    Some(w) => Holding::Held {
                        worker: w.clone(),
                        since: stamp.clone(),
                        draining: false,
                    },
                    None => Holding::NoLiveWorker,
                };
            }
            Step::Cancel => {
                out.actions.push(Action::PatchMeta {
                    target: target.clone(),
                    labels: BTreeMap::new(),
                    annotations: unset(DRAIN_ANNOTATION),
                });
                state.drains.forget(&key);
                if let Holding::Held { draining, .. } = &mut holding {
                    *draining = false;
                }
            }
        }
        if matches!(verdict, Verdict::Refused { .. }) && !matches!(holding, Holding::Held { .. }) {
            holding = Holding::NotAccepted;
        }

        // Events on a flip of Accepted to False.
        if let Verdict::Refused { reason, message } = &verdict {
            let was_refused = view::condition(r, conditions::ACCEPTED)
                .is_some_and(|c| c.status == ConditionStatus::False);
            if !was_refused {
                out.actions.push(Action::Event {
                    regarding: regarding.clone(),
                    event: event(
                        EventKind::Warning,
                        event_reason::REFUSED,
                        "Validate",
                        format!("{reason}: {message}"),
                    ),
                });
            }
        }

        let owned = build_owned(previous, &verdict, &holding, r.metadata.generation, now);
        if owned == current_owned(previous) {
            out.unchanged_statuses += 1;
        } else {
            out.actions.push(Action::ApplyStatus {
                target: target.clone(),
                body: apply_body(&owned),
            });
        }
    }

    // 5. discover and reap.
    let found = discovery::discover(
        &mut state.discovery,
        &DiscoveryInput {
            relays: observed.relays,
            verdicts: &verdicts,
            allowlists: observed.allowlists,
            targets: observed.targets,
            now,
            reap_grace: config.reap_grace,
        },
    );
    out.next_wakeup = earliest(out.next_wakeup, found.next_wakeup);
    let allowlist_ref = |ns: &str, name: &str| {
        observed
            .allowlists
            .iter()
            .find(|a| a.namespace().as_deref() == Some(ns) && a.name_any() == name)
            .map(|a| a.object_ref(&()))
    };
    for c in found.create {
        let regarding = allowlist_ref(&c.allowlist.0, &c.allowlist.1);
        let note = format!(
            "created SyncRelay {} for {}",
            c.relay.name_any(),
            c.relay.spec.url
        );
        out.actions.push(Action::Create {
            relay: Box::new(c.relay),
        });
        if let Some(regarding) = regarding {
            out.actions.push(Action::Event {
                regarding,
                event: event(EventKind::Normal, event_reason::DISCOVERED, "Create", note),
            });
        }
    }
    for refusal in found.refused {
        if let Some(regarding) = refusal
            .allowlist
            .as_ref()
            .and_then(|(ns, name)| allowlist_ref(ns, name))
        {
            out.actions.push(Action::Event {
                regarding,
                event: event(
                    EventKind::Normal,
                    event_reason::REFUSED,
                    "Admit",
                    format!(
                        "discovered relay {} refused: {}",
                        refusal.url, refusal.label
                    ),
                ),
            });
        }
    }
    for (key, reason) in found.reap {
        if let Some(r) = relays.iter().find(|r| view::key(r) == key) {
            // The event follows the delete, and is skipped if the delete fails.
            out.actions.push(Action::Delete {
                target: Target::of(r),
            });
            out.actions.push(Action::Event {
                regarding: r.object_ref(&()),
                event: event(
                    EventKind::Normal,
                    event_reason::REAPED,
                    "Delete",
                    format!("deleting discovered relay {}: {reason}", r.spec.url),
                ),
            });
        }
    }
    for (namespace, name, status) in found.allowlist_status {
        out.actions.push(Action::ApplyAllowlistStatus {
            namespace,
            name,
            status,
        });
    }
    out.admissions = found.counted;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::Condition;
    use crate::api::status::SyncRelayStatus;
    use crate::api::types::SyncRelaySpec;
    use crate::k8s::consts::{drained_condition, DRAIN_NO_SUCCESSOR};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    const T0: Millis = Millis(1_790_000_000_000);

    fn relay(name: &str) -> SyncRelay {
        let mut r = SyncRelay::new(
            name,
            SyncRelaySpec {
                url: format!("wss://{name}.example.org"),
                bootstrap: false,
                suspend: false,
                limits: None,
                auth_secret_ref: None,
            },
        );
        r.metadata.namespace = Some("ns".into());
        r.metadata.generation = Some(1);
        r.metadata.uid = Some(format!("uid-{name}"));
        r.metadata.resource_version = Some("1".into());
        r
    }

    /// Applies the plan's writes to in-memory objects, as the API server would.
    fn simulate(relays: &mut [SyncRelay], actions: &[Action]) {
        for a in actions {
            let Some(key) = a.relay_key() else { continue };
            let Some(r) = relays.iter_mut().find(|r| view::key(r) == key) else {
                continue;
            };
            match a {
                Action::AddFinalizer { .. } => r.finalizers_mut().push(FINALIZER.into()),
                Action::RemoveFinalizer { index, .. } => {
                    r.finalizers_mut().remove(*index);
                }
                Action::PatchMeta {
                    labels,
                    annotations,
                    ..
                } => {
                    for (k, v) in labels {
                        match v {
                            Some(v) => r.labels_mut().insert(k.clone(), v.clone()),
                            None => r.labels_mut().remove(k),
                        };
                    }
                    for (k, v) in annotations {
                        match v {
                            Some(v) => r.annotations_mut().insert(k.clone(), v.clone()),
                            None => r.annotations_mut().remove(k),
                        };
                    }
                }
                Action::ApplyStatus { body, .. } => {
                    let status = r.status.get_or_insert_with(SyncRelayStatus::default);
                    let fresh: Vec<Condition> =
                        serde_json::from_value(body["status"]["conditions"].clone())
                            .expect("conditions");
                    status
                        .conditions
                        .retain(|c| !fresh.iter().any(|f| f.type_ == c.type_));
                    status.conditions.extend(fresh);
                    status.assignment =
                        serde_json::from_value(body["status"]["assignment"].clone()).ok();
                    status.observed_generation = body["status"]["observedGeneration"].as_i64();
                }
                _ => {}
            }
        }
    }

    fn run(
        state: &mut ControllerState,
        relays: &[SyncRelay],
        workers: &[&str],
        now: Millis,
    ) -> Plan {
        let workers: Vec<String> = workers.iter().map(|w| w.to_string()).collect();
        plan(
            state,
            &Observed {
                relays,
                allowlists: &[],
                workers: &workers,
                targets: &BTreeMap::new(),
                now,
            },
            &PlanConfig::default(),
        )
    }

    fn settle(
        state: &mut ControllerState,
        relays: &mut [SyncRelay],
        workers: &[&str],
        now: Millis,
    ) {
        let p = run(state, relays, workers, now);
        simulate(relays, &p.actions);
    }

    fn kinds(p: &Plan) -> Vec<&'static str> {
        p.actions
            .iter()
            .map(|a| match a {
                Action::AddFinalizer { .. } => "finalizer+",
                Action::RemoveFinalizer { .. } => "finalizer-",
                Action::PatchMeta { .. } => "meta",
                Action::ApplyStatus { .. } => "status",
                Action::Create { .. } => "create",
                Action::Delete { .. } => "delete",
                Action::ApplyAllowlistStatus { .. } => "allowlist",
                Action::Event { .. } => "event",
            })
            .collect()
    }

    fn label(r: &SyncRelay) -> Option<&str> {
        view::worker_label(r)
    }

    #[test]
    fn a_new_relay_gets_the_finalizer_then_a_worker_and_settles() {
        let mut state = ControllerState::default();
        let mut relays = vec![relay("r")];
        let p = run(&mut state, &relays, &["w-1"], T0);
        assert_eq!(kinds(&p), ["finalizer+", "meta", "event", "status"]);
        simulate(&mut relays, &p.actions);
        assert_eq!(label(&relays[0]), Some("w-1"));
        let status = relays[0].status.as_ref().expect("status");
        assert_eq!(
            status
                .assignment
                .as_ref()
                .map(|a| (a.worker.as_str(), a.draining)),
            Some(("w-1", false))
        );
        let again = run(&mut state, &relays, &["w-1"], T0 + Duration::from_secs(60));
        assert!(again.actions.is_empty(), "{:?}", again.actions);
        assert_eq!(again.unchanged_statuses, 1);
    }

    #[test]
    fn a_dead_workers_relays_move_at_once() {
        let mut state = ControllerState::default();
        let mut relays = vec![relay("r")];
        settle(&mut state, &mut relays, &["w-dead"], T0);
        let p = run(&mut state, &relays, &["w-live"], T0);
        assert_eq!(kinds(&p), ["meta", "event", "status"]);
        simulate(&mut relays, &p.actions);
        assert_eq!(label(&relays[0]), Some("w-live"));
    }

    /// Four relays on `w-old`; `w-new` joins and pulls exactly one of them (the floor is
    /// 1). Returns the relays settled on `w-old` and the index of the one that moves.
    fn scale_up_setup(state: &mut ControllerState) -> (Vec<SyncRelay>, usize) {
        let mut relays = vec![relay("r0"), relay("r1"), relay("r2"), relay("r3")];
        settle(state, &mut relays, &["w-old"], T0);
        assert!(relays.iter().all(|r| label(r) == Some("w-old")));
        let keys: Vec<String> = relays.iter().map(view::key).collect();
        let current: BTreeMap<String, String> = keys
            .iter()
            .map(|k| (k.clone(), "w-old".to_string()))
            .collect();
        let plan = assign(&keys, ["w-old", "w-new"], &current, 0.15);
        assert_eq!(plan.moves.len(), 1);
        let moving = keys
            .iter()
            .position(|k| *k == plan.moves[0].relay)
            .expect("moving relay");
        (relays, moving)
    }

    #[test]
    fn a_move_between_live_workers_waits_for_the_drained_ack() {
        let mut state = ControllerState::default();
        let (mut relays, m) = scale_up_setup(&mut state);
        // Scale-up: ask the old worker to drain; the label stays.
        let both = ["w-old", "w-new"];
        let p = run(&mut state, &relays, &both, T0);
        assert_eq!(kinds(&p), ["meta", "status"]);
        simulate(&mut relays, &p.actions);
        assert_eq!(label(&relays[m]), Some("w-old"));
        assert_eq!(view::drain_annotation(&relays[m]), Some("w-new"));
        assert!(relays[m]
            .status
            .as_ref()
            .and_then(|s| s.assignment.as_ref())
            .is_some_and(|a| a.draining));
        // Waiting: nothing to do.
        assert!(run(&mut state, &relays, &both, T0 + Duration::from_secs(5))
            .actions
            .is_empty());
        // The old worker acknowledges: hand over.
        if let Some(s) = relays[m].status.as_mut() {
            s.conditions
                .push(drained_condition("w-old", "2026-09-21T14:13:25Z", Some(1)));
        }
        let p = run(&mut state, &relays, &both, T0 + Duration::from_secs(6));
        assert_eq!(kinds(&p), ["meta", "event", "status"]);
        simulate(&mut relays, &p.actions);
        assert_eq!(label(&relays[m]), Some("w-new"));
        assert_eq!(view::drain_annotation(&relays[m]), None);
        assert!(state.drains.is_empty());
        assert!(relays
            .iter()
            .enumerate()
            .all(|(i, r)| i == m || label(r) == Some("w-old")));
    }

    #[test]
    fn a_drain_times_out() {
        let mut state = ControllerState::default();
        let (mut relays, m) = scale_up_setup(&mut state);
        let both = ["w-old", "w-new"];
        let p = run(&mut state, &relays, &both, T0);
        assert_eq!(p.next_wakeup, Some(T0 + crate::k8s::consts::DRAIN_TIMEOUT));
        simulate(&mut relays, &p.actions);
        let p = run(
            &mut state,
            &relays,
            &both,
            T0 + crate::k8s::consts::DRAIN_TIMEOUT,
        );
        simulate(&mut relays, &p.actions);
        assert_eq!(label(&relays[m]), Some("w-new"));
    }

    #[test]
    fn deletion_drains_to_nobody_then_drops_the_finalizer() {
        let mut state = ControllerState::default();
        let mut relays = vec![relay("r")];
        settle(&mut state, &mut relays, &["w-1"], T0);
        relays[0].metadata.deletion_timestamp =
            Some(Time(Timestamp::from_second(1_790_000_010).expect("time")));
        let p = run(&mut state, &relays, &["w-1"], T0);
        assert_eq!(kinds(&p), ["meta"]);
        simulate(&mut relays, &p.actions);
        assert_eq!(view::drain_annotation(&relays[0]), Some(DRAIN_NO_SUCCESSOR));
        assert!(run(&mut state, &relays, &["w-1"], T0).actions.is_empty());
        if let Some(s) = relays[0].status.as_mut() {
            s.conditions
                .push(drained_condition("w-1", "later", Some(1)));
        }
        let p = run(&mut state, &relays, &["w-1"], T0);
        assert_eq!(kinds(&p), ["finalizer-"]);
        // With no live holder the finalizer goes at once.
        let mut orphan = vec![relay("o")];
        settle(&mut state, &mut orphan, &["w-gone"], T0);
        orphan[0].metadata.deletion_timestamp =
            Some(Time(Timestamp::from_second(1_790_000_010).expect("time")));
        assert_eq!(
            kinds(&run(&mut state, &orphan, &["w-other"], T0)),
            ["finalizer-"]
        );
    }

    #[test]
    fn without_live_workers_labels_stay_and_assigned_is_false() {
        let mut state = ControllerState::default();
        let mut relays = vec![relay("r")];
        settle(&mut state, &mut relays, &["w-1"], T0);
        let p = run(&mut state, &relays, &[], T0);
        assert_eq!(kinds(&p), ["status"]);
        simulate(&mut relays, &p.actions);
        assert_eq!(label(&relays[0]), Some("w-1"));
        let assigned = view::condition(&relays[0], conditions::ASSIGNED).expect("assigned");
        assert_eq!(assigned.status, ConditionStatus::False);
        // The worker comes back: nothing moves.
        let p = run(&mut state, &relays, &["w-1"], T0);
        assert_eq!(kinds(&p), ["status"]);
    }

    #[test]
    fn an_invalid_url_is_refused_and_never_assigned() {
        let mut state = ControllerState::default();
        let mut bad = relay("bad");
        bad.spec.url = "wss://".into();
        let mut relays = vec![bad];
        let p = run(&mut state, &relays, &["w-1"], T0);
        assert_eq!(kinds(&p), ["finalizer+", "event", "status"]);
        simulate(&mut relays, &p.actions);
        assert_eq!(label(&relays[0]), None);
        let accepted = view::condition(&relays[0], conditions::ACCEPTED).expect("accepted");
        assert_eq!(accepted.status, ConditionStatus::False);
        // The refusal event fires once.
        assert!(run(&mut state, &relays, &["w-1"], T0).actions.is_empty());
    }
}
