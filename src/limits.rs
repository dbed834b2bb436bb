//! The limits at the edge, so that one caller's flood or oversized input cannot starve
//! the others: the largest request accepted, the longest a call may run, and how many
//! calls one connection may have in progress at once.

use std::time::Duration;

/// The `[limits]` section of the configuration.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest request message accepted, in bytes; larger ones are refused with
    /// OUT_OF_RANGE before they are decoded.
    pub max_request_bytes: usize,
    /// Longest a call may run before its answer starts, in seconds (a shorter
    /// `grpc-timeout` from the client wins); past it the call ends with
    /// DEADLINE_EXCEEDED. Watch streams are not cut once they have started. Keep it
    /// above the longest AcquireLease `wait_timeout` callers use (at most 60 s).
    pub call_timeout_secs: u64,
    /// Calls one connection may have in progress; further calls on it wait for one to
    /// finish, while other connections are served. AcquireLease calls waiting for a
    /// slot count: set it well above the waiting acquirers one connection carries, or
    /// their ReleaseLease calls queue behind them until the waits time out.
    pub calls_per_connection: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
            call_timeout_secs: 90,
            calls_per_connection: 1024,
        }
    }
}

impl LimitSettings {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_secs(self.call_timeout_secs)
    }

    /// The first thing wrong with these limits, if any.
    pub fn problem(&self) -> Option<&'static str> {
        if !(1024..=64 * 1024 * 1024).contains(&self.max_request_bytes) {
            Some("max_request_bytes must be between 1024 and 67108864")
        } else if !(1..=3600).contains(&self.call_timeout_secs) {
            Some("call_timeout_secs must be between 1 and 3600")
        } else if !(1..=10_000).contains(&self.calls_per_connection) {
            Some("calls_per_connection must be between 1 and 10000")
        } else {
            None
        }
    }
}

/// The deadline of one call: the client's `grpc-timeout` when it is shorter than the
/// server's limit, else the limit.
pub fn deadline(grpc_timeout: Option<&http::HeaderValue>, limit: Duration) -> Duration {
    grpc_timeout
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(limit, |asked| asked.min(limit))
}

/// `grpc-timeout` is at most 8 digits and a unit: H, M, S, m (milli), u, n.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "1x", "-1S", "1.5S", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_shorter_deadline_wins() {
        let limit = Duration::from_secs(90);
        let short = http::HeaderValue::from_static("100m");
        let long = http::HeaderValue::from_static("10H");
        assert_eq!(deadline(Some(&short), limit), Duration::from_millis(100));
        assert_eq!(deadline(Some(&long), limit), limit);
        assert_eq!(deadline(None, limit), limit);
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(LimitSettings::default().problem(), None);
        let tiny = LimitSettings {
            max_request_bytes: 10,
            ..LimitSettings::default()
        };
        assert!(tiny.problem().is_some());
        let short = LimitSettings {
            call_timeout_secs: 0,
            ..LimitSettings::default()
        };
        assert!(short.problem().is_some());
        let none = LimitSettings {
            calls_per_connection: 0,
            ..LimitSettings::default()
        };
        assert!(none.problem().is_some());
    }
}
