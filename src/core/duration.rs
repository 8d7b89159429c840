//! Human durations ("200ms", "5s", "15m", "23h", "1d") for settings files, with serde helpers.

use std::time::Duration;
use thiserror::Error;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DurationError {
    /// The text is empty or has no number.
    #[error("duration {0:?} has no number; write e.g. \"200ms\", \"5s\", \"15m\", \"23h\"")]
    NoNumber(String),
    /// The unit is not one of ms, s, m, h, d.
    #[error("duration {0:?} has an unknown unit; use ms, s, m, h or d")]
    BadUnit(String),
    /// The value does not fit.
    #[error("duration {0:?} is too large")]
    Overflow(String),
}

/// Parses "200ms", "5s", "15m", "23h", "1d", or a compound such as "1h30m".
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::NoNumber(text.to_string()));
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError::NoNumber(text.to_string()));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::Overflow(text.to_string()))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(DurationError::BadUnit(text.to_string())),
        };
        rest = &rest[unit_len..];
        total_ms = value
            .checked_mul(unit_ms)
            .and_then(|v| total_ms.checked_add(v))
            .ok_or_else(|| DurationError::Overflow(text.to_string()))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration in the largest unit that divides it exactly ("65s", "15m", "200ms").
pub fn format_duration(d: Duration) -> String {
    let ms = super::time::duration_ms(d);
    for (unit, size) in [
        ("d", 86_400_000u64),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size && ms % size == 0 {
            return format!("{}{}", ms / size, unit);
        }
    }
    format!("{ms}ms")
}

/// Serde adapter for `Duration` fields written as human durations.
pub mod serde_duration {
    use super::{format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes the duration as text.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads the duration from text.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("23h"), Ok(Duration::from_secs(23 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn refuses_bad_text_with_a_reason() {
        assert!(matches!(
            parse_duration(""),
            Err(DurationError::NoNumber(_))
        ));
        assert!(matches!(
            parse_duration("5"),
            Err(DurationError::BadUnit(_))
        ));
        assert!(matches!(
            parse_duration("5y"),
            Err(DurationError::BadUnit(_))
        ));
        assert!(matches!(
            parse_duration("ms"),
            Err(DurationError::NoNumber(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow(_))
        ));
    }

    #[test]
    fn format_round_trips() {
        for text in ["200ms", "5s", "65s", "15m", "23h", "1d"] {
            let d = parse_duration(text).expect("valid");
            assert_eq!(format_duration(d), text);
        }
    }
}
