//! The consumer's wall clock, read in one place. Classification does not depend on it (`future`
//! is judged against the landing time each row carries, see `batch.rs`), except for rows that
//! carry none. A test shows it by skewing this clock with `PIPELINE_CLOCK_SKEW` (`-3h`, `+3h`),
//! as a host whose NTP is broken would; libfaketime cannot stand in for that host here, since it
//! breaks librdkafka's timed waits (metadata requests time out at once). Unset, it is the system
//! clock.

use chrono::{DateTime, TimeDelta, Utc};
use std::sync::OnceLock;

const SKEW_VARIABLE: &str = "PIPELINE_CLOCK_SKEW";

pub fn now() -> DateTime<Utc> {
    let now = Utc::now();
    now.checked_add_signed(skew()).unwrap_or(now)
}

fn skew() -> TimeDelta {
    static SKEW: OnceLock<TimeDelta> = OnceLock::new();
    *SKEW.get_or_init(|| {
        let Ok(text) = std::env::var(SKEW_VARIABLE) else {
            return TimeDelta::zero();
        };
        let (sign, magnitude) = match text.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, text.trim_start_matches('+')),
        };
        match process::duration::parse_duration(magnitude)
            .ok()
            .and_then(|d| TimeDelta::from_std(d).ok())
        {
            Some(delta) => {
                tracing::warn!(skew = %text, "the consumer's clock is skewed ({SKEW_VARIABLE})");
                delta * sign
            }
            None => {
                tracing::warn!(value = %text, "{SKEW_VARIABLE} is not a duration like -3h; ignored");
                TimeDelta::zero()
            }
        }
    })
}
