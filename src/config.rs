//! Reading configuration files: multi-document YAML whose `kind: Settings` document overrides
//! the sync core's constants. (SyncRelay and RelayAllowlist documents are read by the drivers.)

use crate::core::settings::{SettingsError, SyncSettings};
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
