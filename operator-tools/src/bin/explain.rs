//! `explain EVENT_ID`: where one event came from (file, content identity, line, Kafka partition
//! and offset), when it landed and was written, how many duplicates of it were seen, and any
//! quarantined rows that carry its id.

use chrono::{DateTime, Utc};
use clap::Parser;
use operator_tools::retention::Retention;

/// Prints the lineage of one event.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The event to explain.
    event_id: String,
    #[command(flatten)]
    database: operator_tools::DatabaseArgs,
}

/// Where the stored event came from, and when it landed and was written.
#[derive(sqlx::FromRow)]
struct Lineage {
    source_file: String,
    source_file_id: Option<String>,
    source_line: i64,
    kafka_partition: Option<i32>,
    kafka_offset: Option<i64>,
    landed_at: DateTime<Utc>,
    ingested_at: DateTime<Utc>,
}

/// A quarantined row that carries the id.
#[derive(sqlx::FromRow)]
struct Reject {
    reason_code: String,
    source_file: String,
    source_line: i64,
    reason: String,
}

/// A row that carried the id again, with the fields that differed from the stored event's.
#[derive(sqlx::FromRow)]
struct Duplicate {
    source_file: String,
    source_line: i64,
    conflicting_fields: Option<Vec<String>>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    process::exit(explain(&args).await)
}

/// The rows that carried the id again: how many, the first five (with the fields that differed
/// from the stored event, if any).
fn duplicates_line(duplicates: &[Duplicate]) -> String {
    let sources: Vec<String> = duplicates
        .iter()
        .take(5)
        .map(|d| {
            let (file, line) = (&d.source_file, d.source_line);
            match &d.conflicting_fields {
                Some(fields) => format!("{file} line {line}, other {}", fields.join(", ")),
                None => format!("{file} line {line}"),
            }
        })
        .collect();
    let more = duplicates.len().saturating_sub(sources.len());
    format!(
        "duplicates {} seen{}{}",
        duplicates.len(),
        if sources.is_empty() {
            String::new()
        } else {
            format!(" ({})", sources.join(", "))
        },
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

async fn explain(args: &Args) -> anyhow::Result<()> {
    let mut db = args.database.connect().await?;
    let lineage: Option<Lineage> = sqlx::query_as(
        "SELECT source_file, source_file_id, source_line, kafka_partition, kafka_offset,
                landed_at, ingested_at
         FROM ecommerce_events WHERE event_key = event_key_of($1) AND event_id = $1",
    )
    .bind(&args.event_id)
    .fetch_optional(&mut db)
    .await?;
    let rejects: Vec<Reject> = sqlx::query_as(
        "SELECT reason_code, source_file, source_line, reason FROM ecommerce_events_rejected
         WHERE event_id = $1 ORDER BY rejected_at",
    )
    .bind(&args.event_id)
    .fetch_all(&mut db)
    .await?;
    let duplicates: Vec<Duplicate> = sqlx::query_as(
        "SELECT source_file, source_line, conflicting_fields FROM ingest_duplicates
         WHERE event_id = $1 ORDER BY seen_at, source_file, source_line",
    )
    .bind(&args.event_id)
    .fetch_all(&mut db)
    .await?;
    let shown = |value: Option<String>| value.unwrap_or_else(|| "unknown".to_owned());
    let known = lineage.is_some() || !rejects.is_empty();
    match lineage {
        Some(lineage) => {
            println!("event {}", args.event_id);
            println!(
                "  file     {} line {} (content {})",
                lineage.source_file,
                lineage.source_line,
                shown(lineage.source_file_id)
            );
            println!(
                "  kafka    partition {}, offset {}",
                shown(lineage.kafka_partition.map(|p| p.to_string())),
                shown(lineage.kafka_offset.map(|o| o.to_string()))
            );
            let (landed, written) = (lineage.landed_at, lineage.ingested_at);
            println!(
                "  landed   {landed}; written {written} ({} ms later)",
                (written - landed).num_milliseconds()
            );
        }
        None => {
            println!("event {} is not in ecommerce_events", args.event_id);
            if let Some(retention) = Retention::read(&mut db).await? {
                println!(
                    "  retention dropped the events dated before {} (set {}): one of them is not kept",
                    retention.horizon, retention.set_at
                );
            }
        }
    }
    println!("  {}", duplicates_line(&duplicates));
    for r in &rejects {
        println!(
            "  quarantined as {}: {} line {}: {}",
            r.reason_code, r.source_file, r.source_line, r.reason
        );
    }
    anyhow::ensure!(
        known,
        "no event and no quarantined row carries the id {}",
        args.event_id
    );
    Ok(())
}
