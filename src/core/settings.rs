//! Every tunable constant of the sync core, with the seed's values as defaults.
//!
//! The same struct is the `spec` of a standalone `kind: Settings` document, so field names are
//! camelCase and durations are human strings ("200ms", "15m").

use super::duration::serde_duration;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use thiserror::Error;

/// Which announcements count as "ours".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Scope {
    /// Only repositories whose newest announcement lists our relay (GRASP-02).
    #[default]
    ListingUs,
    /// Every announcement reached: for operators who run an archive.
    All,
}

/// The daily full-resync period, drawn uniformly per relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailySync {
    /// Shortest period.
    #[serde(with = "serde_duration")]
    pub min: Duration,
    /// Longest period.
    #[serde(with = "serde_duration")]
    pub max: Duration,
}

/// Exponential backoff and the dead-relay rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Backoff {
    /// Delay after the first failure; doubles per further failure.
    #[serde(with = "serde_duration")]
    pub base: Duration,
    /// Cap on the delay.
    #[serde(with = "serde_duration")]
    pub max: Duration,
    /// Continuous failure for this long makes a relay Dead.
    #[serde(with = "serde_duration")]
    pub dead_after: Duration,
    /// A Dead relay is retried this often.
    #[serde(with = "serde_duration", default = "default_dead_retry")]
    pub dead_retry: Duration,
}

fn default_dead_retry() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// A relay's subscription budget: learned from NIP-11 and CLOSED/NOTICE, or these defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelayLimits {
    /// Concurrent subscriptions (REQ and NEG-OPEN both count).
    pub max_subscriptions: u32,
    /// Filters per REQ.
    pub max_filters: u32,
    /// Events one historic page asks for (`limit`), and the cap a relay applies.
    pub max_limit: u32,
}

impl RelayLimits {
    /// Clamps learned values to sane minimums so that a hostile NIP-11 cannot stall planning.
    pub fn sanitized(self) -> Self {
        RelayLimits {
            max_subscriptions: self.max_subscriptions.clamp(2, 1024),
            max_filters: self.max_filters.clamp(1, 256),
            max_limit: self.max_limit.clamp(10, 100_000),
        }
    }
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_subscriptions: 20,
            max_filters: 10,
            max_limit: 500,
        }
    }
}

/// All constants of the sync core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncSettings {
    /// Self-subscriber batch window; it does not reset on new events.
    #[serde(with = "serde_duration")]
    pub batch_window: Duration,
    /// Which announcements are ours.
    pub scope: Scope,
    /// A disconnect shorter than this gets a quick reconnect; also the `since` margin.
    #[serde(with = "serde_duration")]
    pub quick_reconnect_window: Duration,
    /// Daily full resync period.
    pub daily_sync: DailySync,
    /// Tag values per L2/L3 filter.
    pub chunk_size: usize,
    /// Backoff and dead-relay rule.
    pub backoff: Backoff,
    /// Pause after a rate-limit NOTICE or CLOSED.
    #[serde(with = "serde_duration")]
    pub rate_limit_cooldown: Duration,
    /// A reconnected relay's failure count resets only after this long connected.
    #[serde(with = "serde_duration")]
    pub stability_period: Duration,
    /// A historic part (REQ page or negentropy session) fails without EOSE for this long.
    #[serde(with = "serde_duration")]
    pub eose_timeout: Duration,
    /// A relay whose target stays empty this long is disconnected.
    #[serde(with = "serde_duration")]
    pub reap_grace: Duration,
    /// How often the reaper looks.
    #[serde(with = "serde_duration")]
    pub reap_interval: Duration,
    /// Relays taken from one announcement; the rest are counted and ignored.
    pub max_relays_per_announcement: usize,
    /// Longest relay URL accepted, in bytes.
    pub max_relay_url_len: usize,
    /// Budget assumed until a relay tells us its own.
    pub default_limits: RelayLimits,
    /// Safety bound on REQ pages for one filter; pagination ends at it.
    pub max_pages: u32,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            batch_window: Duration::from_secs(5),
            scope: Scope::ListingUs,
            quick_reconnect_window: Duration::from_secs(15 * 60),
            daily_sync: DailySync {
                min: Duration::from_secs(23 * 3600),
                max: Duration::from_secs(25 * 3600),
            },
            chunk_size: 100,
            backoff: Backoff {
                base: Duration::from_secs(5),
                max: Duration::from_secs(3600),
                dead_after: Duration::from_secs(24 * 3600),
                dead_retry: default_dead_retry(),
            },
            rate_limit_cooldown: Duration::from_secs(65),
            stability_period: Duration::from_secs(300),
            eose_timeout: Duration::from_secs(30),
            reap_grace: Duration::from_secs(600),
            reap_interval: Duration::from_secs(60),
            max_relays_per_announcement: 20,
            max_relay_url_len: 512,
            default_limits: RelayLimits::default(),
            max_pages: 100_000,
        }
    }
}

/// A setting that makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid setting {field}: {reason}")]
pub struct SettingsError {
    /// The camelCase field name.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl SyncSettings {
    /// Checks the relations between fields that serde cannot.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |field, reason: &str| {
            Err(SettingsError {
                field,
                reason: reason.to_string(),
            })
        };
        if self.batch_window.is_zero() {
            return err("batchWindow", "must be greater than zero");
        }
        if self.daily_sync.min > self.daily_sync.max {
            return err("dailySync", "min must not exceed max");
        }
        if self.daily_sync.min.is_zero() {
            return err("dailySync.min", "must be greater than zero");
        }
        if self.chunk_size == 0 || self.chunk_size > 10_000 {
            return err("chunkSize", "must be between 1 and 10000");
        }
        if self.backoff.base.is_zero() || self.backoff.base > self.backoff.max {
            return err("backoff", "base must be positive and not above max");
        }
        if self.eose_timeout.is_zero() {
            return err("eoseTimeout", "must be greater than zero");
        }
        if self.reap_interval.is_zero() {
            return err("reapInterval", "must be greater than zero");
        }
        if self.max_relays_per_announcement == 0 {
            return err("maxRelaysPerAnnouncement", "must be at least 1");
        }
        if self.max_relay_url_len < 16 {
            return err("maxRelayUrlLen", "must be at least 16");
        }
        if self.max_pages == 0 {
            return err("maxPages", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seed_values() {
        let s = SyncSettings::default();
        assert_eq!(s.batch_window, Duration::from_secs(5));
        assert_eq!(s.quick_reconnect_window, Duration::from_secs(900));
        assert_eq!(s.chunk_size, 100);
        assert_eq!(s.backoff.base, Duration::from_secs(5));
        assert_eq!(s.backoff.max, Duration::from_secs(3600));
        assert_eq!(s.backoff.dead_after, Duration::from_secs(86_400));
        assert_eq!(s.rate_limit_cooldown, Duration::from_secs(65));
        assert_eq!(s.reap_interval, Duration::from_secs(60));
        assert!(s.validate().is_ok());
    }

    #[test]
    fn partial_yaml_overrides_only_what_it_names() {
        let s: SyncSettings = serde_yaml::from_str(
            "batchWindow: 200ms\nbackoff: {base: 1s, max: 10s, deadAfter: 1m}\n",
        )
        .expect("parses");
        assert_eq!(s.batch_window, Duration::from_millis(200));
        assert_eq!(s.backoff.max, Duration::from_secs(10));
        assert_eq!(s.chunk_size, 100);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn unknown_keys_and_bad_relations_are_refused() {
        assert!(serde_yaml::from_str::<SyncSettings>("batchWindo: 1s").is_err());
        assert!(serde_yaml::from_str::<SyncSettings>("batchWindow: 1y").is_err());
        let s: SyncSettings =
            serde_yaml::from_str("dailySync: {min: 25h, max: 23h}").expect("parses");
        assert_eq!(s.validate().map_err(|e| e.field), Err("dailySync"));
    }
}
