//! Poison never stalls: bytes PostgreSQL refuses, messages no bridge wrote, events dated far ahead,
//! constraints an operator added and locks that block a batch are each quarantined once or
//! reported, and every later event still lands.

use event_model::wire::{RawRow, WIRE_VERSION};
use event_model::WireFormat;
use it_tests::ports::free_port;
use it_tests::World;
use std::time::Duration;

use it_tests::PATIENCE as LONG;

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn pipeline_row(file: &str, values: [&str; 6]) -> Vec<u8> {
    RawRow {
        v: WIRE_VERSION,
        file: file.to_owned(),
        // A row is unique by its file's content and line: distinct files, distinct ids.
        file_id: format!("forged-{}", file.len()),
        line: 2,
        landed_ms: 0,
        values: values.map(|v| Some(v.to_owned())),
        defect: None,
    }
    .encode(WireFormat::Json)
}

/// A row shaped like the bridge's (version 2) whose file identity is 10,000 characters long.
fn long_identity_row(line: u64, values: [&str; 6]) -> Vec<u8> {
    RawRow {
        v: WIRE_VERSION,
        file: "long-identity.csv".into(),
        file_id: "I".repeat(10_000),
        line,
        landed_ms: 0,
        values: values.map(|v| Some(v.to_owned())),
        defect: None,
    }
    .encode(WireFormat::Binary)
}

type Message = it_tests::RawMessage;

/// Files whose bytes PostgreSQL refuses: NUL in a header name and in values, and an event from
/// the year 9999 ahead of an ordinary one.
fn drop_poison_files(world: &World, time: &str) {
    world.drop_file(
        "nul-header.csv",
        format!("event_id,user_id,event_type,product_id,pri\0ce,event_time\nh1,1,view,10,1.00,{time}\nh2,1,view,10,1.00,{time}\n").as_bytes(),
    );
    world.drop_csv("nul-values.csv", &format!("a\0b,1,view,10,1.00,{time}\nok-1,1,view,10,1.00,{time}\nok-2,1,view\0,10,1.00,{time}\n"));
    world.drop_csv(
        "future.csv",
        &format!("far,1,view,10,1.00,9999-12-31T23:59:59Z\nafter-far,1,view,10,1.00,{time}\n"),
    );
}

/// Messages no bridge wrote: six that are not rows at all, three shaped like the bridge's rows
/// (one valid) with NUL or 10,000 characters in their file, two rows of one forged 10 kB file
/// identity, and a forged end-of-file message. 12 messages.
fn foreign_messages(time: &str) -> Vec<Message> {
    let long_name = "F".repeat(10_000);
    vec![
        (Some(b"k1\0".to_vec()), Some(b"not json at all \0".to_vec())),
        (None, Some(br#"{"v":2}"#.to_vec())),
        (Some(b"tombstone".to_vec()), None),
        (Some(b"nul".to_vec()), Some(vec![0, 0, 0])),
        // A version 2 row cut short: its prefix promises a row the bytes do not hold.
        (Some(b"cut".to_vec()), {
            let row = long_identity_row(9, ["cut", "1", "view", "1", "1.00", time]);
            Some(row[..row.len() / 2].to_vec())
        }),
        (
            Some(b"v99".to_vec()),
            Some(
                String::from_utf8(pipeline_row(
                    "x.csv",
                    ["v99", "1", "view", "1", "1.00", time],
                ))
                .unwrap()
                .replace("\"v\":1", "\"v\":99")
                .into_bytes(),
            ),
        ),
        // Shaped like the bridge's rows: judged as rows, their text made storable.
        (
            Some(b"foreign-ok".to_vec()),
            Some(pipeline_row(
                "fo\0reign.csv",
                ["foreign-ok", "1", "view", "1", "1.00", time],
            )),
        ),
        (
            Some(b"long".to_vec()),
            Some(pipeline_row(
                &long_name,
                ["long-name", "1", "view", "1", "x", time],
            )),
        ),
        (
            Some(b"bad\0id".to_vec()),
            Some(pipeline_row(
                "nul\0file.csv",
                ["bad\0id", "1", "view", "1", "1.00", time],
            )),
        ),
        // Two rows of one forged 10 kB file identity, one valid and one not: the ledger counts
        // both under the identity as stored, in one upsert row.
        (
            Some(b"long-id-ok".to_vec()),
            Some(long_identity_row(
                2,
                ["long-id-ok", "1", "view", "1", "1.00", time],
            )),
        ),
        (
            Some(b"long-id-bad".to_vec()),
            Some(long_identity_row(
                3,
                ["long-id-bad", "1", "view", "1", "x", time],
            )),
        ),
        // An end-of-file message as a stranger might forge it: a time PostgreSQL cannot store,
        // a 10 kB identity, a NUL in the name, an impossible row count. Recorded, never a stall.
        (
            Some(b"end".to_vec()),
            Some(
                event_model::FileEnd {
                    file: "end\0.csv".into(),
                    file_id: "E".repeat(10_000),
                    content_sha256: "x".repeat(10_000),
                    size_bytes: u64::MAX,
                    landed_ms: i64::MAX,
                    rows_read: i64::MAX as u64,
                    backfill: false,
                    changed_while_read: false,
                }
                .encode(),
            ),
        ),
    ]
}

/// Quarantined rows by file (a name over 40 characters shown as `<long>`) and reason.
async fn rejects_by_file_and_reason(world: &World) -> Vec<(String, String, i64)> {
    let codes: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT source_file, reason_code, count(*) FROM ecommerce_events_rejected
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    let mut codes: Vec<(String, String, i64)> = codes
        .into_iter()
        .map(|(file, code, n)| {
            let file = if file.len() > 40 {
                "<long>".into()
            } else {
                file
            };
            (file, code, n)
        })
        .collect();
    codes.sort();
    codes
}

fn sorted(rows: &[(&str, &str, i64)]) -> Vec<(String, String, i64)> {
    let mut rows: Vec<_> = rows
        .iter()
        .map(|(file, code, n)| (file.to_string(), code.to_string(), *n))
        .collect();
    rows.sort();
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_postgres_refuses_are_quarantined_and_the_rest_of_each_file_lands() {
    let world = World::new("poison_files").await;
    let time = now();
    drop_poison_files(&world, &time);
    let _consumer = world.consumer(&["--late-policy", "quarantine"]);
    world.bridge_once(&[]);
    world.drop_csv(
        "after.csv",
        &format!("after-1,1,view,10,1.00,{time}\nafter-2,1,purchase,10,2.00,{time}\n"),
    );
    world.bridge_once(&[]);

    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 4, LONG)
        .await;
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events_rejected", 5, LONG)
        .await;
    let expected: std::collections::BTreeSet<String> = ["ok-1", "after-far", "after-1", "after-2"]
        .map(String::from)
        .into();
    assert_eq!(world.event_ids().await, expected);
    assert_eq!(
        rejects_by_file_and_reason(&world).await,
        sorted(&[
            ("future.csv", "future", 1),
            ("nul-header.csv", "missing_column", 2),
            ("nul-values.csv", "invalid_field", 2),
        ])
    );
    let future_reason: String = sqlx::query_scalar(
        "SELECT reason FROM ecommerce_events_rejected WHERE reason_code = 'future'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert!(
        // Judged against the landing time the row carries, not the consumer's clock (issue 19).
        future_reason.contains("ahead of its file's landing time"),
        "{future_reason}"
    );
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_messages_are_kept_byte_for_byte_and_rows_shaped_like_the_bridges_are_judged() {
    let world = World::new("poison_foreign").await;
    let time = now();
    world.produce(foreign_messages(&time)).await;
    let _consumer = world.consumer(&["--late-policy", "quarantine"]);

    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 2, LONG)
        .await;
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events_rejected", 9, LONG)
        .await;
    let expected: std::collections::BTreeSet<String> =
        ["foreign-ok", "long-id-ok"].map(String::from).into();
    assert_eq!(world.event_ids().await, expected);
    let stored_name: String = sqlx::query_scalar(
        "SELECT source_file FROM ecommerce_events WHERE event_id = 'foreign-ok'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(stored_name, "fo\\x00reign.csv");
    let topic_file = format!("kafka:{}", world.topic);
    assert_eq!(
        rejects_by_file_and_reason(&world).await,
        sorted(&[
            ("<long>", "invalid_field", 1),
            ("long-identity.csv", "invalid_field", 1),
            (topic_file.as_str(), "undecodable", 6),
            ("nul\\x00file.csv", "invalid_field", 1),
        ])
    );
    // The foreign message is kept byte for byte: key and value, partition and offset.
    let (key, raw, offset): (Option<Vec<u8>>, Vec<u8>, i64) = sqlx::query_as(
        "SELECT kafka_key, raw, kafka_offset FROM ecommerce_events_rejected
         WHERE kafka_key = '\\x6b3100'::bytea",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(key.as_deref(), Some(&b"k1\0"[..]));
    assert_eq!(raw, b"not json at all \0");
    assert!(offset >= 0);
    // The forged end is in the ledger, made storable, its time left out; it never reconciles.
    world
        .wait_for_count(
            "SELECT count(*) FROM ingest_files WHERE file_name LIKE 'end%'",
            1,
            LONG,
        )
        .await;
    let (forged_name, landed, reconciled): (String, bool, bool) = sqlx::query_as(
        "SELECT file_name, landed_at IS NULL, reconciled_at IS NOT NULL FROM ingest_files
         WHERE file_name LIKE 'end%'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        (forged_name.as_str(), landed, reconciled),
        ("end\\x00.csv", true, false)
    );
    // No completeness assertion: the forged messages name file versions no end message ever
    // closes, so their files stay unreconciled by design.
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_read_again_from_scratch_is_quarantined_once() {
    let world = World::new("poison_replay").await;
    let time = now();
    drop_poison_files(&world, &time);
    world.produce(foreign_messages(&time)).await;
    let mut consumer = world.consumer(&["--late-policy", "quarantine"]);
    world.bridge_once(&[]);
    // Rows of three files, their three end messages, the twelve foreign messages.
    let total_messages = 2 + 3 + 2 + 3 + 12;
    let done = "SELECT coalesce(sum(next_offset), 0)::int8 FROM ingest_checkpoints";
    world.wait_for_count(done, total_messages, LONG).await;
    let (events, rejects) = (
        world.event_ids().await,
        rejects_by_file_and_reason(&world).await,
    );
    assert_eq!(events.len(), 4, "{events:?}");
    assert_eq!(rejects.iter().map(|r| r.2).sum::<i64>(), 14, "{rejects:?}");

    consumer.kill9();
    sqlx::query("DELETE FROM ingest_checkpoints")
        .execute(&world.pool)
        .await
        .unwrap();
    let replay_group = it_tests::unique("it-poison-replay");
    let _replay = world.consumer_in_group(&replay_group, &["--late-policy", "quarantine"]);
    world.wait_for_count(done, total_messages, LONG).await;
    assert_eq!(world.event_ids().await, events);
    assert_eq!(rejects_by_file_and_reason(&world).await, rejects);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_quarantine_row_and_a_blocked_batch_are_reported_not_stalled() {
    let world = World::new("stuck").await;
    let status = world.consumer(&["--migrate-only"]).wait_for_exit(LONG);
    assert!(status.success());
    // An operator's rule on the rejected table refuses the reason this row would get.
    sqlx::query(
        "ALTER TABLE ecommerce_events_rejected
         ADD CONSTRAINT ops_rule CHECK (position('secret' in reason) = 0)",
    )
    .execute(&world.pool)
    .await
    .unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let _consumer = world.consumer(&["--stuck-after", "1s", "--metrics-addr", &metrics_addr]);
    let time = now();
    world.drop_csv(
        "secret.csv",
        &format!("s1,1,view,10,secret,{time}\nfine-1,1,view,10,1.00,{time}\n"),
    );
    world.bridge_once(&["--partitions", "1"]);
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 1, LONG)
        .await;
    let (code, reason): (String, String) =
        sqlx::query_as("SELECT reason_code, reason FROM ecommerce_events_rejected")
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert_eq!(code, "database");
    assert!(reason.contains("ops_rule"), "{reason}");

    // A lock held on the table blocks the next batch: reported stuck, then moving again.
    let mut lock = world.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE ecommerce_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    world.drop_csv("blocked.csv", &format!("blocked-1,1,view,10,1.00,{time}\n"));
    world.bridge_once(&[]);
    let url = format!("http://{metrics_addr}/metrics");
    let stuck_value = || async {
        let (_, body) = telemetry::http_get(&url, Duration::from_secs(2))
            .await
            .unwrap_or_default();
        body.lines()
            .find(|line| line.starts_with("pipeline_consumer_stuck_partitions "))
            .map(|line| line.rsplit(' ').next().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + LONG;
    while stuck_value().await != "1" {
        assert!(std::time::Instant::now() < deadline, "never reported stuck");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    lock.rollback().await.unwrap();
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 2, LONG)
        .await;
    let deadline = std::time::Instant::now() + LONG;
    while stuck_value().await != "0" {
        assert!(std::time::Instant::now() < deadline, "still reported stuck");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world.assert_every_row_accounted().await;
}
