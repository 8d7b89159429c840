//! Per-relay health: exponential backoff, the Dead state, rate-limit cooldown and the
//! stability period, plus the classification of relay messages that drive them.

use super::settings::Backoff;
use super::time::Millis;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Coarse health of a relay, as shown in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HealthState {
    /// No recent failures.
    #[default]
    Healthy,
    /// Failing, retried under backoff.
    Degraded,
    /// Failing for longer than `deadAfter`; retried once per `deadRetry`.
    Dead,
}

/// `base × 2^(failures−1)`, capped at `max`; zero before the first failure.
pub fn backoff_delay(failures: u32, backoff: &Backoff) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let shift = (failures - 1).min(32);
    let factor = 1u64 << shift;
    let ms = super::time::duration_ms(backoff.base).saturating_mul(factor);
    Duration::from_millis(ms).min(backoff.max)
}

/// Health bookkeeping for one relay. All methods take the current time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayHealth {
    /// Consecutive failures not yet cleared by a stable connection.
    pub failures: u32,
    /// Start of the current run of failures.
    pub first_failure_at: Option<Millis>,
    /// No connection attempt before this.
    pub next_retry: Option<Millis>,
    /// No new subscriptions before this (rate limited).
    pub cooldown_until: Option<Millis>,
    /// When the current connection came up.
    pub connected_since: Option<Millis>,
    /// The coarse state.
    pub state: HealthState,
}

impl RelayHealth {
    /// A connect attempt, an EOSE timeout or an abnormal close failed.
    pub fn record_failure(&mut self, now: Millis, backoff: &Backoff) {
        self.failures = self.failures.saturating_add(1);
        let first = *self.first_failure_at.get_or_insert(now);
        if now.since(first) >= backoff.dead_after {
            self.state = HealthState::Dead;
            self.next_retry = Some(now + backoff.dead_retry);
        } else {
            self.state = HealthState::Degraded;
            self.next_retry = Some(now + backoff_delay(self.failures, backoff));
        }
    }

    /// The connection came up. Failures are kept until it has been stable for a while, so a
    /// flapping relay keeps backing off instead of being hammered.
    pub fn record_connected(&mut self, now: Millis) {
        self.connected_since = Some(now);
        self.next_retry = None;
    }

    /// The connection went down.
    pub fn record_disconnected(&mut self) {
        self.connected_since = None;
    }

    /// A rate-limit NOTICE or CLOSED arrived: pause new work for `cooldown`.
    pub fn record_rate_limit(&mut self, now: Millis, cooldown: Duration) {
        self.cooldown_until = Some(now + cooldown);
    }

    /// Advances time: ends cooldowns and clears failures after the stability period.
    /// Returns true when the relay just recovered.
    pub fn tick(&mut self, now: Millis, stability: Duration) -> bool {
        if self.cooldown_until.is_some_and(|t| t <= now) {
            self.cooldown_until = None;
        }
        let stable = self
            .connected_since
            .is_some_and(|since| now.since(since) >= stability);
        if stable && self.failures > 0 {
            self.failures = 0;
            self.first_failure_at = None;
            self.state = HealthState::Healthy;
            return true;
        }
        false
    }

    /// Whether a connection attempt is allowed now.
    pub fn may_connect(&self, now: Millis) -> bool {
        self.next_retry.is_none_or(|t| t <= now)
    }

    /// Whether new subscriptions are paused.
    pub fn in_cooldown(&self, now: Millis) -> bool {
        self.cooldown_until.is_some_and(|t| t > now)
    }

    /// The earliest future instant at which `tick` or `may_connect` would change its answer.
    pub fn next_wakeup(&self, now: Millis, stability: Duration) -> Option<Millis> {
        let stable_at = self
            .connected_since
            .filter(|_| self.failures > 0)
            .map(|since| since + stability);
        [self.next_retry, self.cooldown_until, stable_at]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min()
    }
}

/// What a NOTICE or CLOSED text tells us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayMessageClass {
    /// Slow down: cooldown, then retry.
    RateLimited,
    /// The relay refuses more concurrent subscriptions.
    TooManySubscriptions,
    /// The relay does not speak NIP-77.
    NegentropyUnsupported,
    /// The relay wants NIP-42 authentication.
    AuthRequired,
    /// Anything else.
    Other,
}

/// Classifies relay text (NIP-01 machine prefixes and the free text relays use in practice).
pub fn classify_relay_message(text: &str) -> RelayMessageClass {
    let t = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| t.contains(n));
    // Subscription caps are checked before rate limits: both often say "too many".
    if has(&[
        "too many subscriptions",
        "too many concurrent",
        "max subscriptions",
        "maximum subscriptions",
        "max_subscriptions",
        "subscription limit",
        "too many open subscriptions",
        "too many reqs",
        "too many filters",
    ]) {
        return RelayMessageClass::TooManySubscriptions;
    }
    if t.starts_with("rate-limited")
        || has(&[
            "rate limit",
            "ratelimit",
            "rate-limit",
            "too many",
            "slow down",
        ])
    {
        return RelayMessageClass::RateLimited;
    }
    if t.starts_with("auth-required") {
        return RelayMessageClass::AuthRequired;
    }
    if has(&[
        "neg-open",
        "negentropy",
        "could not parse command",
        "unknown message",
        "unknown command",
        "unsupported message",
        "invalid message type",
    ]) {
        return RelayMessageClass::NegentropyUnsupported;
    }
    RelayMessageClass::Other
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::SyncSettings;

    fn backoff() -> Backoff {
        SyncSettings::default().backoff
    }

    #[test]
    fn backoff_doubles_from_five_seconds_and_caps_at_an_hour() {
        let b = backoff();
        let secs: Vec<u64> = (1..=12).map(|n| backoff_delay(n, &b).as_secs()).collect();
        assert_eq!(
            secs,
            [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(backoff_delay(0, &b), Duration::ZERO);
        assert_eq!(backoff_delay(u32::MAX, &b), Duration::from_secs(3600));
    }

    #[test]
    fn continuous_failure_for_a_day_makes_a_relay_dead_with_daily_retry() {
        let b = backoff();
        let mut h = RelayHealth::default();
        let t0 = Millis::from_secs(1_000_000);
        h.record_failure(t0, &b);
        assert_eq!(h.state, HealthState::Degraded);
        assert_eq!(h.next_retry, Some(t0 + Duration::from_secs(5)));
        let later = t0 + Duration::from_secs(24 * 3600);
        h.record_failure(later, &b);
        assert_eq!(h.state, HealthState::Dead);
        assert_eq!(h.next_retry, Some(later + Duration::from_secs(24 * 3600)));
        assert!(!h.may_connect(later + Duration::from_secs(3600)));
    }

    #[test]
    fn failures_clear_only_after_the_stability_period() {
        let b = backoff();
        let stability = Duration::from_secs(300);
        let mut h = RelayHealth::default();
        let t0 = Millis::from_secs(100);
        h.record_failure(t0, &b);
        h.record_failure(t0, &b);
        h.record_connected(t0 + Duration::from_secs(10));
        assert!(!h.tick(t0 + Duration::from_secs(200), stability));
        assert_eq!(h.failures, 2);
        // Flapping: a disconnect before the period keeps the count, so the next delay grows.
        h.record_disconnected();
        h.record_failure(t0 + Duration::from_secs(250), &b);
        assert_eq!(h.failures, 3);
        h.record_connected(t0 + Duration::from_secs(300));
        assert_eq!(
            h.next_wakeup(t0 + Duration::from_secs(300), stability),
            Some(t0 + Duration::from_secs(600))
        );
        assert!(h.tick(t0 + Duration::from_secs(600), stability));
        assert_eq!((h.failures, h.state), (0, HealthState::Healthy));
    }

    #[test]
    fn cooldown_pauses_then_ends() {
        let mut h = RelayHealth::default();
        let t0 = Millis::from_secs(10);
        h.record_rate_limit(t0, Duration::from_secs(65));
        assert!(h.in_cooldown(t0 + Duration::from_secs(64)));
        h.tick(t0 + Duration::from_secs(65), Duration::from_secs(300));
        assert!(!h.in_cooldown(t0 + Duration::from_secs(65)));
    }

    #[test]
    fn classifies_relay_texts() {
        use RelayMessageClass::*;
        assert_eq!(
            classify_relay_message("rate-limited: slow down"),
            RateLimited
        );
        assert_eq!(
            classify_relay_message("You are being rate limited"),
            RateLimited
        );
        assert_eq!(classify_relay_message("too many requests"), RateLimited);
        assert_eq!(
            classify_relay_message("error: too many subscriptions"),
            TooManySubscriptions
        );
        assert_eq!(
            classify_relay_message("Maximum subscriptions (32) reached"),
            TooManySubscriptions
        );
        assert_eq!(
            classify_relay_message("could not parse command"),
            NegentropyUnsupported
        );
        assert_eq!(
            classify_relay_message("auth-required: sign in"),
            AuthRequired
        );
        assert_eq!(classify_relay_message("hello"), Other);
    }
}
