//! Smoke test of the envtest-style harness (tests/support/apiserver.rs): a real etcd and
//! kube-apiserver on 127.0.0.1, driven with kube-rs and kubectl. Needs the binaries from
//! `scripts/k8s-tools` (scripts/test builds them).

mod support;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::json;
use std::time::{Duration, Instant};
use support::apiserver::TestApiServer;

const NS: &str = "grasp-smoke";

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_crd_rbac_kubectl_and_restart() {
    let started = Instant::now();
    let mut server = TestApiServer::start();
    eprintln!("TestApiServer::start() took {:?}", started.elapsed());
    assert!(server.url().starts_with("https://127.0.0.1:"));
    let client = server.client().await;

    // A namespace and a Lease in it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &from_json(json!({ "metadata": { "name": NS } })),
        )
        .await
        .expect("create namespace");
    let leases: Api<Lease> = Api::namespaced(client.clone(), NS);
    leases
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "smoke" },
                "spec": { "holderIdentity": "smoke-test", "leaseDurationSeconds": 15 },
            })),
        )
        .await
        .expect("create lease");
    let lease = leases.get("smoke").await.expect("get lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("smoke-test")
    );

    // kubectl sees it.
    let out = server
        .kubectl()
        .args(["get", "namespaces", "-o", "name"])
        .output()
        .expect("run kubectl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl get namespaces: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l == format!("namespace/{NS}")),
        "{stdout}"
    );

    // A CRD, server-side applied, becomes Established and serves objects.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = from_json(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.example.test" },
        "spec": {
            "group": "example.test",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "properties": { "size": { "type": "integer" } },
                    }},
                }},
            }],
        },
    }));
    crds.patch(
        "widgets.example.test",
        &PatchParams::apply("grasp-sync-smoke").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply CRD");
    let mut established = false;
    for _ in 0..100 {
        let crd = crds.get("widgets.example.test").await.expect("get CRD");
        established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(established, "CRD not Established within 10 s");
    let widget_res = ApiResource::from_gvk(&GroupVersionKind::gvk("example.test", "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &widget_res);
    let mut widget = DynamicObject::new("w1", &widget_res);
    widget.data = json!({ "spec": { "size": 3 } });
    // Discovery of a just-Established CRD can lag a moment; retry a bounded number of times.
    let mut created = None;
    for _ in 0..50 {
        match widgets.create(&PostParams::default(), &widget).await {
            Ok(w) => {
                created = Some(w);
                break;
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create widget: {e}"),
        }
    }
    let created = created.expect("widget created within 5 s");
    assert_eq!(created.data["spec"]["size"], 3);

    // A service account without RBAC bindings may not list Leases.
    let nobody = server
        .client_as(
            &format!("system:serviceaccount:{NS}:nobody"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{NS}"),
                "system:authenticated",
            ],
        )
        .await;
    let denied = Api::<Lease>::namespaced(nobody, NS)
        .list(&ListParams::default())
        .await
        .expect_err("unbound service account must not list leases");
    match denied {
        kube::Error::Api(s) => assert_eq!(s.code, 403, "{s:?}"),
        e => panic!("expected a 403, got {e}"),
    }

    // Restart kube-apiserver (same etcd, same port): the old client works again and the
    // data survived.
    let restarted = Instant::now();
    server.restart_apiserver();
    eprintln!("restart_apiserver() took {:?}", restarted.elapsed());
    let mut after = None;
    for _ in 0..20 {
        match leases.get("smoke").await {
            Ok(l) => {
                after = Some(l);
                break;
            }
            Err(e) => {
                eprintln!("after restart: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    let after = after.expect("lease readable within 5 s of the restart");
    assert_eq!(after.metadata.name.as_deref(), Some("smoke"));
    let listed = widgets
        .list(&ListParams::default())
        .await
        .expect("list widgets after restart");
    assert_eq!(listed.items.len(), 1);
}
