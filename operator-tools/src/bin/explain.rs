//! `explain EVENT_ID`: where one event came from (file, content identity, line, Kafka partition
//! and offset), when it landed and was written, how many duplicates of it were seen, and any
//! quarantined rows that carry its id.

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

type Lineage = (
    String,
    Option<String>,
    i64,
    Option<i32>,
    Option<i64>,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);

#[tokio::main]
async fn main() {
    let args = Args::parse();
    process::exit(explain(&args).await)
}

/// The rows that carried the id again: how many, the first five (with the fields that differed
/// from the stored event, if any).
fn duplicates_line(duplicates: &[(String, i64, Option<Vec<String>>)]) -> String {
    let sources: Vec<String> = duplicates
        .iter()
        .take(5)
        .map(|(file, line, conflicting)| match conflicting {
            Some(fields) => format!("{file} line {line}, other {}", fields.join(", ")),
            None => format!("{file} line {line}"),
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
    let rejects: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT reason_code, source_file, source_line, reason FROM ecommerce_events_rejected
         WHERE event_id = $1 ORDER BY rejected_at",
    )
    .bind(&args.event_id)
    .fetch_all(&mut db)
    .await?;
    let duplicates: Vec<(String, i64, Option<Vec<String>>)> = sqlx::query_as(
        "SELECT source_file, source_line, conflicting_fields FROM ingest_duplicates
         WHERE event_id = $1 ORDER BY seen_at, source_file, source_line",
    )
    .bind(&args.event_id)
    .fetch_all(&mut db)
    .await?;
    let shown = |value: Option<String>| value.unwrap_or_else(|| "unknown".to_owned());
    let known = lineage.is_some() || !rejects.is_empty();
    match lineage {
        Some((file, file_id, line, partition, offset, landed, written)) => {
            println!("event {}", args.event_id);
            println!("  file     {file} line {line} (content {})", shown(file_id));
            println!(
                "  kafka    partition {}, offset {}",
                shown(partition.map(|p| p.to_string())),
                shown(offset.map(|o| o.to_string()))
            );
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
    for (reason, file, line, why) in &rejects {
        println!("  quarantined as {reason}: {file} line {line}: {why}");
    }
    anyhow::ensure!(
        known,
        "no event and no quarantined row carries the id {}",
        args.event_id
    );
    Ok(())
}
