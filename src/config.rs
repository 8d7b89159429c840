//! Reading configuration files: multi-document YAML of `SyncRelay` and `RelayAllowlist` objects
//! (the same documents work as Kubernetes objects) plus an optional `kind: Settings` document
//! that overrides the sync core's constants.

use crate::api::types::{RelayAllowlistSpec, SyncRelaySpec};
use crate::core::settings::{SettingsError, SyncSettings};
use crate::core::url::RelayUrl;
use serde::Deserialize;
use thiserror::Error;

/// The API group and version of every document.
pub const API_VERSION: &str = "sync.grasp.dev/v1alpha1";

/// Why a config file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Not YAML, or a document of the wrong shape.
    #[error("document {index}: {source}")]
    Yaml {
        /// 0-based document index.
        index: usize,
        /// The parser's error, with line and column.
        source: serde_yaml::Error,
    },
    /// A document with another apiVersion.
    #[error("document {index}: apiVersion {found:?} is not {API_VERSION}")]
    ApiVersion {
        /// 0-based document index.
        index: usize,
        /// What it said.
        found: String,
    },
    /// More than one Settings document.
    #[error("document {index}: a second kind: Settings document; merge them into one")]
    DuplicateSettings {
        /// 0-based document index.
        index: usize,
    },
    /// A setting that makes no sense.
    #[error(transparent)]
    Invalid(#[from] SettingsError),
    /// A kind this file may not hold.
    #[error("document {index}: kind {kind:?} is not SyncRelay, RelayAllowlist or Settings")]
    Kind {
        /// 0-based document index.
        index: usize,
        /// What it said.
        kind: String,
    },
    /// An object without `metadata.name`, or a name used twice.
    #[error("document {index}: {message}")]
    Name {
        /// 0-based document index.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// A SyncRelay whose URL is not a ws:// or wss:// relay URL.
    #[error("document {index} (SyncRelay {name}): invalid url {url:?}: {reason}")]
    Url {
        /// 0-based document index.
        index: usize,
        /// Object name.
        name: String,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// A named SyncRelay from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRelayDoc {
    /// `metadata.name`.
    pub name: String,
    /// The normalised URL.
    pub url: RelayUrl,
    /// The spec as written.
    pub spec: SyncRelaySpec,
}

/// A named RelayAllowlist from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowlistDoc {
    /// `metadata.name`.
    pub name: String,
    /// The spec.
    pub spec: RelayAllowlistSpec,
}

/// Everything a config file holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigSet {
    /// Effective settings (defaults overridden by the Settings document).
    pub settings: SyncSettings,
    /// SyncRelays, in file order.
    pub relays: Vec<SyncRelayDoc>,
    /// RelayAllowlists, in file order.
    pub allowlists: Vec<AllowlistDoc>,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectDoc<T> {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Option<Metadata>,
    spec: T,
}

fn named<T: serde::de::DeserializeOwned>(
    index: usize,
    value: serde_yaml::Value,
    names: &mut std::collections::HashSet<String>,
    kind: &str,
) -> Result<(String, T), ConfigError> {
    let doc: ObjectDoc<T> =
        serde_yaml::from_value(value).map_err(|source| ConfigError::Yaml { index, source })?;
    let name = doc
        .metadata
        .and_then(|m| m.name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ConfigError::Name {
            index,
            message: format!("{kind} without metadata.name"),
        })?;
    if !names.insert(format!("{kind}/{name}")) {
        return Err(ConfigError::Name {
            index,
            message: format!("{kind} {name} appears twice"),
        });
    }
    Ok((name, doc.spec))
}

/// Reads a whole config file: SyncRelays, RelayAllowlists and the effective settings.
pub fn load_config(text: &str) -> Result<ConfigSet, ConfigError> {
    let settings = settings_from_yaml(text)?;
    let mut set = ConfigSet {
        settings,
        ..ConfigSet::default()
    };
    let mut names = std::collections::HashSet::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|source| ConfigError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let header: Header = serde_yaml::from_value(value.clone())
            .map_err(|source| ConfigError::Yaml { index, source })?;
        let kind = header.kind.unwrap_or_default();
        if kind == "Settings" {
            continue;
        }
        if header.api_version.as_deref() != Some(API_VERSION) {
            return Err(ConfigError::ApiVersion {
                index,
                found: header.api_version.unwrap_or_default(),
            });
        }
        match kind.as_str() {
            "SyncRelay" => {
                let (name, spec): (String, SyncRelaySpec) =
                    named(index, value, &mut names, "SyncRelay")?;
                let url = RelayUrl::parse_with_limit(&spec.url, set.settings.max_relay_url_len)
                    .map_err(|e| ConfigError::Url {
                        index,
                        name: name.clone(),
                        url: spec.url.clone(),
                        reason: e.reason().to_string(),
                    })?;
                set.relays.push(SyncRelayDoc { name, url, spec });
            }
            "RelayAllowlist" => {
                let (name, spec) = named(index, value, &mut names, "RelayAllowlist")?;
                set.allowlists.push(AllowlistDoc { name, spec });
            }
            _ => return Err(ConfigError::Kind { index, kind }),
        }
    }
    Ok(set)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<String>,
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SettingsDoc {
    #[serde(default)]
    spec: SyncSettings,
}

/// The effective settings of a multi-document YAML config: the defaults, overridden by its
/// `kind: Settings` document if there is one. Other kinds are left to the drivers.
pub fn settings_from_yaml(text: &str) -> Result<SyncSettings, ConfigError> {
    let mut found: Option<SyncSettings> = None;
    for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|source| ConfigError::Yaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let header: Header = serde_yaml::from_value(value.clone())
            .map_err(|source| ConfigError::Yaml { index, source })?;
        if header.kind.as_deref() != Some("Settings") {
            continue;
        }
        match header.api_version.as_deref() {
            Some(API_VERSION) => {}
            other => {
                return Err(ConfigError::ApiVersion {
                    index,
                    found: other.unwrap_or_default().to_string(),
                })
            }
        }
        if found.is_some() {
            return Err(ConfigError::DuplicateSettings { index });
        }
        let doc: SettingsDoc =
            serde_yaml::from_value(value).map_err(|source| ConfigError::Yaml { index, source })?;
        found = Some(doc.spec);
    }
    let settings = found.unwrap_or_default();
    settings.validate()?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DOCS: &str = "\
apiVersion: sync.grasp.dev/v1alpha1
kind: SyncRelay
metadata: {name: a}
spec: {url: wss://relay.example.org}
---
apiVersion: sync.grasp.dev/v1alpha1
kind: Settings
metadata: {name: fast}
spec:
  batchWindow: 200ms
  dailySync: {min: 1h, max: 2h}
";

    #[test]
    fn whole_file_is_read() {
        let text = format!(
            "{DOCS}---\napiVersion: sync.grasp.dev/v1alpha1\nkind: RelayAllowlist\nmetadata: {{name: default}}\nspec:\n  allowPrivateNetworks: true\n  allow: [{{host: \"127.0.0.1\", schemes: [ws]}}]\n"
        );
        let set = load_config(&text).expect("loads");
        assert_eq!(set.relays.len(), 1);
        assert_eq!(set.relays[0].name, "a");
        assert_eq!(set.relays[0].url.as_str(), "wss://relay.example.org");
        assert_eq!(set.allowlists.len(), 1);
        assert!(set.allowlists[0].spec.allow_private_networks);
        assert_eq!(set.settings.batch_window, Duration::from_millis(200));
    }

    #[test]
    fn bad_documents_say_which_and_why() {
        let bad_url = "apiVersion: sync.grasp.dev/v1alpha1\nkind: SyncRelay\nmetadata: {name: x}\nspec: {url: http://a.example}\n";
        let e = load_config(bad_url).expect_err("refused").to_string();
        assert!(
            e.contains("document 0") && e.contains("SyncRelay x") && e.contains("http://a.example"),
            "{e}"
        );
        let kind =
            "apiVersion: sync.grasp.dev/v1alpha1\nkind: Pod\nmetadata: {name: x}\nspec: {}\n";
        assert!(load_config(kind)
            .expect_err("refused")
            .to_string()
            .contains("Pod"));
        let twice =
            format!("{bad_url}---\n{bad_url}").replace("http://a.example", "wss://a.example");
        assert!(load_config(&twice)
            .expect_err("refused")
            .to_string()
            .contains("twice"));
        let unknown = "apiVersion: sync.grasp.dev/v1alpha1\nkind: SyncRelay\nmetadata: {name: x}\nspec: {url: wss://a.example, bogus: 1}\n";
        assert!(load_config(unknown)
            .expect_err("refused")
            .to_string()
            .contains("bogus"));
    }

    #[test]
    fn settings_document_overrides_defaults() {
        let s = settings_from_yaml(DOCS).expect("valid");
        assert_eq!(s.batch_window, Duration::from_millis(200));
        assert_eq!(s.daily_sync.max, Duration::from_secs(7200));
        assert_eq!(s.chunk_size, 100);
    }

    #[test]
    fn no_settings_document_means_defaults() {
        let s = settings_from_yaml("apiVersion: sync.grasp.dev/v1alpha1\nkind: SyncRelay\n")
            .expect("valid");
        assert_eq!(s, SyncSettings::default());
    }

    #[test]
    fn bad_documents_get_clear_errors() {
        let err =
            settings_from_yaml("apiVersion: v9\nkind: Settings\nspec: {}\n").expect_err("refused");
        assert!(err.to_string().contains("apiVersion"), "{err}");
        let err = settings_from_yaml(
            "apiVersion: sync.grasp.dev/v1alpha1\nkind: Settings\nspec: {batchWindow: 0ms}\n",
        )
        .expect_err("refused");
        assert!(err.to_string().contains("batchWindow"), "{err}");
        let err = settings_from_yaml(
            "apiVersion: sync.grasp.dev/v1alpha1\nkind: Settings\nspec: {chunkSize: many}\n",
        )
        .expect_err("refused");
        assert!(err.to_string().starts_with("document 0"), "{err}");
        let twice = format!(
            "{DOCS}---\n{}",
            DOCS.split("---\n").nth(1).unwrap_or_default()
        );
        assert!(matches!(
            settings_from_yaml(&twice),
            Err(ConfigError::DuplicateSettings { .. })
        ));
    }
}
