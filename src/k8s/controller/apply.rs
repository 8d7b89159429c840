//! Phase "apply" (the imperative shell of a pass): performs a plan's [`Action`]s against the
//! API server, in order for each relay. A failed write skips the remaining writes for the same
//! relay (the next pass recomputes them from fresh state); lost races (409, a failed
//! JSON-patch `test`) and objects already gone are expected and only counted. Different
//! relays' writes are independent, so the controller runs several relays' sequences at once:
//! one write at a time made the first assignment of 2,000 relays take minutes (a new relay
//! needs about four writes).

use super::actions::{Action, EventKind, Target};
use crate::api::types::{RelayAllowlist, SyncRelay};
use crate::k8s::consts::{CONTROLLER_MANAGER, FINALIZER};
use futures_util::stream::{self, StreamExt};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Client;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Relays whose writes the controller performs at once.
pub const APPLY_CONCURRENCY: usize = 16;

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Objects as the API returned them after a write, each with the `resourceVersion` the
    /// write superseded (`None` for a creation).
    pub updated: Vec<(Option<String>, SyncRelay)>,
    /// Writes made.
    pub writes: usize,
    /// Status applies made.
    pub status_applied: usize,
    /// Writes that lost a race (409 / 422) or found the object gone (404).
    pub conflicts: usize,
    /// Other failures, described.
    pub errors: Vec<String>,
}

fn is_expected(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if matches!(s.code, 404 | 409 | 422))
}

fn json_patch(ops: Value) -> Result<Patch<()>, serde_json::Error> {
    Ok(Patch::Json(serde_json::from_value(ops)?))
}

/// The JSON patch that adds our finalizer, guarded by a `test` of the list as observed.
pub fn add_finalizer_ops(current: Option<&[String]>) -> Value {
    match current {
        None => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
        ]),
        Some(list) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": list },
            { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
        ]),
    }
}

/// The JSON patch that removes our finalizer at `index`, guarded by a `test`.
pub fn remove_finalizer_ops(index: usize) -> Value {
    let path = format!("/metadata/finalizers/{index}");
    json!([
        { "op": "test", "path": path, "value": FINALIZER },
        { "op": "remove", "path": path },
    ])
}

/// The merge patch of labels and annotations (`null` removes a key).
pub fn meta_patch(
    labels: &BTreeMap<String, Option<String>>,
    annotations: &BTreeMap<String, Option<String>>,
) -> Value {
    let mut meta = Map::new();
    if !labels.is_empty() {
        meta.insert("labels".into(), json!(labels));
    }
    if !annotations.is_empty() {
        meta.insert("annotations".into(), json!(annotations));
    }
    json!({ "metadata": meta })
}

fn relays(client: &Client, namespace: &str) -> Api<SyncRelay> {
    Api::namespaced(client.clone(), namespace)
}

async fn one(
    client: &Client,
    action: &Action,
    recorder: Option<&Recorder>,
    report: &mut ApplyReport,
) -> Result<(), String> {
    let result: Result<Option<SyncRelay>, kube::Error> = match action {
        Action::AddFinalizer { target, current } => {
            let patch = json_patch(add_finalizer_ops(current.as_deref()))
                .map_err(|e| format!("finalizer patch: {e}"))?;
            relays(client, &target.namespace)
                .patch(&target.name, &PatchParams::default(), &patch)
                .await
                .map(Some)
        }
        Action::RemoveFinalizer { target, index } => {
            let patch = json_patch(remove_finalizer_ops(*index))
                .map_err(|e| format!("finalizer patch: {e}"))?;
            relays(client, &target.namespace)
                .patch(&target.name, &PatchParams::default(), &patch)
                .await
                .map(Some)
        }
        Action::PatchMeta {
            target,
            labels,
            annotations,
        } => relays(client, &target.namespace)
            .patch(
                &target.name,
                &PatchParams::default(),
                &Patch::Merge(meta_patch(labels, annotations)),
            )
            .await
            .map(Some),
        Action::ApplyStatus { target, body } => {
            let r = relays(client, &target.namespace)
                .patch_status(
                    &target.name,
                    &PatchParams::apply(CONTROLLER_MANAGER).force(),
                    &Patch::Apply(body),
                )
                .await
                .map(Some);
            if r.is_ok() {
                report.status_applied += 1;
            }
            r
        }
        Action::Create { relay } => {
            let ns = relay.metadata.namespace.clone().unwrap_or_default();
            relays(client, &ns)
                .create(&PostParams::default(), relay)
                .await
                .map(Some)
        }
        Action::Delete { target } => {
            let params = DeleteParams {
                preconditions: target.uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            // With our finalizer on, the object stays (being deleted) until drained.
            relays(client, &target.namespace)
                .delete(&target.name, &params)
                .await
                .map(|either| either.left())
        }
        Action::ApplyAllowlistStatus {
            namespace,
            name,
            status,
        } => {
            let body = json!({
                "apiVersion": "sync.grasp.dev/v1alpha1",
                "kind": "RelayAllowlist",
                "status": status,
            });
            Api::<RelayAllowlist>::namespaced(client.clone(), namespace)
                .patch_status(
                    name,
                    &PatchParams::apply(CONTROLLER_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map(|_| None)
        }
        Action::Event { regarding, event } => {
            let Some(recorder) = recorder else {
                return Ok(());
            };
            let ev = Event {
                type_: match event.kind {
                    EventKind::Normal => EventType::Normal,
                    EventKind::Warning => EventType::Warning,
                },
                reason: event.reason.to_string(),
                note: Some(event.note.clone()),
                action: event.action.to_string(),
                secondary: None,
            };
            // Events are best effort: a failure is logged, never retried.
            if let Err(e) = recorder.publish(&ev, regarding).await {
                tracing::debug!(error = %e, "recording an event failed");
            }
            return Ok(());
        }
    };
    report.writes += 1;
    match result {
        Ok(Some(obj)) => {
            let superseded = target_of(action).and_then(|t| t.resource_version.clone());
            report.updated.push((superseded, obj));
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) if is_expected(&e) => {
            report.conflicts += 1;
            Err(format!("{e}"))
        }
        Err(e) => {
            let text = format!("{action_name}: {e}", action_name = name_of(action));
            report.errors.push(text.clone());
            Err(text)
        }
    }
}

fn target_of(action: &Action) -> Option<&Target> {
    match action {
        Action::AddFinalizer { target, .. }
        | Action::RemoveFinalizer { target, .. }
        | Action::PatchMeta { target, .. }
        | Action::ApplyStatus { target, .. }
        | Action::Delete { target } => Some(target),
        _ => None,
    }
}

fn name_of(action: &Action) -> &'static str {
    match action {
        Action::AddFinalizer { .. } => "add finalizer",
        Action::RemoveFinalizer { .. } => "remove finalizer",
        Action::PatchMeta { .. } => "patch labels/annotations",
        Action::ApplyStatus { .. } => "apply status",
        Action::Create { .. } => "create",
        Action::Delete { .. } => "delete",
        Action::ApplyAllowlistStatus { .. } => "apply allowlist status",
        Action::Event { .. } => "event",
    }
}

/// Performs `actions` one at a time, in order. Events are recorded only with a `recorder`.
pub async fn apply(
    client: &Client,
    actions: &[Action],
    recorder: Option<&Recorder>,
) -> ApplyReport {
    let mut report = ApplyReport::default();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for action in actions {
        let key = action.relay_key();
        if key.as_ref().is_some_and(|k| failed.contains(k)) {
            continue;
        }
        if let Err(e) = one(client, action, recorder, &mut report).await {
            tracing::debug!(action = name_of(action), error = %e, "write skipped or failed");
            if let Some(k) = key {
                failed.insert(k);
            }
        }
    }
    report
}

/// The object an action writes, for grouping: a creation belongs to the relay it creates.
fn group_key(action: &Action) -> Option<String> {
    match action {
        Action::Create { relay } => Some(super::view::key(relay)),
        _ => action.relay_key(),
    }
}

/// Splits `actions` into per-object sequences, each in plan order; an action about no relay
/// is a sequence of its own. Sequences come in the order of their first action.
pub fn per_object(actions: &[Action]) -> Vec<Vec<Action>> {
    let mut groups: Vec<Vec<Action>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for action in actions {
        match group_key(action) {
            Some(key) => {
                let at = *index.entry(key).or_insert_with(|| {
                    groups.push(Vec::new());
                    groups.len() - 1
                });
                groups[at].push(action.clone());
            }
            None => groups.push(vec![action.clone()]),
        }
    }
    groups
}

/// Performs `actions` with up to `width` relays' sequences in flight at once: each relay's
/// writes stay in plan order, and a failure skips the rest of that relay's only. The report
/// lists updates in the order of [`per_object`].
pub async fn apply_concurrently(
    client: &Client,
    actions: &[Action],
    recorder: Option<&Recorder>,
    width: usize,
) -> ApplyReport {
    if width <= 1 {
        return apply(client, actions, recorder).await;
    }
    let reports: Vec<ApplyReport> = stream::iter(per_object(actions))
        .map(|group| async move { apply(client, &group, recorder).await })
        .buffered(width)
        .collect()
        .await;
    let mut total = ApplyReport::default();
    for r in reports {
        total.updated.extend(r.updated);
        total.writes += r.writes;
        total.status_applied += r.status_applied;
        total.conflicts += r.conflicts;
        total.errors.extend(r.errors);
    }
    total
}
