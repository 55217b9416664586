use clap::{Parser, ValueEnum};
use event_model::duration::parse_duration;
use std::time::Duration;

/// Consumes the event topic in a consumer group, validates and deduplicates each row, and writes
/// events to PostgreSQL in batches; Kafka offsets are committed only after the rows are.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config {
    #[command(flatten)]
    pub kafka: pipeline_kafka::KafkaArgs,
    /// Consumer group; a new group starts from the earliest offset.
    #[arg(long, env = "KAFKA_GROUP", default_value = "ecommerce-pg")]
    pub group: String,
    /// Static group membership (KIP-345): a consumer restarted with the same id takes its partitions
    /// back at once instead of waiting for the session timeout. Give each replica its own.
    #[arg(long, env = "KAFKA_GROUP_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// PostgreSQL URL; its password never reaches the logs.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    pub database_url: String,
    /// How far behind a partition's newest event_time an event may be before it is late.
    #[arg(long, env = "ALLOWED_LATENESS", default_value = "10m", value_parser = parse_duration)]
    pub allowed_lateness: Duration,
    /// What to do with a late event: write it (flagged is_late) or quarantine it with reason `late`.
    #[arg(long, env = "LATE_POLICY", value_enum, default_value_t = LatePolicy::Accept)]
    pub late_policy: LatePolicy,
    /// Rows per Postgres transaction at most.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 10_000)]
    pub batch_size: usize,
    /// How long a batch may wait to fill before it is written anyway.
    #[arg(long, env = "BATCH_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub batch_timeout: Duration,
    /// Recent event_ids remembered per partition to drop duplicates before the database.
    #[arg(long, env = "DEDUP_CAPACITY", default_value_t = 200_000)]
    pub dedup_capacity: usize,
    /// Skip applying the migrations (when a separate owner role runs them).
    #[arg(long, env = "SKIP_MIGRATIONS", conflicts_with = "migrate_only")]
    pub skip_migrations: bool,
    /// Apply the migrations and exit (run it with the owner role; consume with a writer role).
    #[arg(long, env = "MIGRATE_ONLY")]
    pub migrate_only: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless set), e.g. 127.0.0.1:9101.
    #[arg(long, env = "CONSUMER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the live dashboard at http://ADDR/ (off unless set), e.g. 127.0.0.1:8080.
    #[arg(long, env = "DASHBOARD_ADDR")]
    pub dashboard_addr: Option<std::net::SocketAddr>,
    /// Serve the dashboard (and metrics) without consuming: one per deployment, however many
    /// consumers run.
    #[arg(long, env = "DASHBOARD_ONLY", requires = "dashboard_addr")]
    pub dashboard_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LatePolicy {
    Accept,
    Quarantine,
}

/// The URL with its password replaced, fit for a log line.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((credentials, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match credentials.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://writer:s3cr:et@db:5432/events?sslmode=require"),
            "postgres://writer:***@db:5432/events?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
