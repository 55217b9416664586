use clap::Parser;
use process::duration::parse_duration;
use std::path::PathBuf;
use std::time::Duration;

/// Watches a folder and publishes every row of every complete `*.csv` file to a Kafka topic, keyed
/// by event_id; a file is archived only once every row's delivery is confirmed.
#[derive(Debug, Clone, Parser)]
#[command(version)]
pub struct Config {
    #[command(flatten)]
    pub log: process::LogArgs,
    /// Folder to watch for `*.csv` files.
    #[arg(long, env = "INPUT_DIR", default_value = "data/input")]
    pub input_dir: PathBuf,
    /// This bridge's name among the bridges sharing the input folder: it claims files into
    /// `.claimed/<instance-id>/` (default: the host name). Two running bridges cannot share one.
    #[arg(long, env = "BRIDGE_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Folder published files are moved to.
    #[arg(long, env = "ARCHIVE_DIR", default_value = "data/archive")]
    pub archive_dir: PathBuf,
    #[command(flatten)]
    pub kafka: pipeline_kafka::KafkaArgs,
    /// Publish what is in the folder now, wait for every delivery, archive, and exit.
    #[arg(long, env = "BRIDGE_ONCE")]
    pub once: bool,
    /// How often the folder is rescanned besides file-system events (catches anything missed).
    #[arg(long, env = "BRIDGE_RESCAN_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub rescan_interval: Duration,
    /// A file is taken only once it has not been modified for this long: protects files written
    /// in place rather than renamed into the folder. Writers that rename need no settle time.
    #[arg(long, env = "BRIDGE_SETTLE_TIME", default_value = "200ms", value_parser = parse_duration)]
    pub settle_time: Duration,
    /// How long to wait before retrying a file whose publication failed.
    #[arg(long, env = "BRIDGE_RETRY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub retry_interval: Duration,
    /// On shutdown, how long to wait for outstanding deliveries before giving up (files stay put).
    #[arg(long, env = "BRIDGE_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// A row with more bytes than this is quarantined (`row_too_large`), its first bytes kept;
    /// it also bounds the memory one row can take, whatever the file.
    #[arg(long, env = "BRIDGE_MAX_ROW_BYTES", default_value_t = 256 * 1024)]
    pub max_row_bytes: usize,
    /// A field longer than this quarantines its row (`field_too_large`).
    #[arg(long, env = "BRIDGE_MAX_FIELD_BYTES", default_value_t = 64 * 1024)]
    pub max_field_bytes: usize,
    /// Publish every `*.csv` file of this folder (an archive) again, leaving the files where they
    /// are, then exit: rows already stored are dropped by the consumer, the rest land. Shows
    /// progress (files, rows, rate, time left); the input folder is not watched.
    #[arg(long, env = "BRIDGE_BACKFILL", value_name = "DIR")]
    pub backfill: Option<PathBuf>,
    /// At most this many rows per second during `--backfill` (0: no limit), so the live
    /// pipeline keeps room on the topic and the consumers.
    #[arg(long, env = "BRIDGE_BACKFILL_RATE", default_value_t = 0)]
    pub backfill_rate: u64,
    /// How rows are encoded on the topic: `binary` (version 2, about half the bytes and the
    /// consumer's work) or `json` (version 1). Consumers read both; keep `json` while a consumer
    /// older than version 2 still runs (upgrade consumers first).
    #[arg(long, env = "BRIDGE_WIRE_FORMAT", default_value_t = event_model::WireFormat::Binary)]
    pub wire_format: event_model::WireFormat,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless set), e.g. 127.0.0.1:9100.
    #[arg(long, env = "BRIDGE_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Config {
    /// The row and field caps the reader enforces.
    pub fn limits(&self) -> event_model::Limits {
        event_model::Limits {
            max_row_bytes: self.max_row_bytes,
            max_field_bytes: self.max_field_bytes,
        }
    }

    /// What a publisher needs of these settings.
    pub fn publisher_settings(&self) -> crate::publisher::PublisherSettings {
        crate::publisher::PublisherSettings {
            topic: self.kafka.topic.clone(),
            limits: self.limits(),
            wire_format: self.wire_format,
        }
    }
}
