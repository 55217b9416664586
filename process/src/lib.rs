//! Process plumbing every binary shares: logging, the shutdown signal and exit, one retry
//! backoff, human durations for flags, failpoints for crash tests, and secret redaction. Nothing
//! here knows about events, Kafka or PostgreSQL.

pub mod duration;
pub mod failpoint;
mod lifecycle;
mod secrets;

pub use lifecycle::{
    causes, exit, init_logging, retry, shutdown_token, Attempt, Backoff, LogArgs, LogFormat,
    Stopped,
};
pub use secrets::redact_url;
