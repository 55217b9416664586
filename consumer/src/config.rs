use clap::{Parser, ValueEnum};
use process::duration::parse_duration;
use std::time::Duration;

/// Consumes the event topic in a consumer group, validates and deduplicates each row, and writes
/// events to PostgreSQL in batches; Kafka offsets are committed only after the rows are.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config {
    #[command(flatten)]
    pub log: process::LogArgs,
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
    /// How far ahead of its file's landing time (carried in every message, so any consumer with
    /// any clock judges alike) an event_time may be. An event further ahead is quarantined with
    /// reason `future` and never moves the watermark.
    #[arg(long, env = "MAX_FUTURE", default_value = "15m", value_parser = parse_duration)]
    pub max_future: Duration,
    /// A partition that cannot move forward for this long (its batch refused, the database
    /// unreachable) is reported: an error log, `pipeline_consumer_stuck_partitions`, readiness.
    #[arg(long, env = "STUCK_AFTER", default_value = "60s", value_parser = parse_duration)]
    pub stuck_after: Duration,
    /// What to do with a late event: write it (flagged is_late) or quarantine it with reason `late`.
    #[arg(long, env = "LATE_POLICY", value_enum, default_value_t = LatePolicy::Accept)]
    pub late_policy: LatePolicy,
    /// Rows per Postgres transaction at most.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 10_000)]
    pub batch_size: usize,
    /// PostgreSQL connections writing at once. A batch's partitions are shared among them, each
    /// partition whole and in order, each share its own transaction: PostgreSQL works on one core
    /// per connection. One keeps a consumer to a single connection.
    #[arg(long, env = "WRITERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub writers: u16,
    /// How long a batch may wait to fill before it is written anyway.
    #[arg(long, env = "BATCH_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub batch_timeout: Duration,
    /// Recent event_ids remembered to keep duplicates out of the fast `COPY` (older duplicates
    /// are caught by the primary key, at the cost of a slower batch): one budget shared by the
    /// partitions this consumer holds, divided again on every rebalance, so memory does not grow
    /// with the partitions it takes over. Memory only suggests: a remembered id counts as a
    /// duplicate once the database confirms it holds it, else the row is stored (tables emptied
    /// for a backfill, events deleted). About 16 bytes each (a fingerprint and a time).
    #[arg(long, env = "DEDUP_CAPACITY", default_value_t = 150_000)]
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

impl Config {
    /// What this process does, by its flags.
    pub fn mode(&self) -> crate::Mode {
        if self.migrate_only {
            crate::Mode::MigrateOnly
        } else if self.dashboard_only {
            crate::Mode::DashboardOnly
        } else {
            crate::Mode::Consume
        }
    }

    /// How this consumer names itself to Kafka (`client.id`) and PostgreSQL (`application_name`).
    pub fn component_name(&self) -> String {
        match &self.instance_id {
            Some(instance) => format!("consumer-{instance}"),
            None => "consumer".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LatePolicy {
    Accept,
    Quarantine,
}

pub use process::redact_url;
