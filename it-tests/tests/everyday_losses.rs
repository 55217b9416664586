//! Silent losses in everyday paths (issue 23), each tried as an operator or a writer would: a
//! writer that pauses with its file open, a backfill after a truncate while the consumer runs,
//! archived `*.CSV` files, files without a header, a fix of a quarantined row that is now late, a
//! quarantine record the database refuses delivered twice, a forged defect code, offsets of
//! revoked partitions committed on leaving, and readiness under cooperative rebalancing.

use event_model::wire::{Defect, RawRow, WIRE_VERSION};
use event_model::{RejectCode, WireFormat};
use it_tests::ports::free_port;
use it_tests::{World, HEADER, RECONCILED_FILES};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use it_tests::EVENTS;
use it_tests::PATIENCE as LONG;

/// An hour before now, so no row is ahead of its file's landing time.
fn hours_ago(hours: i64) -> String {
    (chrono::Utc::now() - chrono::TimeDelta::hours(hours))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `count` valid rows `PREFIX-N` at `time`, without a header.
fn rows(prefix: &str, count: usize, time: &str) -> String {
    (0..count)
        .map(|n| format!("{prefix}-{n},1,view,10,1.00,{time}\n"))
        .collect()
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_that_pauses_longer_than_the_settle_rules_with_its_file_open_loses_nothing() {
    let world = World::new("paused_writer").await;
    let _bridge = world.bridge(&[]);
    let _consumer = world.consumer(&[]);
    std::fs::create_dir_all(world.input_dir()).unwrap();
    let time = hours_ago(1);
    let mut writer = std::fs::File::create(world.input_dir().join("slow.csv")).unwrap();
    write!(writer, "{HEADER}{}", rows("before", 5, &time)).unwrap();
    writer.flush().unwrap();
    // Longer than every settle rule (10 s for a writer seen writing), the file still open.
    std::thread::sleep(Duration::from_secs(12));
    write!(writer, "{}", rows("after", 5, &time)).unwrap();
    drop(writer);
    world.wait_for_count(EVENTS, 10, LONG).await;
    world
        .wait_for_count(
            "SELECT count(*) FROM ingest_files WHERE rows_read = 10 AND reconciled_at IS NOT NULL",
            1,
            LONG,
        )
        .await;
    assert_eq!(
        world
            .count("SELECT count(*) FROM ingest_files WHERE rows_read < 10")
            .await,
        0,
        "no version of the file was published cut short"
    );
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_after_a_truncate_restores_every_file_while_the_consumer_runs() {
    let world = World::new("truncate_backfill").await;
    let mut bridge = world.bridge(&[]);
    let _consumer = world.consumer(&[]);
    let time = hours_ago(1);
    world.drop_csv("lower.csv", &rows("l", 10, &time));
    world.drop_csv("UPPER.CSV", &rows("u", 10, &time));
    world.wait_for_count(RECONCILED_FILES, 2, LONG).await;
    world.wait_until_archived(LONG).await;
    bridge.kill9();
    std::fs::write(world.archive_dir().join("notes.txt"), "not data\n").unwrap();

    // As the docs say: empty the tables the backfill rebuilds, leave the consumer running.
    sqlx::query(
        "TRUNCATE ecommerce_events, ecommerce_events_rejected, ingest_duplicates, ingest_files",
    )
    .execute(&world.pool)
    .await
    .unwrap();
    let (status, log) = world.backfill(&world.archive_dir(), &[]);
    assert!(status.success(), "backfill failed: {status}\n{log}");
    let done = log
        .lines()
        .find(|line| line.contains("backfill done"))
        .unwrap_or_default();
    assert!(done.contains("files=2"), "both files, any case: {log}");
    assert!(
        log.contains("notes.txt") && log.contains("not backfilled"),
        "a skipped file is named: {log}"
    );
    world.wait_for_count(EVENTS, 20, LONG).await;
    world.wait_for_count(RECONCILED_FILES, 2, LONG).await;
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_file_without_a_header_is_rejected_whole_with_every_line_accounted() {
    let world = World::new("headerless").await;
    let _bridge = world.bridge(&[]);
    let _consumer = world.consumer(&[]);
    let time = hours_ago(1);
    world.drop_file("three.csv", rows("t", 3, &time).as_bytes());
    world.drop_file("one.csv", rows("o", 1, &time).trim_end().as_bytes());
    world.wait_for_count(RECONCILED_FILES, 2, LONG).await;
    let rejected: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT source_file, source_line, reason FROM ecommerce_events_rejected
         WHERE reason_code = 'missing_header' ORDER BY source_file, source_line",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    let lines: Vec<(&str, i64)> = rejected.iter().map(|(f, l, _)| (f.as_str(), *l)).collect();
    assert_eq!(
        lines,
        [
            ("one.csv", 1),
            ("three.csv", 1),
            ("three.csv", 2),
            ("three.csv", 3)
        ]
    );
    assert!(rejected[0].2.contains("no header"), "{}", rejected[0].2);
    let read: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT file_name, rows_read, rows_rejected FROM ingest_files ORDER BY file_name",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(read, [("one.csv".into(), 1, 1), ("three.csv".into(), 3, 3)]);
    assert_eq!(world.count(EVENTS).await, 0);
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_reject_now_behind_the_watermark_is_stored_under_the_quarantine_policy() {
    let world = World::new("late_fix").await;
    let _bridge = world.bridge(&[]);
    let _consumer = world.consumer(&["--late-policy", "quarantine"]);
    let (old, new) = (hours_ago(3), hours_ago(1));
    // The bad row, and rows two hours newer on every partition: the fix will be late.
    world.drop_csv(
        "first.csv",
        &format!("fixme,1,view,10,x,{old}\n{}", rows("newer", 30, &new)),
    );
    world.wait_for_count(RECONCILED_FILES, 1, LONG).await;
    world.drop_csv("fix.csv", &format!("fixme,1,view,10,1.00,{old}\n"));
    world.wait_for_count(RECONCILED_FILES, 2, LONG).await;
    assert_eq!(
        world
            .count("SELECT count(*) FROM ecommerce_events WHERE event_id = 'fixme' AND is_late")
            .await,
        1,
        "the fix is stored, marked late"
    );
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM ecommerce_events_rejected WHERE event_id = 'fixme' \
                 AND resolved_at IS NULL"
            )
            .await,
        0,
        "the reject it fixes is resolved, and no late reject keeps the id out"
    );
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_quarantine_row_delivered_again_has_one_stand_in_and_counts_once() {
    let world = World::new("stand_in").await;
    let _consumer = world.consumer(&[]);
    world
        .wait_for_count(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'ecommerce_events_rejected'",
            1,
            LONG,
        )
        .await;
    // An operator's trigger refuses the quarantine records of one file.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_file() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.source_file = 'refused.csv' THEN RAISE EXCEPTION 'not this file'; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_file BEFORE INSERT ON ecommerce_events_rejected
           FOR EACH ROW EXECUTE FUNCTION refuse_file();",
    )
    .execute(&world.pool)
    .await
    .unwrap();
    let body = format!("{HEADER}bad,1,view,10,x,{}\n", hours_ago(1));
    let ledger = "SELECT rows_rejected, updated_at::text FROM ingest_files";
    for round in 0..2 {
        world.drop_file("refused.csv", body.as_bytes());
        world.bridge_once(&[]);
        let before: Option<(i64, String)> = sqlx::query_as(ledger)
            .fetch_optional(&world.pool)
            .await
            .unwrap();
        // The same bytes again: the same file version, its end message seen again.
        let deadline = Instant::now() + LONG;
        loop {
            let now: Option<(i64, String)> = sqlx::query_as(ledger)
                .fetch_optional(&world.pool)
                .await
                .unwrap();
            if now.is_some() && (round == 0 || now != before) {
                break;
            }
            assert!(Instant::now() < deadline, "the file's end was not consumed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Whatever order the end and the row came in, give the last delivery time to land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        world
            .count("SELECT count(*) FROM ecommerce_events_rejected WHERE reason_code = 'database'")
            .await,
        1,
        "one stand-in for the one row"
    );
    assert_eq!(
        world.count("SELECT rows_rejected FROM ingest_files").await,
        1,
        "the line counted once"
    );
    assert_eq!(world.count(RECONCILED_FILES).await, 1);
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_defect_code_is_foreign_and_keeps_no_event_out() {
    let world = World::new("forged_defect").await;
    let forged = RawRow {
        v: WIRE_VERSION,
        file: "victim.csv".into(),
        file_id: "forged".into(),
        line: 2,
        landed_ms: 0,
        values: ["victim", "1", "view", "10", "1.00", &hours_ago(1)].map(|v| Some(v.to_owned())),
        defect: Some(Defect {
            code: RejectCode::Late,
            reason: "forged".into(),
            raw_hex: String::new(),
        }),
    };
    world
        .produce(vec![(
            Some(b"victim".to_vec()),
            Some(forged.encode(WireFormat::Binary)),
        )])
        .await;
    let _consumer = world.consumer(&["--late-policy", "quarantine"]);
    world
        .wait_for_count(
            "SELECT count(*) FROM ecommerce_events_rejected WHERE reason_code = 'undecodable'",
            1,
            LONG,
        )
        .await;
    world.drop_csv(
        "victim.csv",
        &format!("victim,1,view,10,1.00,{}\n", hours_ago(1)),
    );
    world.bridge_once(&[]);
    world
        .wait_for_count(
            "SELECT count(*) FROM ecommerce_events WHERE event_id = 'victim'",
            1,
            LONG,
        )
        .await;
    assert_eq!(
        world
            .count("SELECT count(*) FROM ecommerce_events_rejected WHERE reason_code = 'late'")
            .await,
        0
    );
    world.assert_every_row_accounted().await;
}

/// The group's committed offsets of the topic's three partitions.
fn committed_offsets(world: &World) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .set("group.id", &world.group)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..3 {
        partitions.add_partition(&world.topic, partition);
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(offset) => Some((element.partition(), offset)),
            _ => None,
        })
        .collect()
}

async fn checkpoints(world: &World) -> BTreeMap<i32, i64> {
    sqlx::query_as("SELECT kafka_partition, next_offset FROM ingest_checkpoints")
        .fetch_all(&world.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_leaving_commits_only_the_partitions_it_still_holds() {
    let world = World::new("leave_commits").await;
    let time = hours_ago(1);
    let first = world.consumer(&[]);
    world.drop_csv("a.csv", &rows("a", 60, &time));
    world.bridge_once(&[]);
    world.wait_for_count(EVENTS, 60, LONG).await;
    // A second member takes partitions over and moves them on.
    let second = world.consumer(&[]);
    let deadline = Instant::now() + LONG;
    while !second.log_text().contains("partitions assigned") {
        assert!(
            Instant::now() < deadline,
            "no rebalance: {}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    world.drop_csv("b.csv", &rows("b", 60, &time));
    world.bridge_once(&[]);
    world.wait_for_count(EVENTS, 120, LONG).await;
    let deadline = Instant::now() + LONG;
    while committed_offsets(&world) != checkpoints(&world).await {
        assert!(Instant::now() < deadline, "offsets never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The first member leaves cleanly: what it commits must not move anything back.
    let status = first.terminate(LONG);
    assert!(status.success(), "{status}");
    assert_eq!(
        committed_offsets(&world),
        checkpoints(&world).await,
        "a revoked partition's offset was committed back"
    );
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn under_cooperative_rebalancing_a_consumer_keeping_partitions_stays_ready() {
    let world = World::new("cooperative").await;
    let cooperative = ["-X", "partition.assignment.strategy=cooperative-sticky"];
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = cooperative.to_vec();
    args.extend(["--metrics-addr", &metrics]);
    let first = world.consumer(&args);
    world.drop_csv("a.csv", &rows("a", 30, &hours_ago(1)));
    world.bridge_once(&[]);
    world.wait_for_count(EVENTS, 30, LONG).await;
    let _second = world.consumer(&cooperative);
    // The first gives some partitions up, keeps the others: a revoke, then an empty increment.
    let deadline = Instant::now() + LONG;
    while !first.log_text().contains("partitions revoked") {
        assert!(
            Instant::now() < deadline,
            "no rebalance: {}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, body) =
        telemetry::http_get(&format!("http://{metrics}/readyz"), Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}\n{}", first.log_text());
    world.assert_every_row_accounted().await;
}
