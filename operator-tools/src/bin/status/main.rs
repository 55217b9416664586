//! `status`: the pipeline on one screen: lag per partition (Kafka and Postgres views), the last
//! batch, rows today, rejected rows by reason, logs found restarted or with gaps, and whether each
//! component is ready. Exits 0 when everything is ready, 2 when a component is down or not ready
//! (a partition stuck, the database unreachable), 1 when it cannot tell (no database).

use clap::Parser;
use operator_tools::retention::Retention;
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
    partitions: Vec<serde_json::Value>,
    last_batch: Option<chrono::DateTime<chrono::Utc>>,
    rows_today: i64,
    rows_total: i64,
    rejected: Vec<(String, i64)>,
    /// Per reason: quarantined rows not resolved, and resolved by a fixed row.
    resolution: Vec<(String, i64, i64)>,
    unreconciled: Vec<Unreconciled>,
    /// Duplicates whose values differ from the stored event's: how many, in how many files.
    conflicting: (i64, i64),
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
        self.partitions
            .iter()
            .filter_map(|p| p["lag"].as_i64())
            .sum()
    }
}

/// Where the group's checkpoint of a partition stands in PostgreSQL.
#[derive(sqlx::FromRow)]
struct StoredCheckpoint {
    kafka_partition: i32,
    next_offset: i64,
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A finding about a partition's log (`ingest_log_events`): a gap, a rewind, a restart.
#[derive(sqlx::FromRow, serde::Serialize)]
struct LogEvent {
    #[serde(rename = "partition")]
    kafka_partition: i32,
    kind: String,
    from_offset: i64,
    to_offset: i64,
    detail: String,
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
        Format::Json => println!("{}", serde_json::to_string_pretty(&as_json(args, &report))?),
        Format::Text => print_text(args, &report),
    }
    Ok(report.healthy())
}

async fn gather(args: &Args) -> anyhow::Result<Report> {
    let mut db = args.database.connect().await?;
    let checkpoints: Vec<StoredCheckpoint> = sqlx::query_as(
        "SELECT kafka_partition, next_offset, updated_at FROM ingest_checkpoints
         WHERE consumer_group = $1 AND topic = $2 ORDER BY 1",
    )
    .bind(&args.group)
    .bind(&args.kafka.topic)
    .fetch_all(&mut db)
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
    let log_events = sqlx::query_as(
        "SELECT kafka_partition, kind, from_offset, to_offset, detail FROM ingest_log_events
         WHERE consumer_group = $1 AND topic = $2 ORDER BY detected_at DESC LIMIT 10",
    )
    .bind(&args.group)
    .bind(&args.kafka.topic)
    .fetch_all(&mut db)
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
async fn quarantine(db: &mut sqlx::PgConnection) -> (Vec<(String, i64)>, Vec<(String, i64, i64)>) {
    let resolution: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT reason_code, sum(rows - resolved)::bigint, sum(resolved)::bigint
         FROM agg_rejects GROUP BY 1 HAVING sum(rows) <> 0 ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap_or_default();
    // Rows per reason, most first: what the resolution counts add up to.
    let mut rejected: Vec<(String, i64)> = resolution
        .iter()
        .map(|(reason, open, resolved)| (reason.clone(), open + resolved))
        .collect();
    rejected.sort_by_key(|(_, rows)| std::cmp::Reverse(*rows));
    (rejected, resolution)
}

/// How many duplicates carried other values than their stored event, and in how many files.
async fn conflicting_duplicates(db: &mut sqlx::PgConnection) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT source_file_id) FROM ingest_duplicates
         WHERE conflicting_fields IS NOT NULL",
    )
    .fetch_one(db)
    .await
    .unwrap_or((0, 0))
}

/// Per partition: end offset, Kafka's committed offset, PostgreSQL's checkpoint, and the lag.
fn lag_per_partition(
    offsets: &[(i32, i64, Option<i64>)],
    checkpoints: &[StoredCheckpoint],
) -> Vec<serde_json::Value> {
    offsets
        .iter()
        .map(|(partition, end, committed)| {
            let checkpoint = checkpoints
                .iter()
                .find(|c| c.kafka_partition == *partition)
                .map(|c| c.next_offset);
            let done = checkpoint.unwrap_or(0).max(committed.unwrap_or(0));
            serde_json::json!({
                "partition": partition,
                "end_offset": end,
                "committed_offset": committed,
                "checkpoint": checkpoint,
                "lag": (end - done).max(0),
            })
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

fn as_json(args: &Args, report: &Report) -> serde_json::Value {
    serde_json::json!({
        "at": chrono::Utc::now().to_rfc3339(),
        "topic": args.kafka.topic,
        "group": args.group,
        "healthy": report.healthy(),
        "kafka_error": report.kafka_error,
        "partitions": report.partitions,
        "total_lag": report.total_lag(),
        "last_batch_at": report.last_batch.map(|at| at.to_rfc3339()),
        "rows_today": report.rows_today,
        "rows_total": report.rows_total,
        "rejected_by_reason": report.rejected.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "quarantine": report.resolution.iter().map(|(reason, open, resolved)| serde_json::json!({
            "reason": reason, "unresolved": open, "resolved": resolved,
        })).collect::<Vec<_>>(),
        "unreconciled_files": report.unreconciled,
        "conflicting_duplicates": { "rows": report.conflicting.0, "files": report.conflicting.1 },
        "log_events": report.log_events,
        "input_folder": report.input_folder,
        "retention": report.retention,
        "components": report.components.iter().map(|c| serde_json::json!({
            "name": c.name,
            "url": c.url,
            "state": match &c.ready { None => "down", Some(Ok(())) => "ready", Some(Err(_)) => "not ready" },
            "why": c.ready.as_ref().and_then(|r| r.as_ref().err()),
        })).collect::<Vec<_>>(),
    })
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

/// One screen, printed top to bottom.
fn print_text(args: &Args, report: &Report) {
    println!(
        "pipeline status at {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "topic {} · group {} · brokers {}",
        args.kafka.topic, args.group, args.kafka.brokers
    );
    print_partitions(report);
    print_rows(report);
    print_files(report);
    for event in &report.log_events {
        println!(
            "log {} on partition {} ({} -> {}): {}",
            event.kind, event.kafka_partition, event.from_offset, event.to_offset, event.detail
        );
    }
    if let Some(folder) = report.input_folder {
        println!(
            "input folder: {} file(s) waiting to be complete, {} name(s) ignored (the bridge's log says which and why)",
            folder.files_waiting, folder.files_ignored
        );
    }
    println!("\ncomponents:");
    for component in &report.components {
        let state = match &component.ready {
            None => "down".to_owned(),
            Some(Ok(())) => "ready".to_owned(),
            Some(Err(why)) => format!("not ready: {why}"),
        };
        println!("  {:<12} {:<40} {state}", component.name, component.url);
    }
}

/// Each partition's offsets (the log's end, Kafka's commit, PostgreSQL's checkpoint) and lag.
fn print_partitions(report: &Report) {
    println!("\n  partition  end offset  committed (kafka)  checkpoint (postgres)  lag");
    let Some(error) = &report.kafka_error else {
        let show =
            |value: &serde_json::Value| value.as_i64().map_or("-".to_owned(), |v| v.to_string());
        for p in &report.partitions {
            println!(
                "  {:<9}  {:<10}  {:<17}  {:<21}  {}",
                show(&p["partition"]),
                show(&p["end_offset"]),
                show(&p["committed_offset"]),
                show(&p["checkpoint"]),
                show(&p["lag"])
            );
        }
        println!("  total lag: {}", report.total_lag());
        return;
    };
    println!("  kafka unavailable: {error}");
}

/// The last batch, the rows stored, the quarantine by reason and the conflicting duplicates.
fn print_rows(report: &Report) {
    match report.last_batch {
        Some(at) => println!(
            "\nlast batch: {} ({} s ago)",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            (chrono::Utc::now() - at).num_seconds()
        ),
        None => println!("\nlast batch: none yet"),
    }
    println!(
        "rows today: {} · rows total: {}",
        report.rows_today, report.rows_total
    );
    let rejected: Vec<String> = report
        .rejected
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    println!(
        "rejected by reason: {}",
        if rejected.is_empty() {
            "none".to_owned()
        } else {
            rejected.join(", ")
        }
    );
    for (reason, open, resolved) in &report.resolution {
        println!("  {reason}: {open} unresolved, {resolved} resolved");
    }
    if let Some(retention) = &report.retention {
        let state = match retention.completed_at {
            Some(_) => "dropped",
            None => "still dropping",
        };
        println!(
            "retention: events dated before {} {state} (set {}); arrivals dated before it are quarantined `expired`",
            retention.horizon.format("%Y-%m-%d %H:%M:%S UTC"),
            retention.set_at.format("%Y-%m-%d %H:%M:%S UTC"),
        );
    }
    if report.conflicting.0 > 0 {
        println!(
            "duplicates with other values than the stored event: {} in {} file(s) (explain EVENT_ID shows the fields)",
            report.conflicting.0, report.conflicting.1
        );
    }
}

/// The files of the ledger not reconciled yet.
fn print_files(report: &Report) {
    match report.unreconciled.len() {
        0 => println!("files: every file reconciled"),
        n => println!("files not reconciled yet: {n}"),
    }
    for file in &report.unreconciled {
        let read = file
            .rows_read
            .map_or("? (end not arrived)".to_owned(), |n| n.to_string());
        println!(
            "  {}{} ({}): read {read}, inserted {}, duplicate {}, rejected {}, since {}",
            if file.overdue { "OVERDUE " } else { "" },
            file.file_name,
            file.content_id,
            file.rows_inserted,
            file.rows_duplicate,
            file.rows_rejected,
            file.first_seen_at.format("%Y-%m-%d %H:%M:%S UTC"),
        );
    }
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
