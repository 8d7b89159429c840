//! The README's main command, driven as a user would: `grasp-sync run` starts the embedded
//! relay and the HTTP endpoints, `grasp-sync status` prints the table from it, and Ctrl-C
//! (SIGINT) stops it cleanly, printing the table. Bounded waits only.

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::bed::{free_addr, scratch_dir};

fn get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

#[test]
fn run_serves_status_and_stops_cleanly_on_ctrl_c() {
    let bin = env!("CARGO_BIN_EXE_grasp-sync");
    let data = scratch_dir("run-binary");
    let relay = free_addr();
    let http = free_addr();
    let config = data.with_extension("yaml");
    // A loopback port nobody listens on: the relay stays in backoff (tests touch 127.0.0.1 only).
    let nobody = format!("ws://{}", free_addr());
    std::fs::write(
        &config,
        format!("apiVersion: sync.grasp.dev/v1alpha1\nkind: SyncRelay\nmetadata: {{name: example}}\nspec: {{url: \"{nobody}\", bootstrap: true}}\n"),
    )
    .expect("config");
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&data)
        .args([
            "--relay-listen",
            &relay.to_string(),
            "--listen",
            &http.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let ready = loop {
        if let Some((200, _)) = get(http, "/readyz") {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ready, "run did not become ready");
    assert_eq!(get(http, "/livez").map(|r| r.0), Some(200));
    let (code, metrics) = get(http, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("grasp_sync_relays_managed"), "{metrics}");
    let (_, status) = get(http, "/status").expect("status");
    let objects: serde_json::Value = serde_json::from_str(&status).expect("json");
    assert_eq!(objects[0]["metadata"]["name"], "example");
    assert_eq!(objects[0]["spec"]["url"], nobody.as_str());
    let types: Vec<&str> = objects[0]["status"]["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .filter_map(|c| c["type"].as_str())
        .collect();
    assert!(
        types.contains(&"Connected") && types.contains(&"Synced"),
        "{types:?}"
    );

    let table = Command::new(bin)
        .args(["status", "--url", &format!("http://{http}")])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    assert!(text.starts_with("NAME") && text.contains(&nobody), "{text}");

    // Ctrl-C.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill")
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "run did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    assert!(status.success(), "exit {status}");
    assert!(
        out.contains("NAME") && out.contains("example"),
        "no table on exit: {out}"
    );
    // The store persisted under --data.
    assert!(data
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false));
}
