//! The Postgres writer alone, against the real PostgreSQL: which path a batch takes, and that every
//! path writes each event once and nothing else.

use consumer::batch::{Checkpoint, EventRow, Source, WriteBatch};
use consumer::sink::{Sink, WritePath};
use event_model::{Event, EventType};
use it_tests::World;

fn row(id: &str, product_id: i32, line: i64) -> EventRow {
    EventRow {
        event: Event {
            event_id: id.to_owned(),
            user_id: 7,
            event_type: EventType::View,
            product_id,
            price_cents: 1999,
            event_time: "2026-11-25T12:00:00.123456Z".parse().unwrap(),
        },
        late: false,
        source: Source {
            file: "a\tfile\\with\nodd name.csv".into(),
            file_id: "id".into(),
            line,
            partition: 0,
            offset: line,
        },
        landed_ms: 1_764_072_000_000,
        fixes: None,
    }
}

/// Batch `index` of partition 0, covering `ids`; each batch moves the checkpoint by 1,000.
fn batch(index: i64, ids: std::ops::Range<i64>, product_id: i32) -> WriteBatch {
    WriteBatch {
        events: ids
            .map(|n| row(&format!("e{n:05}"), product_id, n))
            .collect(),
        checkpoints: vec![Checkpoint {
            partition: 0,
            expected: (index > 0).then_some(index * 1_000),
            next_offset: (index + 1) * 1_000,
            max_event_time: None,
            last_message: String::new(),
        }],
        ..WriteBatch::default()
    }
}

async fn new_sink(world: &World) -> Sink {
    let mut sink = Sink::new(&world.database_url, "group", "topic");
    sink.migrate().await.unwrap();
    sink
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_already_written_switch_to_staging_until_a_batch_meets_none() {
    let world = World::new("sink_paths").await;
    let mut sink = new_sink(&world).await;

    let first = sink.write(&batch(0, 0..100, 1)).await.unwrap();
    assert_eq!((first.path, first.inserted), (WritePath::Copy, 100));

    // Half of these are there already (as after a new group replays the topic): the direct COPY
    // is refused, the batch goes through staging, and the first copy of each event stays.
    let overlapping = sink.write(&batch(1, 50..150, 2)).await.unwrap();
    assert_eq!(
        (overlapping.path, overlapping.inserted),
        (WritePath::Staging, 50)
    );
    // The sink stays on staging for the next batch; that one meets no conflict...
    let fresh = sink.write(&batch(2, 150..200, 3)).await.unwrap();
    assert_eq!((fresh.path, fresh.inserted), (WritePath::Staging, 50));
    // ...so the one after goes straight in again.
    let after = sink.write(&batch(3, 200..260, 4)).await.unwrap();
    assert_eq!((after.path, after.inserted), (WritePath::Copy, 60));

    let by_product: Vec<(i32, i64)> =
        sqlx::query_as("SELECT product_id, count(*) FROM ecommerce_events GROUP BY 1 ORDER BY 1")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    assert_eq!(by_product, [(1, 100), (2, 50), (3, 50), (4, 60)]);
    let next_offset: i64 = sqlx::query_scalar("SELECT next_offset FROM ingest_checkpoints")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(next_offset, 4_000);

    // Every column survives the COPY text format, escapes included.
    let (file, price, time, landed): (String, String, String, String) = sqlx::query_as(
        "SELECT source_file, price::text, to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'),
                to_char(landed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.MS')
         FROM ecommerce_events WHERE event_id = 'e00200'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(file, "a\tfile\\with\nodd name.csv");
    assert_eq!(price, "19.99");
    assert_eq!(time, "2026-11-25 12:00:00.123456");
    assert_eq!(landed, "2025-11-25 12:00:00.000");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_quarantined_as_late_stays_out_on_the_direct_path() {
    let world = World::new("sink_late").await;
    let mut sink = new_sink(&world).await;
    sqlx::query(
        "INSERT INTO ecommerce_events_rejected
             (source_file, source_file_id, source_line, reason_code, reason, event_id, raw,
              kafka_topic, kafka_partition, kafka_offset)
         VALUES ('old.csv', 'x', 2, 'late', 'late', 'e00003', '\\x00', 'topic', 0, 0)",
    )
    .execute(&world.pool)
    .await
    .unwrap();
    let outcome = sink.write(&batch(0, 0..10, 1)).await.unwrap();
    assert_eq!((outcome.path, outcome.inserted), (WritePath::Copy, 9));
    let ids = world.event_ids().await;
    assert_eq!(ids.len(), 9);
    assert!(!ids.contains("e00003"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_batch_writes_nothing_on_the_direct_path() {
    let world = World::new("sink_fenced").await;
    let mut sink = new_sink(&world).await;
    sink.write(&batch(0, 0..10, 1)).await.unwrap();
    // Another consumer took the partition and moved its checkpoint meanwhile.
    sqlx::query("UPDATE ingest_checkpoints SET next_offset = 5000")
        .execute(&world.pool)
        .await
        .unwrap();
    let error = sink.write(&batch(1, 10..20, 2)).await.unwrap_err();
    assert!(
        matches!(error, consumer::sink::SinkError::Fenced { partition: 0 }),
        "{error}"
    );
    assert_eq!(world.event_ids().await.len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn prices_and_times_arrive_exactly_on_both_paths() {
    let world = World::new("sink_values").await;
    let mut sink = new_sink(&world).await;
    let prices = [
        0,
        1,
        99,
        100,
        1999,
        100_000,
        1_000_000,
        1_234_567_890,
        9_999_999_999,
    ];
    let times = [
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59.999999Z",
        "2000-01-01T00:00:00Z",
        "2026-11-25T12:00:00.000001Z",
        "9999-12-31T23:59:59.999999Z",
    ];
    let rows = |first: usize| -> Vec<EventRow> {
        prices
            .iter()
            .zip(times.iter().cycle())
            .enumerate()
            .map(|(n, (cents, time))| {
                let mut row = row(&format!("v{:03}", first + n), 1, n as i64);
                row.event.price_cents = *cents;
                row.event.event_time = time.parse().unwrap();
                row
            })
            .collect()
    };
    let direct = WriteBatch {
        events: rows(0),
        ..WriteBatch::default()
    };
    assert_eq!(sink.write(&direct).await.unwrap().path, WritePath::Copy);
    // The first row again, so the batch goes through staging.
    let mut staged = rows(100);
    staged.push(rows(0).remove(0));
    let staged = WriteBatch {
        events: staged,
        ..WriteBatch::default()
    };
    assert_eq!(sink.write(&staged).await.unwrap().path, WritePath::Staging);

    let stored: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT event_id, price::text,
                to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')
         FROM ecommerce_events ORDER BY event_id",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 2 * prices.len());
    for (id, price, time) in stored {
        let n: usize = id[1..].parse::<usize>().unwrap() % 100;
        let cents = prices[n];
        assert_eq!(price, format!("{}.{:02}", cents / 100, cents % 100), "{id}");
        let expected: chrono::DateTime<chrono::Utc> = times[n % times.len()].parse().unwrap();
        assert_eq!(
            time,
            expected.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
            "{id}"
        );
    }
}

/// A table that holds events when migration 0018 moves its primary key from the id's text to
/// its digest: every event keeps its row and its key, and a later copy of one is still a
/// duplicate, not a second row.
#[tokio::test(flavor = "multi_thread")]
async fn events_stored_before_the_key_became_a_digest_stay_deduplicated() {
    let world = World::new("sink_key_upgrade").await;
    let before = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0018" {
            std::fs::copy(&path, before.path().join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before.path())
        .await
        .unwrap()
        .run(&world.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO ecommerce_events
             (event_id, user_id, event_type, product_id, price, event_time, is_late,
              source_file, source_line, landed_at)
         SELECT format('e%s', lpad(g::text, 5, '0')), 7, 'view', 1, 19.99, now(), false,
                'before.csv', g, now()
         FROM generate_series(0, 49) g",
    )
    .execute(&world.pool)
    .await
    .unwrap();
    let mut sink = new_sink(&world).await;
    let keyed: i64 = world
        .count(
            "SELECT count(*) FROM ecommerce_events
             WHERE event_key = md5(event_id)::uuid AND source_file = 'before.csv'",
        )
        .await;
    assert_eq!(keyed, 50);
    // Half of the batch was stored before the upgrade.
    let outcome = sink.write(&batch(0, 25..75, 2)).await.unwrap();
    assert_eq!(outcome.inserted, 25);
    assert_eq!(
        world.count("SELECT count(*) FROM ecommerce_events").await,
        75
    );
    world.assert_aggregates_exact().await;
}
