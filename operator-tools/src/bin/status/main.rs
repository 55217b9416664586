//! `status`: the pipeline on one screen: lag per partition (Kafka and Postgres views), the last
//! batch, rows today, rejected rows by reason, logs found restarted or with gaps, and whether each
//! component is ready. Exits 0 when everything is ready, 2 when a component is down or not ready
//! (a partition stuck, the database unreachable), 1 when it cannot tell (no database).

mod print;

use clap::Parser;
use operator_tools::retention::Retention;
use pipeline_store::checkpoints::{self, GroupCheckpoint};
use pipeline_store::log_events::{self, LogEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::time::Duration;

/// Prints the pipeline's state on one screen.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The Kafka flags every component shares (one parser for KAFKA_OPTIONS and --kafka-config).
    #[command(flatten)]
    kafka: pipeline_kafka::KafkaArgs,
    /// Consumer group.
    #[arg(long, env = "KAFKA_GROUP", default_value = "ecommerce-pg")]
    group: String,
    #[command(flatten)]
    database: operator_tools::DatabaseArgs,
    /// The bridge's metrics endpoint, to tell whether it is alive.
    #[arg(
        long,
        env = "BRIDGE_METRICS_URL",
        default_value = "http://127.0.0.1:9100/metrics"
    )]
    bridge_metrics_url: String,
    /// A consumer's metrics endpoint, to tell whether it is alive.
    #[arg(
        long,
        env = "CONSUMER_METRICS_URL",
        default_value = "http://127.0.0.1:9101/metrics"
    )]
    consumer_metrics_url: String,
    /// Print as text or as one JSON document.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// A file whose rows are not all accounted for this long after its first row arrived is
    /// overdue: reported, and status exits 2.
    #[arg(long, env = "UNRECONCILED_AFTER", default_value = "15m", value_parser = process::duration::parse_duration)]
    unreconciled_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

/// One component as `/readyz` describes it.
struct Component {
    name: &'static str,
    url: String,
    /// `None` when it did not answer at all.
    ready: Option<Result<(), String>>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match report(&args).await {
        Ok(healthy) => std::process::exit(if healthy { 0 } else { 2 }),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1)
        }
    }
}

/// What `status` found.
struct Report {
    kafka_error: Option<String>,
    partitions: Vec<PartitionLag>,
    last_batch: Option<chrono::DateTime<chrono::Utc>>,
    rows_today: i64,
    rows_total: i64,
    rejected: Vec<(String, i64)>,
    /// Per reason: quarantined rows not resolved, and resolved by a fixed row.
    resolution: Vec<Resolution>,
    unreconciled: Vec<Unreconciled>,
    conflicting: Conflicting,
    log_events: Vec<LogEvent>,
    components: Vec<Component>,
    /// The bridge's input folder: files waiting to be complete and names ignored, from its
    /// metrics; `None` when it did not answer.
    input_folder: Option<InputFolder>,
    /// None before any retention was set.
    retention: Option<Retention>,
}

impl Report {
    /// Everything ready: the broker answered and every component is ready.
    fn healthy(&self) -> bool {
        self.kafka_error.is_none()
            && !self.unreconciled.iter().any(|file| file.overdue)
            && self
                .components
                .iter()
                .all(|c| matches!(c.ready, Some(Ok(()))))
    }

    fn total_lag(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }
}

/// A partition's offsets in Kafka and PostgreSQL, and how far reading is behind the log's end.
#[derive(serde::Serialize)]
struct PartitionLag {
    partition: i32,
    end_offset: i64,
    committed_offset: Option<i64>,
    checkpoint: Option<i64>,
    lag: i64,
}

/// Quarantined rows of one reason: how many wait for a fix, and how many a fixed row resolved.
#[derive(sqlx::FromRow, serde::Serialize)]
struct Resolution {
    #[serde(rename = "reason")]
    reason_code: String,
    unresolved: i64,
    resolved: i64,
}

/// Duplicates whose values differ from the stored event's: how many, in how many files.
#[derive(Default, sqlx::FromRow, serde::Serialize)]
struct Conflicting {
    rows: i64,
    files: i64,
}

/// A file of the ledger whose rows are not all accounted for yet.
#[derive(sqlx::FromRow, serde::Serialize)]
struct Unreconciled {
    file_name: String,
    content_id: String,
    rows_read: Option<i64>,
    rows_inserted: i64,
    rows_duplicate: i64,
    rows_rejected: i64,
    first_seen_at: chrono::DateTime<chrono::Utc>,
    overdue: bool,
}

/// Prints the report; whether everything is up, ready and moving.
async fn report(args: &Args) -> anyhow::Result<bool> {
    let report = gather(args).await?;
    match args.format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&print::as_json(args, &report))?
        ),
        Format::Text => print::text(args, &report),
    }
    Ok(report.healthy())
}

async fn gather(args: &Args) -> anyhow::Result<Report> {
    let mut db = args.database.connect().await?;
    let checkpoints = checkpoints::of_group(&mut db, &args.group, &args.kafka.topic)
        .await
        .unwrap_or_default();
    let (topic, group, config) = (
        args.kafka.topic.clone(),
        args.group.clone(),
        args.kafka.client_config("status", &[]),
    );
    let offsets =
        tokio::task::spawn_blocking(move || kafka_offsets(config, &topic, &group)).await?;
    let (today, total) = rows_today_and_in_total(&mut db).await;
    let (rejected, resolution) = quarantine(&mut db).await;
    let unreconciled = sqlx::query_as(
        "SELECT file_name, content_id, rows_read, rows_inserted, rows_duplicate, rows_rejected,
                first_seen_at, first_seen_at < now() - make_interval(secs => $1) AS overdue
         FROM ingest_files WHERE reconciled_at IS NULL ORDER BY first_seen_at LIMIT 50",
    )
    .bind(args.unreconciled_after.as_secs_f64())
    .fetch_all(&mut db)
    .await
    .unwrap_or_default();
    let log_events = log_events::latest(&mut db, &args.group, &args.kafka.topic, 10)
        .await
        .unwrap_or_default();
    Ok(Report {
        kafka_error: offsets.as_ref().err().map(|e| format!("{e:#}")),
        partitions: lag_per_partition(offsets.as_deref().unwrap_or_default(), &checkpoints),
        last_batch: checkpoints.iter().filter_map(|c| c.updated_at).max(),
        rows_today: today,
        rows_total: total,
        rejected,
        resolution,
        unreconciled,
        conflicting: conflicting_duplicates(&mut db).await,
        log_events,
        components: components(args).await,
        input_folder: input_folder(&args.bridge_metrics_url).await,
        retention: Retention::read(&mut db).await.unwrap_or_default(),
    })
}

/// From the live aggregates: the same cost at any table size.
async fn rows_today_and_in_total(db: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(events) FILTER (WHERE ingested_day = (now() AT TIME ZONE 'UTC')::date), 0)::bigint,
                coalesce(sum(events), 0)::bigint
         FROM agg_totals",
    )
    .fetch_one(db)
    .await
    .unwrap_or((0, 0))
}

/// The quarantine: rows by reason, and per reason how many are unresolved and resolved.
async fn quarantine(db: &mut sqlx::PgConnection) -> (Vec<(String, i64)>, Vec<Resolution>) {
    let resolution: Vec<Resolution> = sqlx::query_as(
        "SELECT reason_code, sum(rows - resolved)::bigint AS unresolved,
                sum(resolved)::bigint AS resolved
         FROM agg_rejects GROUP BY 1 HAVING sum(rows) <> 0 ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default();
    // Rows per reason, most first: what the resolution counts add up to.
    let mut rejected: Vec<(String, i64)> = resolution
        .iter()
        .map(|r| (r.reason_code.clone(), r.unresolved + r.resolved))
        .collect();
    rejected.sort_by_key(|(_, rows)| std::cmp::Reverse(*rows));
    (rejected, resolution)
}

/// How many duplicates carried other values than their stored event, and in how many files.
async fn conflicting_duplicates(db: &mut sqlx::PgConnection) -> Conflicting {
    sqlx::query_as(
        "SELECT count(*) AS rows, count(DISTINCT source_file_id) AS files FROM ingest_duplicates
         WHERE conflicting_fields IS NOT NULL",
    )
    .fetch_one(db)
    .await
    .unwrap_or_default()
}

/// Per partition: end offset, Kafka's committed offset, PostgreSQL's checkpoint, and the lag.
fn lag_per_partition(
    offsets: &[(i32, i64, Option<i64>)],
    checkpoints: &[GroupCheckpoint],
) -> Vec<PartitionLag> {
    offsets
        .iter()
        .map(|(partition, end, committed)| {
            let checkpoint = checkpoints
                .iter()
                .find(|c| c.kafka_partition == *partition)
                .map(|c| c.next_offset);
            let done = checkpoint.unwrap_or(0).max(committed.unwrap_or(0));
            PartitionLag {
                partition: *partition,
                end_offset: *end,
                committed_offset: *committed,
                checkpoint,
                lag: (end - done).max(0),
            }
        })
        .collect()
}

/// Each component as its `/readyz` answers.
async fn components(args: &Args) -> Vec<Component> {
    let mut components = Vec::new();
    for (name, url) in [
        ("file-bridge", &args.bridge_metrics_url),
        ("consumer", &args.consumer_metrics_url),
    ] {
        let readyz = match url.strip_suffix("/metrics") {
            Some(base) => format!("{base}/readyz"),
            None => url.clone(),
        };
        let ready = match telemetry::http_get(&readyz, Duration::from_secs(2)).await {
            Ok((200, _)) => Some(Ok(())),
            Ok((code, body)) => {
                let why = body.lines().skip(1).collect::<Vec<_>>().join("; ");
                // A wrong URL answers 404 with no reasons: say the answer rather than nothing.
                Some(Err(if why.is_empty() {
                    format!("HTTP {code}")
                } else {
                    why
                }))
            }
            Err(_) => None,
        };
        components.push(Component {
            name,
            url: readyz,
            ready,
        });
    }
    components
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
struct InputFolder {
    files_waiting: i64,
    files_ignored: i64,
}

/// The input folder's figures from the bridge's own metrics.
async fn input_folder(metrics_url: &str) -> Option<InputFolder> {
    let (200, text) = telemetry::http_get(metrics_url, Duration::from_secs(2))
        .await
        .ok()?
    else {
        return None;
    };
    let gauge = |name: &str| {
        text.lines().find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            (metric == name).then(|| value.trim().parse::<i64>().ok())?
        })
    };
    Some(InputFolder {
        files_waiting: gauge("pipeline_bridge_files_waiting")?,
        files_ignored: gauge("pipeline_bridge_files_ignored")?,
    })
}

/// Per partition: the end offset and the group's committed offset.
fn kafka_offsets(
    config: Result<rdkafka::ClientConfig, pipeline_kafka::SetupError>,
    topic: &str,
    group: &str,
) -> anyhow::Result<Vec<(i32, i64, Option<i64>)>> {
    let mut config = config?;
    config.set("group.id", group);
    let client: BaseConsumer = config.create()?;
    let timeout = Duration::from_secs(5);
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for partition in &partitions {
        list.add_partition(topic, *partition);
    }
    let committed = client.committed_offsets(list, timeout)?;
    partitions
        .iter()
        .map(|partition| {
            let (_, end) = client.fetch_watermarks(topic, *partition, timeout)?;
            let committed =
                committed
                    .find_partition(topic, *partition)
                    .and_then(|p| match p.offset() {
                        Offset::Offset(offset) => Some(offset),
                        _ => None,
                    });
            Ok((*partition, end, committed))
        })
        .collect()
}
