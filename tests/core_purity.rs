//! The functional core must stay pure: no async runtime, no networking client, no Kubernetes,
//! no clock reads. This test reads the core's sources and fails on any such use, so the rule
//! cannot erode unnoticed.

use std::fs;
use std::path::Path;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "nostr_sdk",
    "nostr_relay_pool",
    "kube",
    "k8s_openapi",
    "SystemTime::now",
    "Instant::now",
    "Timestamp::now",
    "std::net::TcpStream",
    "std::fs",
    "thread_rng",
];

#[test]
fn core_modules_use_no_io_runtime_or_clock() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).expect("src/core exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN {
                assert!(
                    !code.contains(word),
                    "{}:{}: the pure core must not use `{word}`: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 15,
        "expected the core's modules, found {checked}"
    );
}
