//! Golden test: the committed `crds/*.yaml` equal what the code generates, file by file, and
//! `grasp-sync crd` prints exactly their concatenation. The Helm chart copies these files byte
//! for byte (`scripts/sync-chart-crds`), so a schema change shows up in review as a YAML diff.
//!
//! To regenerate after changing the types: `GRASP_SYNC_BLESS=1 cargo test --test crd_golden`
//! (then `scripts/sync-chart-crds`).

use grasp_sync::api::crd::{crd_files, render_crds};
use std::path::PathBuf;

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("crds")
}

fn bless() -> bool {
    std::env::var("GRASP_SYNC_BLESS").is_ok_and(|v| v == "1")
}

#[test]
fn committed_crds_match_the_generated_ones() {
    let dir = crds_dir();
    let mut stale = Vec::new();
    for (name, yaml) in crd_files() {
        let path = dir.join(name);
        if bless() {
            std::fs::create_dir_all(&dir).expect("create crds/");
            std::fs::write(&path, &yaml).expect("write crd");
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == yaml => {}
            Ok(_) => stale.push(format!("{} differs", path.display())),
            Err(e) => stale.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(
        stale.is_empty(),
        "generated CRDs differ from crds/: {stale:?}\n\
         regenerate with: GRASP_SYNC_BLESS=1 cargo test --test crd_golden \
         && scripts/sync-chart-crds"
    );
}

#[test]
fn crd_command_prints_every_file_in_order() {
    let expected: String = crd_files()
        .into_iter()
        .map(|(_, yaml)| format!("---\n{yaml}"))
        .collect();
    assert_eq!(render_crds(), expected);
}

#[test]
fn the_binary_prints_the_same_yaml() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_grasp-sync"))
        .arg("crd")
        .output()
        .expect("run grasp-sync crd");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), render_crds());
}

#[test]
fn crds_parse_back_as_crds() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    for (name, yaml) in crd_files() {
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            format!("{}.yaml", crd.metadata.name.unwrap_or_default()),
            name
        );
        assert_eq!(
            crd.metadata
                .annotations
                .unwrap_or_default()
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep")
        );
    }
}
