//! `status`: the pipeline on one screen: lag per partition (Kafka and Postgres views), the last
//! batch, rows today, rejected rows by reason, and whether each component answers.

use anyhow::Context;
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sqlx::Connection;
use std::time::Duration;

/// Prints the pipeline's state on one screen.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// Topic.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "ecommerce-events")]
    topic: String,
    /// Consumer group.
    #[arg(long, env = "KAFKA_GROUP", default_value = "ecommerce-pg")]
    group: String,
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    database_url: String,
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
    /// Extra librdkafka option, repeatable.
    #[arg(short = 'X', long = "kafka-option", env = "KAFKA_OPTIONS", hide_env_values = true, value_delimiter = ',', value_parser = pipeline_kafka::parse_option)]
    kafka_options: Vec<(String, String)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "pipeline status at {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "topic {} · group {} · brokers {}",
        args.topic, args.group, args.brokers
    );

    let mut db = sqlx::PgConnection::connect(&args.database_url)
        .await
        .with_context(|| {
            format!(
                "failed to connect to {}",
                consumer::redact_url(&args.database_url)
            )
        })?;
    let checkpoints: Vec<(i32, i64, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT kafka_partition, next_offset, updated_at FROM ingest_checkpoints
         WHERE consumer_group = $1 AND topic = $2 ORDER BY 1",
    )
    .bind(&args.group)
    .bind(&args.topic)
    .fetch_all(&mut db)
    .await
    .unwrap_or_default();

    let (topic, group, brokers, options) = (
        args.topic.clone(),
        args.group.clone(),
        args.brokers.clone(),
        args.kafka_options.clone(),
    );
    let offsets =
        tokio::task::spawn_blocking(move || kafka_offsets(&brokers, &topic, &group, &options))
            .await?;
    println!("\n  partition  end offset  committed (kafka)  checkpoint (postgres)  lag");
    match offsets {
        Ok(partitions) => {
            let mut total = 0;
            for (partition, end, committed) in partitions {
                let checkpoint = checkpoints.iter().find(|c| c.0 == partition).map(|c| c.1);
                let done = checkpoint.unwrap_or(0).max(committed.unwrap_or(0));
                let lag = (end - done).max(0);
                total += lag;
                println!(
                    "  {partition:<9}  {end:<10}  {:<17}  {:<21}  {lag}",
                    committed.map_or("-".into(), |c| c.to_string()),
                    checkpoint.map_or("-".into(), |c| c.to_string())
                );
            }
            println!("  total lag: {total}");
        }
        Err(error) => println!("  kafka unavailable: {error}"),
    }

    let last_batch = checkpoints.iter().filter_map(|c| c.2).max();
    match last_batch {
        Some(at) => println!(
            "\nlast batch: {} ({} s ago)",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            (chrono::Utc::now() - at).num_seconds()
        ),
        None => println!("\nlast batch: none yet"),
    }
    let (today, total): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE ingested_at >= date_trunc('day', now())), count(*) FROM ecommerce_events",
    )
    .fetch_one(&mut db)
    .await
    .unwrap_or((0, 0));
    println!("rows today: {today} · rows total: {total}");
    let rejected: Vec<(String, i64)> = sqlx::query_as(
        "SELECT reason_code, sum(rows)::bigint FROM rejected_by_reason GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(&mut db)
    .await
    .unwrap_or_default();
    let rejected: Vec<String> = rejected.iter().map(|(r, n)| format!("{r} {n}")).collect();
    println!(
        "rejected by reason: {}",
        if rejected.is_empty() {
            "none".to_owned()
        } else {
            rejected.join(", ")
        }
    );

    println!("\ncomponents:");
    for (name, url) in [
        ("file-bridge", &args.bridge_metrics_url),
        ("consumer", &args.consumer_metrics_url),
    ] {
        let alive = matches!(
            telemetry::http_get(url, Duration::from_secs(2)).await,
            Ok((200, _))
        );
        println!(
            "  {name:<12} {url:<40} {}",
            if alive { "up" } else { "down" }
        );
    }
    Ok(())
}

/// Per partition: the end offset and the group's committed offset.
fn kafka_offsets(
    brokers: &str,
    topic: &str,
    group: &str,
    options: &[(String, String)],
) -> anyhow::Result<Vec<(i32, i64, Option<i64>)>> {
    let mut config = pipeline_kafka::client_config(brokers, &[], options);
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
