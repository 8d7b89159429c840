//! The controller's exact API calls, against a mocked API server (tower-test): a reconcile pass
//! is planned (`plan`, pure) and applied (`apply`, through a real `kube::Client` whose
//! transport is the mock). The mock keeps the objects, answers patches the way the API server
//! would for the patch shapes the controller sends, and records every request, so each test
//! asserts method, path, patch type and body of every call, in order:
//! - a new relay: finalizer (JSON patch with a `test`), then the worker label (merge patch),
//!   then the status (server-side apply, field manager `grasp-sync-controller`, forced);
//!   the next pass makes no call;
//! - a worker lost (Lease expired): relabel at once, status follows;
//! - the drain handshake: annotation → no call while waiting → `Drained` ack → relabel and
//!   annotation removed → status with `draining: false`.

use grasp_sync::api::conditions::Condition;
use grasp_sync::api::types::{SyncRelay, SyncRelaySpec};
use grasp_sync::core::Millis;
use grasp_sync::k8s::assign::{assign, DEFAULT_EPSILON};
use grasp_sync::k8s::consts::{drained_condition, DRAIN_ANNOTATION, FINALIZER, WORKER_LABEL};
use grasp_sync::k8s::controller::apply::{apply, apply_concurrently};
use grasp_sync::k8s::controller::plan::{plan, ControllerState, Observed, PlanConfig};
use http::{Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: &str = "grasp";
const T0: Millis = Millis(1_790_000_000_000);
const BASE: &str = "/apis/sync.grasp.dev/v1alpha1/namespaces/grasp/syncrelays";

/// One request as the mock saw it.
#[derive(Debug, Clone)]
struct Call {
    method: String,
    path: String,
    query: String,
    content_type: String,
    body: Value,
}

impl Call {
    fn summary(&self) -> (String, String, String) {
        (
            self.method.clone(),
            self.path.clone(),
            self.content_type.clone(),
        )
    }
}

/// A mocked API server holding SyncRelays as JSON.
#[derive(Clone, Default)]
struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    calls: Arc<Mutex<Vec<Call>>>,
}

fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn pointer_parts(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(str::to_string)
        .collect()
}

/// The JSON-patch subset the controller sends: `test`, `add` and `remove` on
/// `/metadata/finalizers[/i|/-]`. `None` when a `test` fails.
fn json_patch(target: &mut Value, ops: &Value) -> Option<()> {
    for op in ops.as_array()? {
        let path = op["path"].as_str()?;
        let parts = pointer_parts(path);
        match op["op"].as_str()? {
            "test" => {
                let found = target.pointer(path).cloned().unwrap_or(Value::Null);
                if found != op["value"] {
                    return None;
                }
            }
            "add" => {
                let (last, parent) = parts.split_last()?;
                let parent_ptr = format!("/{}", parent.join("/"));
                let holder = target.pointer_mut(&parent_ptr)?;
                if last == "-" {
                    holder.as_array_mut()?.push(op["value"].clone());
                } else {
                    holder
                        .as_object_mut()?
                        .insert(last.clone(), op["value"].clone());
                }
            }
            "remove" => {
                let (last, parent) = parts.split_last()?;
                let parent_ptr = format!("/{}", parent.join("/"));
                let list = target.pointer_mut(&parent_ptr)?.as_array_mut()?;
                list.remove(last.parse::<usize>().ok()?);
            }
            _ => return None,
        }
    }
    Some(())
}

/// Server-side apply of the controller's status fields: its conditions replace those of the
/// same type (a list-map keyed by type), the rest of the body replaces its fields.
fn apply_status(target: &mut Value, body: &Value) {
    let status = target
        .as_object_mut()
        .map(|o| o.entry("status").or_insert(json!({})));
    let Some(status) = status else { return };
    let fresh = body["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut conditions: Vec<Value> = status["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|c| !fresh.iter().any(|f| f["type"] == c["type"]))
        .collect();
    conditions.extend(fresh);
    status["conditions"] = Value::Array(conditions);
    match body["status"].get("assignment") {
        Some(a) => status["assignment"] = a.clone(),
        None => {
            if let Some(o) = status.as_object_mut() {
                o.remove("assignment");
            }
        }
    }
    status["observedGeneration"] = body["status"]["observedGeneration"].clone();
}

impl FakeApi {
    fn put(&self, relay: &SyncRelay) {
        let v = serde_json::to_value(relay).expect("json");
        let name = relay.metadata.name.clone().expect("name");
        self.objects.lock().expect("lock").insert(name, v);
    }

    fn relays(&self) -> Vec<SyncRelay> {
        self.objects
            .lock()
            .expect("lock")
            .values()
            .map(|v| serde_json::from_value(v.clone()).expect("relay"))
            .collect()
    }

    fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().expect("lock"))
    }

    fn edit(&self, name: &str, f: impl FnOnce(&mut SyncRelay)) {
        let mut relay: SyncRelay =
            serde_json::from_value(self.objects.lock().expect("lock")[name].clone())
                .expect("relay");
        f(&mut relay);
        self.put(&relay);
    }

    fn respond(&self, call: &Call) -> (u16, Value) {
        let rest = call.path.strip_prefix(BASE).unwrap_or_default();
        let mut parts = rest.trim_start_matches('/').split('/');
        let name = parts.next().unwrap_or_default().to_string();
        let status_sub = parts.next() == Some("status");
        let mut objects = self.objects.lock().expect("lock");
        let Some(obj) = objects.get_mut(&name) else {
            return (
                404,
                json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
            );
        };
        let ok = match (call.method.as_str(), call.content_type.as_str(), status_sub) {
            ("PATCH", "application/json-patch+json", false) => {
                json_patch(obj, &call.body).is_some()
            }
            ("PATCH", "application/merge-patch+json", false) => {
                merge(obj, &call.body);
                true
            }
            ("PATCH", "application/apply-patch+yaml", true) => {
                apply_status(obj, &call.body);
                true
            }
            _ => false,
        };
        if !ok {
            return (
                422,
                json!({"kind": "Status", "code": 422, "reason": "Invalid"}),
            );
        }
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        obj["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
        (200, obj.clone())
    }

    /// A `kube::Client` whose requests this fake answers.
    fn client(&self) -> Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let call = Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (code, reply) = fake.respond(&call);
                fake.calls.lock().expect("lock").push(call);
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response");
                send.send_response(response);
            }
        });
        Client::new(service, NS)
    }
}

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
    r.metadata.namespace = Some(NS.into());
    r.metadata.generation = Some(1);
    r.metadata.uid = Some(format!("uid-{name}"));
    r.metadata.resource_version = Some("1".into());
    r
}

/// One pass: plan from what the fake holds, apply through the mock; returns the calls made.
async fn pass(
    api: &FakeApi,
    client: &Client,
    state: &mut ControllerState,
    workers: &[&str],
    now: Millis,
) -> Vec<Call> {
    let relays = api.relays();
    let workers: Vec<String> = workers.iter().map(|w| w.to_string()).collect();
    let planned = plan(
        state,
        &Observed {
            relays: &relays,
            allowlists: &[],
            workers: &workers,
            targets: &BTreeMap::new(),
            now,
        },
        &PlanConfig::default(),
    );
    let report = apply(client, &planned.actions, None).await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.conflicts, 0);
    api.take_calls()
}

fn path(name: &str) -> String {
    format!("{BASE}/{name}")
}

fn status_path(name: &str) -> String {
    format!("{BASE}/{name}/status")
}

const JSON_PATCH: &str = "application/json-patch+json";
const MERGE: &str = "application/merge-patch+json";
const APPLY: &str = "application/apply-patch+yaml";

fn condition_types(call: &Call) -> Vec<String> {
    call.body["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c["type"].as_str().map(str::to_string))
        .collect()
}

fn assert_controller_apply(call: &Call) {
    assert!(
        call.query.contains("fieldManager=grasp-sync-controller")
            && call.query.contains("force=true"),
        "{}",
        call.query
    );
    assert_eq!(condition_types(call), ["Accepted", "Assigned", "Ready"]);
    // Never the workers' fields.
    for k in ["connection", "sync", "health"] {
        assert!(
            call.body["status"].get(k).is_none(),
            "{k} in the controller's apply"
        );
    }
    assert_eq!(call.body["apiVersion"], "sync.grasp.dev/v1alpha1");
    assert_eq!(call.body["kind"], "SyncRelay");
}

#[tokio::test]
async fn a_new_relay_gets_the_finalizer_then_label_and_status() {
    let api = FakeApi::default();
    api.put(&relay("r"));
    let client = api.client();
    let mut state = ControllerState::default();
    let calls = pass(&api, &client, &mut state, &["w-1"], T0).await;
    let summary: Vec<_> = calls.iter().map(Call::summary).collect();
    assert_eq!(
        summary,
        [
            ("PATCH".into(), path("r"), JSON_PATCH.into()),
            ("PATCH".into(), path("r"), MERGE.into()),
            ("PATCH".into(), status_path("r"), APPLY.into()),
        ]
    );
    assert_eq!(
        calls[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    );
    assert_eq!(
        calls[1].body,
        json!({"metadata": {"labels": {WORKER_LABEL: "w-1"}}})
    );
    assert_controller_apply(&calls[2]);
    assert_eq!(calls[2].body["status"]["assignment"]["worker"], "w-1");
    assert_eq!(calls[2].body["status"]["assignment"]["draining"], false);
    assert_eq!(calls[2].body["status"]["observedGeneration"], 1);

    // Settled: the next pass makes no call.
    let calls = pass(
        &api,
        &client,
        &mut state,
        &["w-1"],
        T0 + Duration::from_secs(30),
    )
    .await;
    assert!(calls.is_empty(), "{calls:?}");
}

#[tokio::test]
async fn concurrent_apply_keeps_each_relay_s_writes_in_order_and_makes_the_same_calls() {
    let names: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    let run = |width: usize| {
        let names = names.clone();
        async move {
            let api = FakeApi::default();
            for n in &names {
                api.put(&relay(n));
            }
            let client = api.client();
            let mut state = ControllerState::default();
            let relays = api.relays();
            let workers = vec!["w-1".to_string(), "w-2".to_string()];
            let planned = plan(
                &mut state,
                &Observed {
                    relays: &relays,
                    allowlists: &[],
                    workers: &workers,
                    targets: &BTreeMap::new(),
                    now: T0,
                },
                &PlanConfig::default(),
            );
            let report = apply_concurrently(&client, &planned.actions, None, width).await;
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            assert_eq!(report.conflicts, 0);
            assert_eq!(report.updated.len(), 3 * names.len());
            (api.take_calls(), api.relays())
        }
    };
    let (sequential, seq_objects) = run(1).await;
    let (concurrent, conc_objects) = run(8).await;
    assert_eq!(sequential.len(), 3 * names.len());
    assert_eq!(concurrent.len(), sequential.len());
    for n in &names {
        // Per relay: the same calls, in the same order (finalizer, label, status).
        let of = |calls: &[Call]| -> Vec<(String, String, String, Value)> {
            calls
                .iter()
                .filter(|c| c.path == path(n) || c.path == status_path(n))
                .map(|c| {
                    let (m, p, t) = c.summary();
                    (m, p, t, c.body.clone())
                })
                .collect()
        };
        let seq = of(&sequential);
        assert_eq!(seq.len(), 3, "{n}");
        assert_eq!(of(&concurrent), seq, "{n}");
    }
    // Same end state, object by object.
    let labels = |objects: &[SyncRelay]| -> Vec<(String, Option<String>, Vec<String>)> {
        objects
            .iter()
            .map(|r| {
                (
                    r.metadata.name.clone().unwrap_or_default(),
                    r.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(WORKER_LABEL).cloned()),
                    r.metadata.finalizers.clone().unwrap_or_default(),
                )
            })
            .collect()
    };
    assert_eq!(labels(&conc_objects), labels(&seq_objects));
    // And they did run at once: some relay's first write came before an earlier relay's last.
    let first_of = |n: &str| concurrent.iter().position(|c| c.path == path(n));
    let last_of = |n: &str| concurrent.iter().rposition(|c| c.path == status_path(n));
    assert!(
        names.windows(2).any(|w| first_of(&w[1]) < last_of(&w[0])),
        "writes were not interleaved across relays"
    );
}

#[tokio::test]
async fn a_lost_worker_s_relays_are_relabelled_at_once() {
    let api = FakeApi::default();
    api.put(&relay("r"));
    let client = api.client();
    let mut state = ControllerState::default();
    pass(&api, &client, &mut state, &["w-dead"], T0).await;
    // w-dead's Lease expired; w-live is the only live worker.
    let calls = pass(
        &api,
        &client,
        &mut state,
        &["w-live"],
        T0 + Duration::from_secs(20),
    )
    .await;
    let summary: Vec<_> = calls.iter().map(Call::summary).collect();
    assert_eq!(
        summary,
        [
            ("PATCH".into(), path("r"), MERGE.into()),
            ("PATCH".into(), status_path("r"), APPLY.into()),
        ]
    );
    assert_eq!(
        calls[0].body,
        json!({"metadata": {"labels": {WORKER_LABEL: "w-live"}}})
    );
    assert_controller_apply(&calls[1]);
    assert_eq!(calls[1].body["status"]["assignment"]["worker"], "w-live");
}

#[tokio::test]
async fn a_move_to_a_new_worker_drains_the_old_one_first() {
    let api = FakeApi::default();
    let names = ["r0", "r1", "r2", "r3"];
    for n in names {
        api.put(&relay(n));
    }
    let client = api.client();
    let mut state = ControllerState::default();
    pass(&api, &client, &mut state, &["w-old"], T0).await;
    // Which relay the new worker pulls (rendezvous hashing decides).
    let keys: Vec<String> = names.iter().map(|n| format!("{NS}/{n}")).collect();
    let current: BTreeMap<String, String> = keys
        .iter()
        .map(|k| (k.clone(), "w-old".to_string()))
        .collect();
    let moves = assign(&keys, ["w-old", "w-new"], &current, DEFAULT_EPSILON).moves;
    assert_eq!(moves.len(), 1);
    let moving = moves[0].relay.trim_start_matches("grasp/").to_string();

    // 1. ask: the drain annotation names the successor; the label stays.
    let both = ["w-old", "w-new"];
    let calls = pass(
        &api,
        &client,
        &mut state,
        &both,
        T0 + Duration::from_secs(1),
    )
    .await;
    let summary: Vec<_> = calls.iter().map(Call::summary).collect();
    assert_eq!(
        summary,
        [
            ("PATCH".into(), path(&moving), MERGE.into()),
            ("PATCH".into(), status_path(&moving), APPLY.into()),
        ]
    );
    assert_eq!(
        calls[0].body,
        json!({"metadata": {"annotations": {DRAIN_ANNOTATION: "w-new"}}})
    );
    assert_eq!(calls[1].body["status"]["assignment"]["worker"], "w-old");
    assert_eq!(calls[1].body["status"]["assignment"]["draining"], true);

    // 2. wait: no acknowledgement yet, no call.
    let calls = pass(
        &api,
        &client,
        &mut state,
        &both,
        T0 + Duration::from_secs(5),
    )
    .await;
    assert!(calls.is_empty(), "{calls:?}");

    // 3. the old worker closes and acknowledges (its own status apply).
    api.edit(&moving, |r| {
        let ack: Condition = drained_condition("w-old", "2026-09-21T14:13:27Z", Some(1));
        if let Some(s) = r.status.as_mut() {
            s.conditions.push(ack);
        }
    });
    let calls = pass(
        &api,
        &client,
        &mut state,
        &both,
        T0 + Duration::from_secs(7),
    )
    .await;
    let summary: Vec<_> = calls.iter().map(Call::summary).collect();
    assert_eq!(
        summary,
        [
            ("PATCH".into(), path(&moving), MERGE.into()),
            ("PATCH".into(), status_path(&moving), APPLY.into()),
        ]
    );
    assert_eq!(
        calls[0].body,
        json!({"metadata": {
            "labels": {WORKER_LABEL: "w-new"},
            "annotations": {DRAIN_ANNOTATION: null},
        }})
    );
    assert_eq!(calls[1].body["status"]["assignment"]["worker"], "w-new");
    assert_eq!(calls[1].body["status"]["assignment"]["draining"], false);

    // Settled.
    let calls = pass(
        &api,
        &client,
        &mut state,
        &both,
        T0 + Duration::from_secs(9),
    )
    .await;
    assert!(calls.is_empty(), "{calls:?}");
}

#[tokio::test]
async fn a_deleted_relay_is_drained_before_its_finalizer_goes() {
    let api = FakeApi::default();
    api.put(&relay("r"));
    let client = api.client();
    let mut state = ControllerState::default();
    pass(&api, &client, &mut state, &["w-1"], T0).await;
    api.edit("r", |r| {
        r.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_790_000_001).expect("time"),
        ));
    });
    let calls = pass(&api, &client, &mut state, &["w-1"], T0).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].body,
        json!({"metadata": {"annotations": {DRAIN_ANNOTATION: "-"}}})
    );
    api.edit("r", |r| {
        if let Some(s) = r.status.as_mut() {
            s.conditions
                .push(drained_condition("w-1", "2026-09-21T14:13:27Z", Some(1)));
        }
    });
    let calls = pass(&api, &client, &mut state, &["w-1"], T0).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].content_type, JSON_PATCH);
    assert_eq!(
        calls[0].body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
}
