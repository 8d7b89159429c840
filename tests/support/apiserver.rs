//! A real kube-apiserver backed by a real etcd on 127.0.0.1, like controller-runtime's envtest:
//! no kubelet, scheduler or controller-manager, so nothing runs pods or garbage-collects, but
//! the API (CRDs, RBAC, watches, server-side apply) is the real one.
//!
//! The binaries come from `scripts/k8s-tools` (built from the Go module proxy, cached outside
//! the clone); `scripts/test` runs it and exports `GRASP_SYNC_K8S_BIN`.
//!
//! Each [`TestApiServer`] owns a scratch directory with etcd's data, the certificates (a
//! throwaway CA signs the serving certificate; `openssl` makes them), a static-token admin
//! kubeconfig and both processes' logs. The processes are killed when the handle drops, and
//! also when the test process dies without dropping it: each runs under a small `sh` guard
//! that SIGKILLs it once the guard's stdin (a pipe from the test process) closes. Set
//! `GRASP_SYNC_KEEP_APISERVER_DIR=1` to keep the scratch directory (logs) after the drop.

use super::bed::free_addr;
use super::guarded::Guarded;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long `start()` / `restart_apiserver()` wait for `/readyz`.
const READY_LIMIT: Duration = Duration::from_secs(60);
/// The static bearer token of the admin user (group `system:masters`).
const ADMIN_TOKEN: &str = "grasp-sync-test-admin-token";
/// The pinned Kubernetes version is the one `scripts/k8s-tools` reads.
const K8S_TOOLS_GO_MOD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/k8s-tools/kubernetes/go.mod"
));

static INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// etcd and kube-apiserver on free 127.0.0.1 ports; both are killed on drop.
#[derive(Debug)]
pub struct TestApiServer {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    apiserver_args: Vec<String>,
    etcd: Option<Guarded>,
    apiserver: Option<Guarded>,
    kubeconfig: PathBuf,
}

impl TestApiServer {
    /// Starts etcd + kube-apiserver on free 127.0.0.1 ports and waits (at most 60 s) until
    /// `/readyz` is ok. Panics, naming `scripts/k8s-tools`, if the binaries are missing, and
    /// with the tail of the logs if they do not come up.
    ///
    /// Blocks the calling thread (a few seconds); fine in `#[tokio::test(flavor =
    /// "multi_thread")]` tests.
    pub fn start() -> TestApiServer {
        let bin = Self::bin_dir();
        for exe in ["etcd", "kube-apiserver", "kubectl"] {
            assert!(
                bin.join(exe).is_file(),
                "{exe} not found in {}: run scripts/k8s-tools (it builds kube-apiserver, etcd \
                 and kubectl from the Go module proxy into that directory; scripts/test runs \
                 it and exports GRASP_SYNC_K8S_BIN)",
                bin.display()
            );
        }
        let etcd_client = free_addr();
        let etcd_peer = free_addr();
        let port = free_addr().port();
        let dir = std::env::temp_dir().join(format!(
            "grasp-sync-apiserver-{}-{}-{port}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create apiserver scratch dir");
        // etcd warns unless its data dir is private.
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.join("etcd"))
            .expect("create etcd data dir");
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).expect("create pki dir");
        make_pki(&pki);
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )
        .expect("write token file");
        let kubeconfig = dir.join("admin.kubeconfig");
        std::fs::write(&kubeconfig, admin_kubeconfig(port, &pki.join("ca.crt")))
            .expect("write kubeconfig");

        let etcd_args = etcd_args(&dir, etcd_client, etcd_peer);
        let apiserver_args = apiserver_args(&dir, port, etcd_client);
        let mut server = TestApiServer {
            dir: dir.clone(),
            bin: bin.clone(),
            port,
            apiserver_args,
            etcd: None,
            apiserver: None,
            kubeconfig,
        };
        server.etcd = Some(Guarded::spawn("etcd", &dir, &bin.join("etcd"), &etcd_args));
        server.wait_etcd(etcd_client);
        server.spawn_apiserver();
        server
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The admin kubeconfig (static bearer token, group `system:masters`; the CA that signed
    /// the serving certificate).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where `scripts/k8s-tools` installs the binaries: `$GRASP_SYNC_K8S_BIN` if set, else
    /// `${GRASP_SYNC_CACHE:-$HOME/.cache/grasp-sync}/k8s/<k8s version>/bin`.
    pub fn bin_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("GRASP_SYNC_K8S_BIN").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let cache = std::env::var_os("GRASP_SYNC_CACHE")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").expect("HOME or GRASP_SYNC_CACHE set");
                PathBuf::from(home).join(".cache/grasp-sync")
            });
        cache.join("k8s").join(k8s_version()).join("bin")
    }

    /// A client authenticated as the admin (`system:masters`).
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).expect("kube client from admin kubeconfig")
    }

    /// A client that impersonates `user` in `groups` (through the admin credentials), e.g.
    /// `client_as("system:serviceaccount:ns:name", &["system:serviceaccounts",
    /// "system:serviceaccounts:ns", "system:authenticated"])`. Only what RBAC grants that
    /// identity is allowed.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> kube::Client {
        let mut config = self.config().await;
        config.auth_info.impersonate = Some(user.to_string());
        config.auth_info.impersonate_groups = if groups.is_empty() {
            None
        } else {
            Some(groups.iter().map(|g| g.to_string()).collect())
        };
        kube::Client::try_from(config).expect("impersonating kube client")
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`, with its discovery cache in the scratch dir.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.join("kubectl-cache").display()
            ))
            .stdin(Stdio::null());
        cmd
    }

    /// Stops kube-apiserver (SIGTERM, so open watches end) and starts it again on the same
    /// port against the same etcd; returns once `/readyz` is ok again. Existing clients
    /// reconnect on their next request.
    pub fn restart_apiserver(&mut self) {
        if let Some(mut apiserver) = self.apiserver.take() {
            apiserver.stop_gracefully();
        }
        self.spawn_apiserver();
    }

    async fn config(&self) -> kube::Config {
        let kubeconfig =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("read admin kubeconfig");
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kube config from admin kubeconfig")
    }

    fn spawn_apiserver(&mut self) {
        self.apiserver = Some(Guarded::spawn(
            "kube-apiserver",
            &self.dir,
            &self.bin.join("kube-apiserver"),
            &self.apiserver_args,
        ));
        self.wait_apiserver_ready();
    }

    fn fail(&self, what: &str) -> ! {
        let mut msg = format!("{what} (scratch dir {})", self.dir.display());
        for p in [&self.etcd, &self.apiserver].into_iter().flatten() {
            msg.push_str("\n\n");
            msg.push_str(&p.log_tail(40));
        }
        panic!("{msg}");
    }

    fn check_alive(&mut self) {
        let mut dead = None;
        for p in [&mut self.etcd, &mut self.apiserver].into_iter().flatten() {
            if let Some(status) = p.exited() {
                dead = Some(format!("{} exited early ({status})", p.name()));
            }
        }
        if let Some(what) = dead {
            self.fail(&what);
        }
    }

    fn wait_etcd(&mut self, client: SocketAddr) {
        let start = Instant::now();
        while start.elapsed() < READY_LIMIT {
            self.check_alive();
            if etcd_healthy(client) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.fail(&format!(
            "etcd not healthy on {client} within {READY_LIMIT:?}"
        ));
    }

    fn wait_apiserver_ready(&mut self) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < READY_LIMIT {
            self.check_alive();
            let port_open = TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], self.port)),
                Duration::from_millis(200),
            )
            .is_ok();
            if port_open {
                let out = self
                    .kubectl()
                    .args(["get", "--raw=/readyz", "--request-timeout=5s"])
                    .output()
                    .expect("run kubectl");
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                    return;
                }
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.fail(&format!(
            "kube-apiserver not ready on {} within {READY_LIMIT:?}; last /readyz: {last}",
            self.url()
        ));
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        // Throwaway state: SIGKILL both (a graceful kube-apiserver shutdown takes seconds, and
        // hangs while etcd is gone).
        for p in [&mut self.apiserver, &mut self.etcd].into_iter().flatten() {
            p.signal("KILL");
        }
        for p in [&mut self.apiserver, &mut self.etcd].into_iter().flatten() {
            p.wait_stopped();
        }
        if std::env::var_os("GRASP_SYNC_KEEP_APISERVER_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `k8s.io/kubernetes` version pinned in `tests/k8s-tools/kubernetes/go.mod`.
fn k8s_version() -> &'static str {
    K8S_TOOLS_GO_MOD
        .lines()
        .find_map(|l| l.trim().strip_prefix("require k8s.io/kubernetes "))
        .map(str::trim)
        .expect("tests/k8s-tools/kubernetes/go.mod requires k8s.io/kubernetes")
}

fn etcd_args(dir: &Path, client: SocketAddr, peer: SocketAddr) -> Vec<String> {
    let client = format!("http://{client}");
    let peer = format!("http://{peer}");
    vec![
        "--name=test".into(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=test={peer}"),
        "--initial-cluster-state=new".into(),
        // Throwaway data: skip fsync, which dominates latency on CI disks.
        "--unsafe-no-fsync".into(),
        "--log-level=warn".into(),
    ]
}

fn apiserver_args(dir: &Path, port: u16, etcd: SocketAddr) -> Vec<String> {
    let pki = dir.join("pki");
    let p = |name: &str| pki.join(name).display().to_string();
    vec![
        format!("--etcd-servers=http://{etcd}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--cert-dir={}", dir.join("certs").display()),
        format!("--tls-cert-file={}", p("serving.crt")),
        format!("--tls-private-key-file={}", p("serving.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        format!("--token-auth-file={}", dir.join("tokens.csv").display()),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        // No controller-manager issues service-account tokens for pods, so do not demand them.
        "--disable-admission-plugins=ServiceAccount".into(),
        // The endpoint reconciler (the `kubernetes` Service's endpoints) refuses a loopback
        // advertise address; nothing here needs those endpoints.
        "--endpoint-reconciler-type=none".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

/// A throwaway CA, a serving certificate for 127.0.0.1/localhost signed by it, and the
/// service-account signing key pair; EC P-256 throughout (fast to generate).
fn make_pki(pki: &Path) {
    let ext = pki.join("serving.ext");
    std::fs::write(
        &ext,
        "basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
         DNS:kubernetes.default.svc,IP:10.0.0.1\n",
    )
    .expect("write openssl ext file");
    let ec_key = [
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
    ];
    let steps: Vec<Vec<&str>> = vec![
        [&ec_key[..], &["-out", "ca.key"]].concat(),
        vec![
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=grasp-sync-test-ca",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            "-out",
            "ca.crt",
        ],
        [&ec_key[..], &["-out", "serving.key"]].concat(),
        vec![
            "req",
            "-new",
            "-key",
            "serving.key",
            "-subj",
            "/CN=kube-apiserver",
            "-out",
            "serving.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "serving.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "3650",
            "-extfile",
            "serving.ext",
            "-out",
            "serving.crt",
        ],
        [&ec_key[..], &["-out", "sa.key"]].concat(),
        vec!["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(pki)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("TestApiServer needs openssl on PATH: {e}"));
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn admin_kubeconfig(port: u16, ca: &Path) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: test\n  \
           cluster:\n    \
             server: https://127.0.0.1:{port}\n    \
             certificate-authority: {ca}\n\
         users:\n\
         - name: admin\n  \
           user:\n    \
             token: {ADMIN_TOKEN}\n\
         contexts:\n\
         - name: test\n  \
           context:\n    \
             cluster: test\n    \
             user: admin\n    \
             namespace: default\n\
         current-context: test\n",
        ca = ca.display()
    )
}

/// `GET /health` on etcd's client URL answers `"health":"true"`.
fn etcd_healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
