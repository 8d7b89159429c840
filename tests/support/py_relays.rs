//! Out-of-process test-bed relays from PyPI, installed by `scripts/test` into a venv:
//! - `nostr-relay==1.14` (SQLite, no NIP-77: it never answers NEG-OPEN);
//! - the `nostr-sdk==0.45.1` wheel's `LocalRelay` (NIP-77, at most 20 filters per REQ).
//!
//! Each runs on a free 127.0.0.1 port and is killed when its handle drops.

use super::bed::free_addr;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyRelayKind {
    /// PyPI `nostr-relay`: no NIP-77.
    NostrRelay,
    /// PyPI `nostr-sdk` LocalRelay: NIP-77.
    SdkLocalRelay,
}

/// A running relay process.
#[derive(Debug)]
pub struct PyRelay {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

fn venv() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("GRASP_SYNC_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/venv"))
}

impl PyRelay {
    /// Starts one and waits until it accepts connections (bounded to 30 s).
    pub fn start(kind: PyRelayKind) -> Self {
        Self::start_with(kind, "")
    }

    /// PyPI `nostr-relay` with its own REQ rate limiter on, `rule` in its syntax (e.g.
    /// `"2/s"`, for all clients together): a REQ over the limit is dropped and answered
    /// `["NOTICE","rate-limited"]`, and the connection is throttled (a pause after each
    /// later command, doubling with every refusal).
    pub fn start_req_rate_limited(rule: &str) -> Self {
        Self::start_with(
            PyRelayKind::NostrRelay,
            &format!("rate_limits:\n  global:\n    REQ: \"{rule}\"\n"),
        )
    }

    /// `extra` is appended to `nostr-relay`'s YAML config (ignored for the other kind).
    fn start_with(kind: PyRelayKind, extra: &str) -> Self {
        let bin = venv().join("bin");
        assert!(
            bin.join("python").exists(),
            "test-bed venv missing at {}: run scripts/test, which installs it",
            venv().display()
        );
        let addr = free_addr();
        let dir = std::env::temp_dir().join(format!(
            "grasp-sync-py-{:?}-{}-{}",
            kind,
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).expect("relay dir");
        let mut cmd = match kind {
            PyRelayKind::NostrRelay => {
                let config = dir.join("config.yaml");
                std::fs::write(&config, nostr_relay_config(addr, &dir) + extra)
                    .expect("write config");
                let mut c = Command::new(bin.join("nostr-relay"));
                c.arg("-c").arg(&config).arg("serve");
                c
            }
            PyRelayKind::SdkLocalRelay => {
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/py_local_relay.py");
                let mut c = Command::new(bin.join("python"));
                c.arg(script).arg(addr.port().to_string());
                c
            }
        };
        let log = std::fs::File::create(dir.join("relay.log")).expect("log file");
        let child = cmd
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn test relay");
        let mut relay = PyRelay { child, addr, dir };
        relay.wait_ready(Duration::from_secs(30));
        relay
    }

    fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default();
                panic!("test relay exited early ({status}):\n{log}");
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "test relay did not listen on {} within {limit:?}",
            self.addr
        );
    }

    /// Its `ws://` URL.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PyRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nostr_relay_config(addr: SocketAddr, dir: &Path) -> String {
    // `oldest_event` must be set: its default rejects old `created_at`, and tests backdate.
    format!(
        "DEBUG: false\n\
         relay_name: grasp-sync test relay\n\
         storage:\n  sqlalchemy.url: sqlite+aiosqlite:///{db}\n  num_concurrent_reqs: 10\n  num_concurrent_adds: 2\n  validators:\n    - nostr_relay.validators.is_signed\n\
         verification:\n  nip05_verification: disabled\n\
         gunicorn:\n  bind: {addr}\n  workers: 1\n  loglevel: warning\n  reload: false\n\
         authentication:\n  enabled: false\n\
         message_timeout: 1800\n\
         subscription_limit: 32\n\
         max_limit: 6000\n\
         oldest_event: 315360000\n",
        db = dir.join("nostr.sqlite3").display(),
    )
}
