//! The Helm chart (`charts/grasp-sync`), the image and the dashboard, checked with the real
//! tools: Helm (`scripts/helm-tool` builds it), `kubernetes-validate --strict` (PyPI, in the
//! test venv), the built `grasp-sync` binary, and a real kube-apiserver for a server-side dry
//! run (`scripts/k8s-tools`). `scripts/test` installs all of them first.
//!
//! Value sets live in `charts/grasp-sync/ci/`. Every external command runs under a timeout.

/// Only the parts of tests/support this test uses (the kube-apiserver harness and the free-port
/// helper it needs), so unrelated support modules do not affect it.
mod support {
    #![allow(dead_code)]
    #[path = "apiserver.rs"]
    pub mod apiserver;
    #[path = "bed.rs"]
    pub mod bed;
    #[path = "guarded.rs"]
    pub mod guarded;
}

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const HELM_VERSION: &str = "v4.3.1";
const RELEASE: &str = "gs";
const NAMESPACE: &str = "grasp-system";
/// The `-k` version for kubernetes-validate (one its bundled schemas cover).
const VALIDATE_K8S_VERSION: &str = "1.35.0";
const BIN: &str = env!("CARGO_BIN_EXE_grasp-sync");

/// The value sets (files in charts/grasp-sync/ci/) and the extra `helm template` flags each
/// is rendered with.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("default-values.yaml", &[]),
    ("namespace-values.yaml", &[]),
    ("embedded-values.yaml", &[]),
    ("ha-values.yaml", &[]),
    (
        "servicemonitor-values.yaml",
        &["--api-versions", "monitoring.coreos.com/v1"],
    ),
];

// ---------------------------------------------------------------------------------------------
// Running commands with a deadline

/// Runs `cmd` (stdin from `input`, if any) and returns its output; panics if it runs past
/// `limit` (after killing it).
fn run(cmd: &mut Command, input: Option<&[u8]>, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} ran longer than {limit:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn must_succeed(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

// ---------------------------------------------------------------------------------------------
// Helm

fn cache_dir() -> PathBuf {
    std::env::var_os("GRASP_SYNC_CACHE")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME or GRASP_SYNC_CACHE set"))
                .join(".cache/grasp-sync")
        })
}

/// The Helm CLI: `$GRASP_SYNC_HELM`, else where `scripts/helm-tool` installs it. Never skips:
/// panics with how to get it.
fn helm_path() -> PathBuf {
    let path = std::env::var_os("GRASP_SYNC_HELM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("helm").join(HELM_VERSION).join("helm"));
    assert!(
        path.is_file(),
        "helm not found at {}: run scripts/helm-tool (it builds helm {HELM_VERSION} from the Go \
         module proxy and prints its path; scripts/test runs it and exports GRASP_SYNC_HELM)",
        path.display()
    );
    path
}

/// A `helm` command with its config, cache and data under a scratch directory, so tests never
/// read or write the user's Helm state.
fn helm() -> Command {
    let home = std::env::temp_dir().join(format!("grasp-sync-chart-helm-{}", std::process::id()));
    let mut cmd = Command::new(helm_path());
    cmd.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .current_dir(ROOT);
    cmd
}

fn chart_dir() -> PathBuf {
    Path::new(ROOT).join("charts/grasp-sync")
}

fn values_file(name: &str) -> PathBuf {
    chart_dir().join("ci").join(name)
}

/// `helm template` output as text.
fn template_text(args: &[&str]) -> String {
    let chart = chart_dir();
    let out = run(
        helm()
            .args(["template", RELEASE])
            .arg(&chart)
            .args(["--namespace", NAMESPACE])
            .args(args),
        None,
        Duration::from_secs(60),
    );
    must_succeed(&format!("helm template {args:?}"), &out)
}

/// Parses multi-document YAML, dropping empty documents.
fn parse_docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The objects a value set renders.
fn render(set: &str) -> Vec<Value> {
    let (_, extra) = VALUE_SETS
        .iter()
        .find(|(name, _)| *name == set)
        .expect("known value set");
    let file = values_file(set);
    let mut args = vec!["-f", file.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    parse_docs(&template_text(&args))
}

/// `helm template` with these flags, expected to fail: its stderr.
fn template_error(args: &[&str]) -> String {
    let chart = chart_dir();
    let out = run(
        helm()
            .args(["template", RELEASE])
            .arg(&chart)
            .args(["--namespace", NAMESPACE])
            .args(args),
        None,
        Duration::from_secs(60),
    );
    assert!(
        !out.status.success(),
        "helm template {args:?} should fail, but rendered:\n{}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

// ---------------------------------------------------------------------------------------------
// YAML helpers

/// Follows a dotted path of map keys (numbers index sequences).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) if v.is_sequence() => v.as_sequence().and_then(|s| s.get(i)),
            _ => v.get(key),
        })
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    at(v, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path} in {}", brief(v)))
}

/// The string under `key` (which may contain dots) of the map at `path`.
fn field<'a>(v: &'a Value, path: &str, key: &str) -> &'a str {
    at(v, path)
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {key:?} under {path} in {}", brief(v)))
}

fn kind(v: &Value) -> &str {
    s(v, "kind")
}

fn name(v: &Value) -> &str {
    s(v, "metadata.name")
}

fn brief(v: &Value) -> String {
    format!(
        "{}/{}",
        at(v, "kind").and_then(Value::as_str).unwrap_or("?"),
        at(v, "metadata.name")
            .and_then(Value::as_str)
            .unwrap_or("?")
    )
}

fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

fn one<'a>(docs: &'a [Value], k: &str, n: &str) -> &'a Value {
    docs.iter()
        .find(|d| kind(d) == k && name(d) == n)
        .unwrap_or_else(|| {
            panic!(
                "no {k}/{n} among {:?}",
                docs.iter().map(brief).collect::<Vec<_>>()
            )
        })
}

fn seq<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    at(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn strings(v: &Value, path: &str) -> Vec<String> {
    seq(v, path)
        .into_iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other)
                .expect("scalar")
                .trim()
                .to_string(),
        })
        .collect()
}

fn workloads(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| matches!(kind(d), "Deployment" | "StatefulSet"))
        .collect()
}

fn containers(workload: &Value) -> Vec<&Value> {
    let mut all = seq(workload, "spec.template.spec.containers");
    all.extend(seq(workload, "spec.template.spec.initContainers"));
    all
}

fn controller(docs: &[Value]) -> &Value {
    one(
        docs,
        "Deployment",
        &format!("{RELEASE}-grasp-sync-controller"),
    )
}

fn worker(docs: &[Value]) -> &Value {
    one(docs, "StatefulSet", &format!("{RELEASE}-grasp-sync-worker"))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let Some(want) = selector.as_mapping() else {
        return false;
    };
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------------
// Lint, render, offline validation

#[test]
fn helm_lint_strict_passes_for_every_value_set() {
    let chart = chart_dir();
    for (set, _) in VALUE_SETS {
        let out = run(
            helm()
                .args(["lint", "--strict"])
                .arg(&chart)
                .arg("-f")
                .arg(values_file(set)),
            None,
            Duration::from_secs(60),
        );
        let stdout = must_succeed(&format!("helm lint --strict -f ci/{set}"), &out);
        assert!(
            stdout.contains("0 chart(s) failed"),
            "lint of {set}:\n{stdout}"
        );
        assert!(
            !stdout.contains("[WARNING]") && !stdout.contains("[ERROR]"),
            "lint of {set}:\n{stdout}"
        );
    }
}

fn venv() -> PathBuf {
    std::env::var_os("GRASP_SYNC_VENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/venv"))
}

fn kubernetes_validate(yaml: &str) -> Output {
    let exe = venv().join("bin/kubernetes-validate");
    assert!(
        exe.is_file(),
        "kubernetes-validate not found at {}: run scripts/test (it installs \
         tests/support/requirements.txt into the venv GRASP_SYNC_VENV)",
        exe.display()
    );
    run(
        Command::new(exe).args(["--strict", "--quiet", "-k", VALIDATE_K8S_VERSION, "-"]),
        Some(yaml.as_bytes()),
        Duration::from_secs(120),
    )
}

/// True for objects of the Kubernetes API itself (those kubernetes-validate has schemas for);
/// custom resources (SyncRelay, RelayAllowlist, ServiceMonitor) are checked elsewhere (the
/// server-side dry run validates ours against the real CRDs).
fn is_builtin(doc: &Value) -> bool {
    let api = s(doc, "apiVersion");
    !(api.starts_with("sync.grasp.dev/") || api.starts_with("monitoring.coreos.com/"))
}

#[test]
fn every_value_set_passes_kubernetes_validate_strict() {
    // The validator really validates: an unknown field in a Deployment is an error.
    let bad =
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 1\n  \
               bogusField: 1\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: \
               {labels: {a: b}}\n    spec: {containers: [{name: c, image: i}]}\n";
    let out = kubernetes_validate(bad);
    assert!(
        !out.status.success(),
        "kubernetes-validate --strict accepted an unknown field:\n{}",
        text(&out.stdout)
    );

    for (set, _) in VALUE_SETS {
        let docs = render(set);
        let builtin: Vec<&Value> = docs.iter().filter(|d| is_builtin(d)).collect();
        assert!(builtin.len() >= 10, "{set} renders too little");
        let yaml = builtin
            .iter()
            .map(|d| serde_yaml::to_string(d).expect("serialize"))
            .collect::<Vec<_>>()
            .join("---\n");
        let out = kubernetes_validate(&yaml);
        let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success() && !report.contains("ERROR") && !report.contains("WARN"),
            "kubernetes-validate --strict -k {VALIDATE_K8S_VERSION} rejected ci/{set}:\n{report}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads

#[test]
fn workloads_have_the_expected_shape() {
    let docs = render("default-values.yaml");
    let c = controller(&docs);
    assert_eq!(at(c, "spec.replicas").and_then(Value::as_u64), Some(1));
    let w = worker(&docs);
    assert_eq!(s(w, "spec.podManagementPolicy"), "Parallel");
    assert_eq!(at(w, "spec.replicas").and_then(Value::as_u64), Some(2));
    // The governing Service exists and is headless.
    let svc = one(&docs, "Service", s(w, "spec.serviceName"));
    assert_eq!(s(svc, "spec.clusterIP"), "None");
    assert!(
        of_kind(&docs, "StatefulSet").len() == 1,
        "no relay by default"
    );
    // One ServiceAccount per component.
    assert_eq!(
        s(c, "spec.template.spec.serviceAccountName"),
        format!("{RELEASE}-grasp-sync-controller")
    );
    assert_eq!(
        s(w, "spec.template.spec.serviceAccountName"),
        format!("{RELEASE}-grasp-sync-worker")
    );
    for sa in [
        s(c, "spec.template.spec.serviceAccountName"),
        s(w, "spec.template.spec.serviceAccountName"),
    ] {
        one(&docs, "ServiceAccount", sa);
    }

    let ha = render("ha-values.yaml");
    assert_eq!(
        at(controller(&ha), "spec.replicas").and_then(Value::as_u64),
        Some(2)
    );
    assert_eq!(
        at(worker(&ha), "spec.replicas").and_then(Value::as_u64),
        Some(4)
    );

    // Settings: a ConfigMap with a `kind: Settings` document, passed with --config.
    let ns = render("namespace-values.yaml");
    let cm = one(&ns, "ConfigMap", &format!("{RELEASE}-grasp-sync-config"));
    let doc: Value = serde_yaml::from_str(field(cm, "data", "config.yaml")).expect("config parses");
    assert_eq!(s(&doc, "kind"), "Settings");
    assert_eq!(s(&doc, "apiVersion"), "sync.grasp.dev/v1alpha1");
    assert_eq!(s(&doc, "spec.batchWindow"), "200ms");
    for wl in [controller(&ns), worker(&ns)] {
        let args = strings(containers(wl)[0], "args");
        let i = args.iter().position(|a| a == "--config").expect("--config");
        assert_eq!(args[i + 1], "/etc/grasp-sync/config.yaml");
        let i = args
            .iter()
            .position(|a| a == "--namespace")
            .expect("--namespace");
        assert_eq!(args[i + 1], "grasp");
    }
}

#[test]
fn every_container_is_hardened_and_probed() {
    for (set, _) in VALUE_SETS {
        let docs = render(set);
        let wls = workloads(&docs);
        assert!(wls.len() >= 2, "{set}: workloads missing");
        for wl in wls {
            let what = format!("{set}: {}", brief(wl));
            let pod = at(wl, "spec.template.spec").expect("pod spec");
            assert_eq!(
                at(pod, "securityContext.runAsNonRoot"),
                Some(&Value::Bool(true))
            );
            assert_eq!(
                at(pod, "securityContext.runAsUser").and_then(Value::as_u64),
                Some(65532),
                "{what}"
            );
            assert_eq!(
                at(pod, "securityContext.seccompProfile.type").and_then(Value::as_str),
                Some("RuntimeDefault"),
                "{what}"
            );
            let grace = at(pod, "terminationGracePeriodSeconds")
                .and_then(Value::as_u64)
                .unwrap_or(30);
            assert!(grace >= 30, "{what}: terminationGracePeriodSeconds {grace}");
            for c in containers(wl) {
                let what = format!("{what} container {}", s(c, "name"));
                let sc = at(c, "securityContext")
                    .unwrap_or_else(|| panic!("{what}: no securityContext"));
                assert_eq!(at(sc, "runAsNonRoot"), Some(&Value::Bool(true)), "{what}");
                assert_eq!(
                    at(sc, "runAsUser").and_then(Value::as_u64),
                    Some(65532),
                    "{what}"
                );
                assert_eq!(
                    at(sc, "readOnlyRootFilesystem"),
                    Some(&Value::Bool(true)),
                    "{what}"
                );
                assert_eq!(
                    at(sc, "allowPrivilegeEscalation"),
                    Some(&Value::Bool(false)),
                    "{what}"
                );
                assert_ne!(at(sc, "privileged"), Some(&Value::Bool(true)), "{what}");
                assert_eq!(strings(sc, "capabilities.drop"), vec!["ALL"], "{what}");
                assert!(at(sc, "capabilities.add").is_none(), "{what}");
                assert_eq!(
                    at(sc, "seccompProfile.type").and_then(Value::as_str),
                    Some("RuntimeDefault"),
                    "{what}"
                );
                for part in ["requests", "limits"] {
                    for res in ["cpu", "memory"] {
                        assert!(
                            at(c, &format!("resources.{part}.{res}")).is_some(),
                            "{what}: resources.{part}.{res} missing"
                        );
                    }
                }
                let args = strings(c, "args");
                if matches!(
                    args.first().map(String::as_str),
                    Some("controller" | "worker")
                ) {
                    // Probes: HTTP on the --listen port, /livez and /readyz.
                    let i = args.iter().position(|a| a == "--listen").expect("--listen");
                    let listen: std::net::SocketAddr = args[i + 1].parse().expect("--listen addr");
                    assert!(listen.ip().is_unspecified(), "{what}: --listen {listen}");
                    let port = seq(c, "ports")
                        .into_iter()
                        .find(|p| s(p, "name") == "http")
                        .and_then(|p| at(p, "containerPort").and_then(Value::as_u64))
                        .expect("http port");
                    assert_eq!(port, u64::from(listen.port()), "{what}");
                    assert_eq!(s(c, "livenessProbe.httpGet.path"), "/livez", "{what}");
                    assert_eq!(s(c, "readinessProbe.httpGet.path"), "/readyz", "{what}");
                    assert_eq!(s(c, "livenessProbe.httpGet.port"), "http", "{what}");
                    assert_eq!(s(c, "readinessProbe.httpGet.port"), "http", "{what}");
                    // Identity through the downward API.
                    let env = seq(c, "env");
                    for (var, field) in [
                        ("POD_NAME", "metadata.name"),
                        ("POD_NAMESPACE", "metadata.namespace"),
                    ] {
                        let e = env
                            .iter()
                            .find(|e| s(e, "name") == var)
                            .unwrap_or_else(|| panic!("{what}: env {var} missing"));
                        assert_eq!(s(e, "valueFrom.fieldRef.fieldPath"), field, "{what}");
                    }
                }
            }
        }
    }
}

#[test]
fn embedded_relay_mode_runs_the_relay_with_storage() {
    let docs = render("embedded-values.yaml");
    let relay = one(&docs, "StatefulSet", &format!("{RELEASE}-grasp-sync-relay"));
    let c = containers(relay)[0];
    let args = strings(c, "args");
    let url = format!("ws://{RELEASE}-grasp-sync-relay.{NAMESPACE}.svc:7777");
    assert_eq!(
        args,
        [
            "relay",
            "--relay-listen",
            "0.0.0.0:7777",
            "--data",
            "/data",
            "--public-url",
            url.as_str()
        ]
    );
    let claim = seq(relay, "spec.volumeClaimTemplates")[0];
    assert_eq!(s(claim, "metadata.name"), "data");
    assert_eq!(s(claim, "spec.resources.requests.storage"), "2Gi");
    assert!(seq(c, "volumeMounts")
        .iter()
        .any(|m| s(m, "name") == "data" && s(m, "mountPath") == "/data"));
    let svc = one(&docs, "Service", &format!("{RELEASE}-grasp-sync-relay"));
    assert!(labels_match(
        at(svc, "spec.selector").expect("selector"),
        at(relay, "spec.template.metadata.labels").expect("labels")
    ));
    // ownRelay.url defaults to the embedded relay's Service.
    for wl in [controller(&docs), worker(&docs)] {
        let args = strings(containers(wl)[0], "args");
        let i = args
            .iter()
            .position(|a| a == "--own-relay")
            .expect("--own-relay");
        assert_eq!(args[i + 1], url);
    }
}

// ---------------------------------------------------------------------------------------------
// RBAC

type Rules = BTreeMap<(String, String), BTreeSet<String>>;

fn rules_of(role: &Value) -> Rules {
    let mut out = Rules::new();
    for rule in seq(role, "rules") {
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                out.entry((group.clone(), resource))
                    .or_default()
                    .extend(strings(rule, "verbs"));
            }
        }
    }
    out
}

/// Everything a ServiceAccount is granted, per namespace of the grant ("*" for cluster-wide).
fn grants(docs: &[Value], sa: &str) -> BTreeMap<String, Rules> {
    let mut out: BTreeMap<String, Rules> = BTreeMap::new();
    for binding in docs
        .iter()
        .filter(|d| matches!(kind(d), "RoleBinding" | "ClusterRoleBinding"))
    {
        if !seq(binding, "subjects")
            .iter()
            .any(|s_| s(s_, "kind") == "ServiceAccount" && s(s_, "name") == sa)
        {
            continue;
        }
        let role = one(docs, s(binding, "roleRef.kind"), s(binding, "roleRef.name"));
        let scope = if kind(binding) == "ClusterRoleBinding" {
            "*".to_string()
        } else {
            s(binding, "metadata.namespace").to_string()
        };
        let entry = out.entry(scope).or_default();
        for (k, verbs) in rules_of(role) {
            entry.entry(k).or_default().extend(verbs);
        }
    }
    out
}

fn expect_rules(list: &[(&str, &str, &[&str])]) -> Rules {
    list.iter()
        .map(|(g, r, v)| {
            (
                (g.to_string(), r.to_string()),
                v.iter().map(|x| x.to_string()).collect(),
            )
        })
        .collect()
}

fn controller_rules() -> Rules {
    expect_rules(&[
        (
            "sync.grasp.dev",
            "syncrelays",
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("sync.grasp.dev", "syncrelays/status", &["patch"]),
        (
            "sync.grasp.dev",
            "relayallowlists",
            &["get", "list", "watch"],
        ),
        ("sync.grasp.dev", "relayallowlists/status", &["patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
    ])
}

fn worker_rules() -> Rules {
    expect_rules(&[
        ("sync.grasp.dev", "syncrelays", &["get", "list", "watch"]),
        ("sync.grasp.dev", "syncrelays/status", &["patch"]),
    ])
}

#[test]
fn rbac_grants_exactly_the_verbs_the_code_needs() {
    let controller_sa = format!("{RELEASE}-grasp-sync-controller");
    let worker_sa = format!("{RELEASE}-grasp-sync-worker");
    let controller_leases = expect_rules(&[(
        "coordination.k8s.io",
        "leases",
        &["get", "list", "watch", "create", "update"],
    )]);
    let worker_leases = expect_rules(&[(
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
    )]);

    for (set, watch) in [
        ("default-values.yaml", None),
        ("namespace-values.yaml", Some("grasp")),
    ] {
        let docs = render(set);
        // No wildcard anywhere.
        for role in docs
            .iter()
            .filter(|d| matches!(kind(d), "Role" | "ClusterRole"))
        {
            for rule in seq(role, "rules") {
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    assert!(
                        !strings(rule, field).iter().any(|x| x.contains('*')),
                        "{set}: wildcard in {} {field}",
                        brief(role)
                    );
                }
                assert!(at(rule, "nonResourceURLs").is_none());
            }
        }
        let scope = watch.unwrap_or("*").to_string();
        match watch {
            None => assert!(!of_kind(&docs, "ClusterRole").is_empty()),
            Some(_) => assert!(
                of_kind(&docs, "ClusterRole").is_empty()
                    && of_kind(&docs, "ClusterRoleBinding").is_empty(),
                "{set}: namespace mode must not grant cluster-wide"
            ),
        }
        let c = grants(&docs, &controller_sa);
        let w = grants(&docs, &worker_sa);
        let expected_c: BTreeMap<String, Rules> = [
            (scope.clone(), controller_rules()),
            (NAMESPACE.to_string(), controller_leases.clone()),
        ]
        .into();
        let expected_w: BTreeMap<String, Rules> = [
            (scope.clone(), worker_rules()),
            (NAMESPACE.to_string(), worker_leases.clone()),
        ]
        .into();
        assert_eq!(c, expected_c, "{set}: controller grants");
        assert_eq!(w, expected_w, "{set}: worker grants");
        // Spelled out: the worker writes status, never the spec.
        let wr = &w[&scope];
        let sr = &wr[&("sync.grasp.dev".to_string(), "syncrelays".to_string())];
        assert!(!sr.contains("patch") && !sr.contains("update") && !sr.contains("create"));
        assert!(wr[&(
            "sync.grasp.dev".to_string(),
            "syncrelays/status".to_string()
        )]
            .contains("patch"));
    }
}

// ---------------------------------------------------------------------------------------------
// Availability, networking, monitoring

#[test]
fn disruption_budgets_cover_workers_and_a_replicated_controller() {
    let docs = render("default-values.yaml");
    let pdbs = of_kind(&docs, "PodDisruptionBudget");
    assert_eq!(
        pdbs.len(),
        1,
        "only the workers' PDB with one controller replica"
    );
    let pdb = pdbs[0];
    assert_eq!(
        at(pdb, "spec.maxUnavailable").and_then(Value::as_u64),
        Some(1)
    );
    assert!(labels_match(
        at(pdb, "spec.selector.matchLabels").expect("selector"),
        at(worker(&docs), "spec.template.metadata.labels").expect("labels")
    ));
    assert!(!labels_match(
        at(pdb, "spec.selector.matchLabels").expect("selector"),
        at(controller(&docs), "spec.template.metadata.labels").expect("labels")
    ));

    let ha = render("ha-values.yaml");
    let pdbs = of_kind(&ha, "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 2);
    let cpdb = pdbs
        .iter()
        .find(|p| {
            labels_match(
                at(p, "spec.selector.matchLabels").expect("selector"),
                at(controller(&ha), "spec.template.metadata.labels").expect("labels"),
            )
        })
        .expect("a controller PDB with 2 replicas");
    assert_eq!(
        at(cpdb, "spec.minAvailable").and_then(Value::as_u64),
        Some(1)
    );
}

fn egress_ports(policy: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for rule in seq(policy, "spec.egress") {
        for p in seq(rule, "ports") {
            out.insert((
                s(p, "protocol").to_string(),
                serde_yaml::to_string(at(p, "port").expect("port"))
                    .expect("port")
                    .trim()
                    .to_string(),
            ));
        }
    }
    out
}

#[test]
fn network_policies_limit_egress() {
    let docs = render("default-values.yaml");
    let c = one(
        &docs,
        "NetworkPolicy",
        &format!("{RELEASE}-grasp-sync-controller"),
    );
    let w = one(
        &docs,
        "NetworkPolicy",
        &format!("{RELEASE}-grasp-sync-worker"),
    );
    for (p, wl) in [(c, controller(&docs)), (w, worker(&docs))] {
        assert!(labels_match(
            at(p, "spec.podSelector.matchLabels").expect("podSelector"),
            at(wl, "spec.template.metadata.labels").expect("labels")
        ));
        assert_eq!(strings(p, "spec.policyTypes"), ["Ingress", "Egress"]);
        let ports = egress_ports(p);
        for want in [
            ("UDP", "53"),
            ("TCP", "53"),
            ("TCP", "443"),
            ("TCP", "6443"),
        ] {
            assert!(
                ports.contains(&(want.0.into(), want.1.into())),
                "{}: {want:?}",
                brief(p)
            );
        }
    }
    // Only the worker has the remote-relays rule (private ranges excluded).
    let relay_rule = |p: &Value| {
        seq(p, "spec.egress").into_iter().any(|r| {
            seq(r, "to")
                .iter()
                .any(|t| at(t, "ipBlock.except").is_some())
        })
    };
    assert!(relay_rule(w));
    assert!(!relay_rule(c));
    assert_eq!(seq(c, "spec.egress").len() + 1, seq(w, "spec.egress").len());

    // The embedded relay is reachable from both when enabled.
    let emb = render("embedded-values.yaml");
    for n in ["controller", "worker"] {
        let p = one(&emb, "NetworkPolicy", &format!("{RELEASE}-grasp-sync-{n}"));
        assert!(
            egress_ports(p).contains(&("TCP".into(), "relay".into())),
            "{n}"
        );
    }
}

#[test]
fn service_monitor_is_off_by_default_and_capability_gated() {
    assert!(of_kind(&render("default-values.yaml"), "ServiceMonitor").is_empty());
    // Enabled but the API is not served: skipped.
    let file = values_file("servicemonitor-values.yaml");
    let without = parse_docs(&template_text(&["-f", file.to_str().expect("utf-8")]));
    assert!(of_kind(&without, "ServiceMonitor").is_empty());

    let docs = render("servicemonitor-values.yaml");
    let sms = of_kind(&docs, "ServiceMonitor");
    assert_eq!(sms.len(), 1);
    let sm = sms[0];
    assert_eq!(s(sm, "apiVersion"), "monitoring.coreos.com/v1");
    assert_eq!(s(sm, "metadata.labels.release"), "prometheus");
    let endpoint = seq(sm, "spec.endpoints")[0];
    assert_eq!(s(endpoint, "path"), "/metrics");
    // It selects the metrics Services of both components, and they expose the port it scrapes.
    let selector = at(sm, "spec.selector.matchLabels").expect("selector");
    let services: Vec<&Value> = of_kind(&docs, "Service")
        .into_iter()
        .filter(|svc| labels_match(selector, at(svc, "metadata.labels").expect("labels")))
        .collect();
    assert_eq!(services.len(), 2, "controller and worker metrics Services");
    for svc in services {
        assert!(seq(svc, "spec.ports")
            .iter()
            .any(|p| s(p, "name") == s(endpoint, "port")));
        let pods = workloads(&docs)
            .into_iter()
            .filter(|wl| {
                labels_match(
                    at(svc, "spec.selector").expect("selector"),
                    at(wl, "spec.template.metadata.labels").expect("labels"),
                )
            })
            .count();
        assert_eq!(pods, 1, "{} selects one workload", brief(svc));
    }
    // The dashboard ConfigMap carries the dashboard file.
    let cm = one(
        &docs,
        "ConfigMap",
        &format!("{RELEASE}-grasp-sync-dashboard"),
    );
    let file =
        std::fs::read_to_string(chart_dir().join("dashboards/grasp-sync.json")).expect("dashboard");
    assert_eq!(field(cm, "data", "grasp-sync.json").trim(), file.trim());
}

// ---------------------------------------------------------------------------------------------
// CRDs

#[test]
fn chart_crds_are_identical_to_the_generated_crds() {
    let generated = Path::new(ROOT).join("crds");
    let chart = chart_dir().join("files/crds");
    let list = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect()
    };
    let gen_files = list(&generated);
    assert!(
        !gen_files.is_empty(),
        "no generated CRDs in {} (grasp-sync crd writes them)",
        generated.display()
    );
    assert_eq!(
        gen_files,
        list(&chart),
        "chart CRDs differ from crds/: run scripts/sync-chart-crds"
    );
    for f in &gen_files {
        assert!(
            std::fs::read(generated.join(f)).expect("read")
                == std::fs::read(chart.join(f)).expect("read"),
            "charts/grasp-sync/files/crds/{f} differs from crds/{f}: run scripts/sync-chart-crds"
        );
    }
    for required in [
        "syncrelays.sync.grasp.dev.yaml",
        "relayallowlists.sync.grasp.dev.yaml",
    ] {
        assert!(gen_files.contains(required), "crds/{required} missing");
    }
}

#[test]
fn crds_render_behind_crds_install_and_are_kept() {
    let docs = render("default-values.yaml");
    let crds = of_kind(&docs, "CustomResourceDefinition");
    let names: BTreeSet<&str> = crds.iter().map(|c| name(c)).collect();
    assert_eq!(
        names,
        [
            "relayallowlists.sync.grasp.dev",
            "syncrelays.sync.grasp.dev"
        ]
        .into()
    );
    for crd in crds {
        assert_eq!(
            field(crd, "metadata.annotations", "helm.sh/resource-policy"),
            "keep"
        );
    }
    // Rendered from the files, unchanged.
    for f in [
        "syncrelays.sync.grasp.dev.yaml",
        "relayallowlists.sync.grasp.dev.yaml",
    ] {
        let file =
            std::fs::read_to_string(chart_dir().join("files/crds").join(f)).expect("crd file");
        let want = parse_docs(&file);
        assert!(docs.contains(&want[0]), "{f} not rendered as is");
    }
    assert!(of_kind(&render("ha-values.yaml"), "CustomResourceDefinition").is_empty());
}

#[test]
fn relays_and_allowlist_values_render_custom_resources() {
    let docs = render("namespace-values.yaml");
    let relays = of_kind(&docs, "SyncRelay");
    assert_eq!(relays.len(), 2);
    let r = one(&docs, "SyncRelay", "relay-example-org");
    assert_eq!(s(r, "apiVersion"), "sync.grasp.dev/v1alpha1");
    assert_eq!(s(r, "metadata.namespace"), "grasp");
    assert_eq!(s(r, "spec.url"), "wss://relay.example.org");
    assert_eq!(at(r, "spec.bootstrap"), Some(&Value::Bool(true)));
    let slow = one(&docs, "SyncRelay", "slow-relay");
    assert!(
        at(slow, "spec.name").is_none(),
        "name is metadata, not spec"
    );
    assert_eq!(
        at(slow, "spec.limits.maxSubscriptions").and_then(Value::as_u64),
        Some(5)
    );
    let al = one(&docs, "RelayAllowlist", "default");
    assert_eq!(s(al, "spec.discovery"), "Enabled");
    assert_eq!(s(al, "spec.deny.0.host"), "spam.example.org");
    // Their specs parse as the Rust spec types (deny_unknown_fields).
    for r in relays {
        let spec = at(r, "spec").expect("spec").clone();
        serde_yaml::from_value::<grasp_sync::api::types::SyncRelaySpec>(spec)
            .expect("SyncRelaySpec");
    }
    serde_yaml::from_value::<grasp_sync::api::types::RelayAllowlistSpec>(
        at(al, "spec").expect("spec").clone(),
    )
    .expect("RelayAllowlistSpec");
    assert!(of_kind(&render("default-values.yaml"), "SyncRelay").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Bad values

#[test]
fn bad_values_fail_with_a_clear_message() {
    let url = "ownRelay.url=wss://relay.example.org";
    let err = template_error(&["--set", url, "--set-string", "controller.replicas=two"]);
    assert!(
        err.contains("/controller/replicas") && err.contains("want integer"),
        "{err}"
    );
    let err = template_error(&["--set", url, "--set-string", "worker.replicas=two"]);
    assert!(
        err.contains("/worker/replicas") && err.contains("want integer"),
        "{err}"
    );
    let err = template_error(&[]);
    assert!(err.contains("/ownRelay/url"), "missing ownRelay.url: {err}");
    let err = template_error(&["--set", url, "--set", "bogusKey=1"]);
    assert!(
        err.contains("additional properties 'bogusKey' not allowed"),
        "{err}"
    );
    let err = template_error(&["--set", "ownRelay.url=https://relay.example.org"]);
    assert!(err.contains("/ownRelay/url"), "an http URL: {err}");
    let err = template_error(&["--set", url, "--set", "settings.batchWindo=1s"]);
    assert!(err.contains("batchWindo"), "unknown setting: {err}");
    let err = template_error(&["--set", url, "--set", "settings.batchWindow=1y"]);
    assert!(err.contains("/settings/batchWindow"), "bad duration: {err}");
    let err = template_error(&["--set", url, "--set", "relays[0].url=http://x.org"]);
    assert!(err.contains("/relays/0/url"), "bad relay URL: {err}");
}

// ---------------------------------------------------------------------------------------------
// The chart drives the real binary

fn help_of(sub: &str) -> String {
    let out = run(
        Command::new(BIN).args([sub, "--help"]).env_clear(),
        None,
        Duration::from_secs(20),
    );
    must_succeed(&format!("grasp-sync {sub} --help"), &out)
}

#[test]
fn rendered_args_and_env_are_accepted_by_the_binary() {
    // The method catches mistakes: clap rejects an unknown flag, or a bad value, before the
    // eager --help.
    for bad in [
        &["controller", "--no-such-flag", "--help"][..],
        &["worker", "--listen", "not-an-address", "--help"][..],
    ] {
        let out = run(
            Command::new(BIN).args(bad).env_clear(),
            None,
            Duration::from_secs(20),
        );
        assert_eq!(out.status.code(), Some(2), "{bad:?} should be refused");
    }

    let mut seen = BTreeSet::new();
    for (set, _) in VALUE_SETS {
        let docs = render(set);
        for wl in workloads(&docs) {
            for c in containers(wl) {
                let what = format!("{set}: {} container {}", brief(wl), s(c, "name"));
                assert!(
                    at(c, "command").is_none(),
                    "{what}: the image's entrypoint is the binary"
                );
                let args = strings(c, "args");
                let sub = args
                    .first()
                    .unwrap_or_else(|| panic!("{what}: no args"))
                    .clone();
                seen.insert(sub.clone());
                // The env as the pod would have it (downward API values made up).
                let mut cmd = Command::new(BIN);
                cmd.env_clear().args(&args).arg("--help");
                let help = help_of(&sub);
                for e in seq(c, "env") {
                    let var = s(e, "name");
                    let value = match at(e, "value").and_then(Value::as_str) {
                        Some(v) => v.to_string(),
                        None => format!("{}-0", RELEASE),
                    };
                    assert!(
                        help.contains(&format!("[env: {var}=")),
                        "{what}: env {var} is not read by `grasp-sync {sub}`"
                    );
                    cmd.env(var, value);
                }
                let out = run(&mut cmd, None, Duration::from_secs(20));
                must_succeed(
                    &format!("{what}: grasp-sync {} --help", args.join(" ")),
                    &out,
                );
                for flag in args.iter().filter(|a| a.starts_with("--")) {
                    let flag = flag.split('=').next().expect("flag");
                    assert!(
                        help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                        "{what}: {flag} is not a flag of `grasp-sync {sub}`"
                    );
                }
                // Required flags without an env fallback are given.
                if sub == "controller" || sub == "worker" {
                    assert!(args.contains(&"--own-relay".to_string()), "{what}");
                }
            }
        }
    }
    assert_eq!(
        seen,
        ["controller", "relay", "worker"].map(String::from).into(),
        "every role the chart runs was checked"
    );

    // The log format value is one the binary accepts (through the same env var).
    let docs = render("default-values.yaml");
    let env = seq(containers(controller(&docs))[0], "env");
    let fmt = env
        .iter()
        .find(|e| s(e, "name") == "GRASP_SYNC_LOG_FORMAT")
        .map(|e| s(e, "value").to_string())
        .expect("GRASP_SYNC_LOG_FORMAT");
    let out = run(
        Command::new(BIN)
            .env_clear()
            .env("GRASP_SYNC_LOG_FORMAT", &fmt)
            .arg("settings"),
        None,
        Duration::from_secs(20),
    );
    must_succeed(
        &format!("GRASP_SYNC_LOG_FORMAT={fmt} grasp-sync settings"),
        &out,
    );
}

#[test]
fn settings_configmap_is_accepted_by_the_binary() {
    for set in ["default-values.yaml", "namespace-values.yaml"] {
        let docs = render(set);
        let cm = one(&docs, "ConfigMap", &format!("{RELEASE}-grasp-sync-config"));
        let path =
            std::env::temp_dir().join(format!("grasp-sync-chart-{}-{set}", std::process::id()));
        std::fs::write(&path, field(cm, "data", "config.yaml")).expect("write config");
        let out = run(
            Command::new(BIN)
                .env_clear()
                .arg("settings")
                .arg("--config")
                .arg(&path),
            None,
            Duration::from_secs(20),
        );
        let _ = std::fs::remove_file(&path);
        let effective = must_succeed(
            &format!("grasp-sync settings --config <{set} ConfigMap>"),
            &out,
        );
        if set == "namespace-values.yaml" {
            assert!(effective.contains("batchWindow: 200ms"), "{effective}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// NOTES, dashboard, image

#[test]
fn notes_show_how_to_watch_syncrelays() {
    let chart = chart_dir();
    for (set, want) in [
        (
            "default-values.yaml",
            "kubectl get syncrelays --all-namespaces --watch",
        ),
        (
            "namespace-values.yaml",
            "kubectl get syncrelays --namespace grasp --watch",
        ),
    ] {
        let out = run(
            helm()
                .args(["install", RELEASE])
                .arg(&chart)
                .args(["--namespace", NAMESPACE, "--dry-run=client", "-f"])
                .arg(values_file(set)),
            None,
            Duration::from_secs(60),
        );
        let stdout = must_succeed("helm install --dry-run=client", &out);
        let notes = stdout.split("NOTES:").nth(1).expect("NOTES section");
        assert!(notes.contains(want), "{set} NOTES:\n{notes}");
    }
}

/// Every `expr` (and templating `query`) string in the dashboard.
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                match (k.as_str(), x) {
                    ("expr" | "query" | "definition", serde_json::Value::String(q)) => {
                        out.push(q.clone())
                    }
                    _ => dashboard_queries(x, out),
                }
            }
        }
        serde_json::Value::Array(xs) => xs.iter().for_each(|x| dashboard_queries(x, out)),
        _ => {}
    }
}

#[test]
fn dashboard_queries_only_exported_metrics() {
    use grasp_sync::observe::metrics::METRIC_NAMES;
    let path = chart_dir().join("dashboards/grasp-sync.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard"))
            .expect("valid JSON");
    assert_eq!(json["uid"], "grasp-sync");
    let mut queries = Vec::new();
    dashboard_queries(&json, &mut queries);
    assert!(queries.len() >= 15, "too few queries");
    let known: BTreeSet<&str> = METRIC_NAMES.iter().copied().collect();
    let labels: BTreeSet<&str> = [
        "state",
        "kind",
        "method",
        "reason",
        "result",
        "relay", // ours
        "le",
        "namespace",
        "pod",
        "instance",
        "job",
        "service",
        "container", // Prometheus'
    ]
    .into();
    let mut used = BTreeSet::new();
    for q in &queries {
        // Metric names.
        let mut rest = q.as_str();
        while let Some(i) = rest.find("grasp_sync_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let metric = &tail[..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    metric
                        .strip_suffix(suffix)
                        .filter(|b| b.ends_with("_seconds") && known.contains(b))
                })
                .unwrap_or(metric);
            assert!(
                known.contains(base),
                "dashboard queries {metric}, which is not in METRIC_NAMES: {q}"
            );
            used.insert(base.to_string());
            rest = &tail[end..];
        }
        // Label names in `by (...)` and in selectors `{a="b", c=~"d"}`.
        for (open, close) in [("by (", ')'), ("{", '}')] {
            let mut rest = q.as_str();
            while let Some(i) = rest.find(open) {
                let inner = &rest[i + open.len()..];
                let end = inner.find(close).unwrap_or(inner.len());
                for part in inner[..end].split(',') {
                    let label = part.split(['=', '!', '~']).next().expect("label").trim();
                    if label.is_empty() || label.starts_with('$') || label.contains('"') {
                        continue;
                    }
                    assert!(labels.contains(label), "unknown label {label:?} in {q}");
                }
                rest = &inner[end..];
            }
        }
    }
    let missing: Vec<&&str> = METRIC_NAMES
        .iter()
        .filter(|m| !used.contains(**m))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics without a dashboard panel (add one to {}): {missing:?}",
        path.display()
    );
}

/// Dockerfile instructions per stage, continuation lines joined.
fn dockerfile_stages() -> Vec<Vec<(String, String)>> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("Dockerfile")).expect("Dockerfile");
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    let mut joined = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(part) = line.strip_suffix('\\') {
            joined.push_str(part);
            joined.push(' ');
            continue;
        }
        joined.push_str(line);
        let (instr, rest) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((&joined, ""));
        let instr = instr.to_ascii_uppercase();
        let rest = rest.split_whitespace().collect::<Vec<_>>().join(" ");
        if instr == "FROM" {
            stages.push(Vec::new());
        }
        stages.last_mut().expect("a FROM first").push((instr, rest));
        joined.clear();
    }
    stages
}

#[test]
fn dockerfile_builds_the_locked_release_and_runs_only_the_binary_as_nonroot() {
    let stages = dockerfile_stages();
    assert!(stages.len() >= 2, "a multi-stage build");
    let build = &stages[0];
    let runs: Vec<&str> = build
        .iter()
        .filter(|(i, _)| i == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    assert_eq!(
        runs,
        ["cargo build --release --locked"],
        "the build stage's command"
    );
    let build_name = build[0].1.split_whitespace().last().expect("stage name");
    assert!(
        build[0].1.to_ascii_lowercase().contains(" as "),
        "the build stage is named"
    );

    let runtime = stages.last().expect("runtime stage");
    let base = &runtime[0].1;
    assert!(
        base.starts_with("gcr.io/distroless/") && base.contains(":nonroot")
            || base.starts_with("scratch"),
        "runtime base {base} is distroless nonroot or scratch"
    );
    let instrs: Vec<&str> = runtime.iter().map(|(i, _)| i.as_str()).collect();
    assert!(
        !instrs.contains(&"RUN") && !instrs.contains(&"ADD"),
        "{instrs:?}"
    );
    let copies: Vec<&str> = runtime
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, r)| r.as_str())
        .collect();
    assert_eq!(
        copies,
        [format!(
            "--from={build_name} /src/target/release/grasp-sync /usr/local/bin/grasp-sync"
        )],
        "only the binary is copied"
    );
    let user: Vec<&str> = runtime
        .iter()
        .filter(|(i, _)| i == "USER")
        .map(|(_, r)| r.as_str())
        .collect();
    assert_eq!(user.len(), 1);
    assert!(
        user[0] == "65532:65532"
            || user[0] == "65532"
            || user[0] == "nonroot:nonroot"
            || user[0] == "nonroot",
        "USER {}",
        user[0]
    );
    let entry = runtime
        .iter()
        .find(|(i, _)| i == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    assert_eq!(entry.1, r#"["/usr/local/bin/grasp-sync"]"#);
    // The context holds what the build needs (and not target/).
    let ignore =
        std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).expect(".dockerignore");
    for need in ["!Cargo.toml", "!Cargo.lock", "!src/", "!benches/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == need),
            ".dockerignore lacks {need}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Against a real kube-apiserver

fn kubectl(
    server: &support::apiserver::TestApiServer,
    args: &[&str],
    input: Option<&str>,
) -> String {
    let out = run(
        server.kubectl().args(args),
        input.map(str::as_bytes),
        Duration::from_secs(90),
    );
    must_succeed(&format!("kubectl {args:?}"), &out)
}

fn to_yaml(docs: &[&Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).expect("serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[test]
fn chart_objects_pass_server_side_dry_run() {
    let server = support::apiserver::TestApiServer::start();

    // The CRDs, for real (they are the same in every value set).
    let default = render("default-values.yaml");
    let crds = of_kind(&default, "CustomResourceDefinition");
    assert_eq!(crds.len(), 2);
    kubectl(
        &server,
        &["apply", "--server-side", "-f", "-"],
        Some(&to_yaml(&crds)),
    );
    for crd in &crds {
        kubectl(
            &server,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{}", name(crd)),
            ],
            None,
        );
    }

    for (i, (set, _)) in VALUE_SETS.iter().enumerate() {
        // Each value set in its own release namespace; the namespaced objects are moved there.
        let ns = format!("gs-{i}");
        let docs = render(set);
        let watch = docs
            .iter()
            .filter(|d| kind(d) == "SyncRelay" || kind(d) == "RelayAllowlist")
            .filter_map(|d| at(d, "metadata.namespace").and_then(Value::as_str))
            .filter(|n| *n != NAMESPACE)
            .map(str::to_string)
            .collect::<BTreeSet<_>>();
        let mut namespaces = vec![ns.clone()];
        namespaces.extend(watch.iter().cloned());
        for n in &namespaces {
            let _ = run(
                server.kubectl().args(["create", "namespace", n]),
                None,
                Duration::from_secs(60),
            );
        }
        let relocated: Vec<Value> = docs
            .iter()
            .filter(|d| kind(d) != "CustomResourceDefinition" && kind(d) != "ServiceMonitor")
            .map(|d| {
                let mut d = d.clone();
                let yaml = serde_yaml::to_string(&d).expect("serialize");
                let yaml = yaml.replace(
                    &format!("namespace: {NAMESPACE}"),
                    &format!("namespace: {ns}"),
                );
                d = serde_yaml::from_str(&yaml).expect("reparse");
                d
            })
            .collect();
        let is_workload = |d: &Value| matches!(kind(d), "Deployment" | "StatefulSet");
        let is_custom = |d: &Value| s(d, "apiVersion").starts_with("sync.grasp.dev/");
        let config: Vec<&Value> = relocated
            .iter()
            .filter(|d| !is_workload(d) && !is_custom(d))
            .collect();
        let rest: Vec<&Value> = relocated
            .iter()
            .filter(|d| is_workload(d) || is_custom(d))
            .collect();
        assert!(config.iter().any(|d| kind(d) == "ServiceAccount"));
        assert!(config.iter().any(|d| kind(d) == "NetworkPolicy"));
        assert!(config.iter().any(|d| kind(d) == "PodDisruptionBudget"));
        // ServiceAccounts, RBAC, NetworkPolicies, PDBs, Services, ConfigMaps: created for real.
        let applied = kubectl(
            &server,
            &["apply", "--server-side", "-f", "-"],
            Some(&to_yaml(&config)),
        );
        assert_eq!(
            applied
                .lines()
                .filter(|l| l.contains("serverside-applied"))
                .count(),
            config.len(),
            "{set}: {applied}"
        );
        // Workloads and our custom resources: dry run on the server (admission, defaulting,
        // the CRDs' schemas).
        let dry = kubectl(
            &server,
            &["apply", "--dry-run=server", "--server-side", "-f", "-"],
            Some(&to_yaml(&rest)),
        );
        assert_eq!(
            dry.lines()
                .filter(|l| l.contains("(server dry run)"))
                .count(),
            rest.len(),
            "{set}: {dry}"
        );

        // RBAC as the server evaluates it.
        if *set == "default-values.yaml" || *set == "namespace-values.yaml" {
            let scope = watch.iter().next().cloned();
            let can = |sa: &str, verb: &str, resource: &str, in_ns: &str| -> bool {
                let as_ = format!("--as=system:serviceaccount:{ns}:{RELEASE}-grasp-sync-{sa}");
                let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
                let sub = format!("--subresource={sub}");
                let mut args = vec!["auth", "can-i", verb, resource, "-n", in_ns, &as_];
                if sub != "--subresource=" {
                    args.push(&sub);
                }
                let out = run(server.kubectl().args(&args), None, Duration::from_secs(30));
                text(&out.stdout).trim() == "yes"
            };
            let cr_ns = scope.clone().unwrap_or_else(|| ns.clone());
            assert!(can(
                "worker",
                "patch",
                "syncrelays.sync.grasp.dev/status",
                &cr_ns
            ));
            assert!(!can("worker", "patch", "syncrelays.sync.grasp.dev", &cr_ns));
            assert!(!can(
                "worker",
                "update",
                "syncrelays.sync.grasp.dev",
                &cr_ns
            ));
            assert!(can("worker", "watch", "syncrelays.sync.grasp.dev", &cr_ns));
            assert!(can("worker", "update", "leases.coordination.k8s.io", &ns));
            assert!(!can("worker", "list", "leases.coordination.k8s.io", &ns));
            assert!(can(
                "controller",
                "create",
                "syncrelays.sync.grasp.dev",
                &cr_ns
            ));
            // Finalizers go by JSON patch on the object; no finalizers subresource grant.
            assert!(!can(
                "controller",
                "update",
                "syncrelays.sync.grasp.dev/finalizers",
                &cr_ns
            ));
            assert!(can(
                "controller",
                "watch",
                "relayallowlists.sync.grasp.dev",
                &cr_ns
            ));
            assert!(can("controller", "create", "events.events.k8s.io", &cr_ns));
            assert!(can(
                "controller",
                "watch",
                "leases.coordination.k8s.io",
                &ns
            ));
            assert!(!can("controller", "get", "secrets", &ns));
            if scope.is_some() {
                // Namespace mode: nothing outside the watched namespace.
                assert!(!can(
                    "controller",
                    "list",
                    "syncrelays.sync.grasp.dev",
                    "default"
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// docs/configuration.md covers every flag, setting and value

fn configuration_md() -> String {
    std::fs::read_to_string(Path::new(ROOT).join("docs/configuration.md"))
        .expect("docs/configuration.md")
}

/// The text of the `### ...` section whose heading contains `heading`.
fn md_section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("### {heading}"))
        .unwrap_or_else(|| panic!("docs/configuration.md has no section ### {heading}"));
    let body = &doc[start + 4..];
    let end = body
        .find("\n## ")
        .into_iter()
        .chain(body.find("\n### "))
        .min();
    &body[..end.unwrap_or(body.len())]
}

/// Dotted paths of the leaves of a YAML map (a map under one of `stop_at`, an empty map or a
/// sequence counts as a leaf).
fn leaf_paths(v: &Value, prefix: &str, stop_at: &[&str], out: &mut Vec<String>) {
    let last = prefix.rsplit('.').next().unwrap_or("");
    match v.as_mapping() {
        Some(map) if !map.is_empty() && !stop_at.contains(&last) => {
            for (k, x) in map {
                let k = k.as_str().expect("string key");
                let path = if prefix.is_empty() {
                    k.to_string()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_paths(x, &path, stop_at, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn configuration_doc_covers_every_flag_setting_and_value() {
    let doc = configuration_md();
    // Flags and env vars, per subcommand, as the binary reports them.
    let global = md_section(&doc, "Global");
    for sub in [
        "run",
        "controller",
        "worker",
        "relay",
        "crd",
        "status",
        "settings",
    ] {
        let help = help_of(sub);
        let section = md_section(&doc, &format!("`grasp-sync {sub}`"));
        for line in help.lines() {
            let t = line.trim_start();
            if t.starts_with('-') {
                for flag in t
                    .split([',', ' '])
                    .filter(|w| w.starts_with("--"))
                    .map(str::trim)
                {
                    assert!(
                        section.contains(&format!("`{flag}"))
                            || global.contains(&format!("`{flag}")),
                        "docs/configuration.md does not document {flag} of `grasp-sync {sub}`"
                    );
                }
            }
            if let Some(rest) = t.strip_prefix("[env: ") {
                let var = rest.split('=').next().expect("env name");
                assert!(
                    section.contains(&format!("`{var}`")) || global.contains(&format!("`{var}`")),
                    "docs/configuration.md does not document env {var} of `grasp-sync {sub}`"
                );
            }
        }
    }
    // Every Settings field, as `grasp-sync settings` prints the defaults.
    let out = run(
        Command::new(BIN).env_clear().arg("settings"),
        None,
        Duration::from_secs(20),
    );
    let defaults: Value =
        serde_yaml::from_str(&must_succeed("grasp-sync settings", &out)).expect("settings YAML");
    let mut fields = Vec::new();
    leaf_paths(&defaults, "", &[], &mut fields);
    assert!(fields.len() >= 15);
    let settings = &doc[doc.find("## Settings").expect("Settings section")..];
    for f in fields {
        assert!(
            settings.contains(&format!("| `{f}` |")),
            "docs/configuration.md does not document setting {f}"
        );
    }
    // Every chart value.
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("values.yaml")).expect("values.yaml"),
    )
    .expect("values.yaml parses");
    let mut paths = Vec::new();
    leaf_paths(
        &values,
        "",
        &["resources", "labels", "podLabels", "settings", "allowlist"],
        &mut paths,
    );
    let chart = &doc[doc.find("## Helm chart values").expect("values section")..];
    for p in paths {
        assert!(
            chart.contains(&format!("`{p}`")),
            "docs/configuration.md does not document chart value {p}"
        );
    }
}

/// A real `helm install` and `helm upgrade` against the API server: on the first install the
/// SyncRelays and the RelayAllowlist from values come from a post-install hook (their CRDs
/// are created by the same install); the upgrade adopts them as ordinary release objects.
#[test]
fn helm_install_then_upgrade_creates_and_adopts_the_custom_resources() {
    let server = support::apiserver::TestApiServer::start();
    let chart = chart_dir();
    let values = values_file("namespace-values.yaml");
    let helm_at = |args: &[&str]| -> String {
        let out = run(
            helm()
                .arg(format!(
                    "--kubeconfig={}",
                    server.kubeconfig_path().display()
                ))
                .args(args),
            None,
            Duration::from_secs(180),
        );
        must_succeed(&format!("helm {args:?}"), &out)
    };
    let chart_arg = chart.to_str().expect("utf-8 path");
    let values_arg = values.to_str().expect("utf-8 path");
    let _ = run(
        server.kubectl().args(["create", "namespace", "grasp"]),
        None,
        Duration::from_secs(60),
    );
    for verb in ["install", "upgrade"] {
        helm_at(&[
            verb,
            RELEASE,
            chart_arg,
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "-f",
            values_arg,
            "--timeout",
            "120s",
        ]);
        let names = kubectl(
            &server,
            &[
                "get",
                "syncrelays,relayallowlists",
                "-n",
                "grasp",
                "-o",
                "name",
            ],
            None,
        );
        let mut names: Vec<&str> = names.lines().collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "relayallowlist.sync.grasp.dev/default",
                "syncrelay.sync.grasp.dev/relay-example-org",
                "syncrelay.sync.grasp.dev/slow-relay",
            ],
            "after helm {verb}"
        );
        let manifest = helm_at(&["get", "manifest", RELEASE, "--namespace", NAMESPACE]);
        let in_release = parse_docs(&manifest)
            .iter()
            .any(|d| kind(d) == "SyncRelay" || kind(d) == "RelayAllowlist");
        assert_eq!(
            in_release,
            verb == "upgrade",
            "after helm {verb}, SyncRelays in the release manifest: {in_release}"
        );
    }
    // The adopted objects are the release's now: uninstall deletes them (no controller runs
    // here, so their deletion is not blocked by a finalizer), and keeps the CRDs.
    helm_at(&[
        "uninstall",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--timeout",
        "120s",
    ]);
    let left = kubectl(
        &server,
        &["get", "syncrelays", "-n", "grasp", "-o", "name"],
        None,
    );
    assert!(left.trim().is_empty(), "left after uninstall: {left}");
    kubectl(&server, &["get", "crd", "syncrelays.sync.grasp.dev"], None);
}
