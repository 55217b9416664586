use clap::{Parser, ValueEnum};
use event_model::duration::parse_duration;
use std::time::Duration;

/// Consumes the event topic in a consumer group, validates and deduplicates each row, and writes
/// events to PostgreSQL in batches; Kafka offsets are committed only after the rows are.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config {
    #[command(flatten)]
    pub log: telemetry::LogArgs,
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
    /// How far ahead of this consumer's clock an event_time may be. An event further ahead is
    /// quarantined with reason `future` and never moves the watermark.
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

impl Config {
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

/// The URL with every password form replaced, fit for a log line: `user:pass@`, a query
/// parameter whose name holds `password` (`?password=`, `sslpassword=`), and libpq's key=value
/// form (`host=db password=...`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_key_values(url);
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let parameters: Vec<String> = query
                .split('&')
                .map(|parameter| match parameter.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
                    _ => parameter.to_owned(),
                })
                .collect();
            format!("{path}?{}", parameters.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret")
}

/// `host=db password='a b' user=x` with the password's value, quoted or not, replaced.
fn redact_key_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        let key = rest[..at]
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or_default();
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        if !is_secret_key(key) {
            continue;
        }
        let end = if let Some(quoted) = rest.strip_prefix('\'') {
            // Up to the closing quote; a backslash escapes the next character.
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((index, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '\'' => {
                        end = index + 1;
                        break;
                    }
                    _ => {}
                }
            }
            1 + end
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        out.push_str("***");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
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
        assert_eq!(
            redact_url("postgres://db/events?user=w&password=s3cret&sslmode=require"),
            "postgres://db/events?user=w&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://u:p@db?sslpassword=k"),
            "postgres://u:***@db?sslpassword=***"
        );
        assert_eq!(
            redact_url("host=db password='a b\\' c' user=x"),
            "host=db password=*** user=x"
        );
        assert_eq!(
            redact_url("host=db password=plain user=x"),
            "host=db password=*** user=x"
        );
    }
}
