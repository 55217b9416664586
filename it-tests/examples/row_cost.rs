//! Our own work per row, without a broker or a database: the bridge's reading and encoding, and
//! the consumer's decoding, classification and `COPY` encoding, in both wire formats. What a
//! profile of this loop shows is ours alone (`perf record -g` on it), where the bench's CPU per
//! row also holds librdkafka, sqlx and the runtime.
//!
//! `cargo run --release -p it-tests --example row_cost -- DIR` over a folder of generated files,
//! e.g. `generator --output-dir DIR --interval 0s --files 20 --events-per-file 10000 --seed 1`.

use consumer::batch::{classify, Incoming, Rules};
use consumer::partition::PartitionState;
use consumer::LatePolicy;
use event_model::{RowReader, WireFormat};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

const PARTITIONS: i32 = 6;
const BATCH: usize = 10_000;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: row_cost DIR (a folder of generated CSV files)"))?;
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let bodies: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    // Twice each, alternating, so a warm-up or a noisy moment does not decide the comparison.
    for format in [WireFormat::Json, WireFormat::Binary].repeat(2) {
        let started = Instant::now();
        let messages = publish(&bodies, format)?;
        let bridge = started.elapsed();
        let started = Instant::now();
        consume(&messages);
        let consumer = started.elapsed();
        let per_row = |d: std::time::Duration| d.as_secs_f64() * 1e6 / messages.len() as f64;
        println!(
            "{format:>6}: {} rows; bridge read + encode {:.2} µs/row; consumer decode + classify + COPY encode {:.2} µs/row",
            messages.len(),
            per_row(bridge),
            per_row(consumer)
        );
    }
    Ok(())
}

/// Every row of every file as the bridge would send it, spread over the partitions.
fn publish(bodies: &[Vec<u8>], format: WireFormat) -> anyhow::Result<Vec<Incoming>> {
    let mut messages = Vec::new();
    for (n, body) in bodies.iter().enumerate() {
        let mut reader = RowReader::new(&body[..], &format!("f{n}.csv"), &format!("{n:032x}"), 1);
        while let Some(view) = reader.next_view()? {
            let offset = messages.len() as i64;
            messages.push(Incoming {
                partition: (offset % i64::from(PARTITIONS)) as i32,
                offset,
                key: Some(view.key.as_bytes().to_vec().into()),
                payload: Some(view.row.encode(format).into()),
                fixes: None,
            });
        }
    }
    Ok(messages)
}

/// The consumer's work on `messages` in batches, up to the bytes it would send to PostgreSQL.
fn consume(messages: &[Incoming]) {
    let rules = Rules {
        lateness: chrono::TimeDelta::minutes(10),
        late_policy: LatePolicy::Accept,
        max_future: chrono::TimeDelta::minutes(15),
    };
    let mut states: HashMap<i32, PartitionState> = (0..PARTITIONS)
        .map(|p| (p, PartitionState::new(None, None, 200_000)))
        .collect();
    for chunk in messages.chunks(BATCH) {
        let batch = classify(chunk, &mut states, &rules, chrono::Utc::now());
        std::hint::black_box(consumer::sink::events::encode_events(
            &batch.events,
            &HashSet::new(),
        ));
    }
}
