//! Faults beyond a plain kill: crashes in the narrowest windows, rebalances, stalls, a new group
//! replaying the topic, awkward files, and the broker and the database restarting under load.
//! Each case ends with the invariant: the table equals the distinct valid event_ids of the input.

use it_tests::broker::PrivateBroker;
use it_tests::database::PrivatePostgres;
use it_tests::Failpoint;
use it_tests::{event_ids_in, World, HEADER};
use sqlx::Connection;
use std::collections::BTreeSet;
use std::time::Duration;

use it_tests::EVENTS;
const REJECTED: &str = "SELECT count(*) FROM ecommerce_events_rejected";
use it_tests::BROKER_FAULT_PATIENCE as LONG;

fn generate(world: &World, files: &str, per_file: &str, seed: &str) -> (BTreeSet<String>, usize) {
    let status = world.generator(&[
        "--files",
        files,
        "--events-per-file",
        per_file,
        "--seed",
        seed,
    ]);
    assert!(status.success());
    event_ids_in(&world.input_dir())
}

async fn assert_exactly(world: &World, expected: &BTreeSet<String>) {
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    assert_eq!(&world.event_ids().await, expected);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        world.count(EVENTS).await,
        expected.len() as i64,
        "nothing arrives late"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_crash_between_postgres_commit_and_offset_commit() {
    let world = World::new("crash_commit").await;
    let (expected, _) = generate(&world, "4", "1000", "21");
    world.bridge_once(&[]);
    let args = ["--batch-size", "400", "--instance-id", "one"];
    let crashed = world
        .consumer_failing_at(&args, Failpoint::ConsumerAfterDbCommit, 3)
        .wait_for_exit(LONG);
    assert!(!crashed.success(), "the failpoint aborted the consumer");
    let written = world.count(EVENTS).await;
    assert!(
        written > 0,
        "three batches were in Postgres, their offsets not in Kafka"
    );
    let _consumer = world.consumer(&args);
    assert_exactly(&world, &expected).await;
    assert!(world.count(EVENTS).await > written);
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_crash_after_publishing_before_archiving() {
    let world = World::new("crash_archive").await;
    let (expected, _) = generate(&world, "3", "500", "22");
    let crashed = world
        .bridge_failing_at(&[], Failpoint::BridgeBeforeArchive, 1)
        .wait_for_exit(LONG);
    assert!(!crashed.success(), "the failpoint aborted the bridge");
    assert_eq!(world.files_waiting(), 3, "nothing archived");
    world.bridge_once(&[]);
    let _consumer = world.consumer(&[]);
    assert_exactly(&world, &expected).await;
    assert_eq!(world.count(REJECTED).await, 0);
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_group_replaying_the_topic_changes_nothing() {
    let world = World::new("replay").await;
    assert!(world
        .generator(&[
            "--files",
            "5",
            "--events-per-file",
            "500",
            "--seed",
            "23",
            "--duplicate-rate",
            "0.1",
            "--late-rate",
            "0.05",
            "--malformed-rate",
            "0.05",
        ])
        .success());
    world.bridge_once(&[]);
    let policy = ["--late-policy", "quarantine", "--partitions", "3"];
    let first = world.consumer(&policy);
    world
        .wait_for_count(
            "SELECT sum(next_offset)::bigint FROM ingest_checkpoints",
            2_505,
            LONG,
        )
        .await;
    drop(first);
    let (events, rejected) = (world.event_ids().await, world.count(REJECTED).await);
    assert!(
        rejected > 100,
        "malformed and late rows were quarantined ({rejected})"
    );
    let _second = world.consumer_in_group("a-second-group", &["--late-policy", "quarantine"]);
    world
        .wait_for_count(
            "SELECT sum(next_offset)::bigint FROM ingest_checkpoints WHERE consumer_group = 'a-second-group'",
            2_505,
            LONG,
        )
        .await;
    assert_eq!(world.event_ids().await, events, "table unchanged");
    assert_eq!(
        world.count(REJECTED).await,
        rejected,
        "quarantine unchanged"
    );
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_joining_and_leaving_mid_stream_share_the_work_without_doubling() {
    let world = World::new("rebalance").await;
    let (expected, _) = generate(&world, "30", "1000", "24");
    world.bridge_once(&["--partitions", "6"]);
    // Dynamic membership: a consumer that leaves says so and its partitions move at once.
    // (Static members leave silently by design and wait out the session timeout.)
    let small = ["--batch-size", "500"];
    let _first = world.consumer(&small);
    world.wait_for_at_least(EVENTS, 3_000, LONG).await;
    let second = world.consumer(&small);
    let third = world.consumer(&small);
    let took_work = |log: String| {
        log.lines()
            .any(|l| l.contains("partitions assigned") && !l.trim_end().ends_with("partitions="))
    };
    let deadline = std::time::Instant::now() + LONG;
    while !(took_work(second.log_text()) || took_work(third.log_text())) {
        assert!(
            std::time::Instant::now() < deadline,
            "the joiners were never given partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(second.terminate(Duration::from_secs(30)).success());
    assert!(third.terminate(Duration::from_secs(30)).success());
    assert_exactly(&world, &expected).await;
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_stalled_past_its_session_and_resumed_writes_nothing_twice() {
    let world = World::new("stall").await;
    let (expected, _) = generate(&world, "10", "1000", "25");
    world.bridge_once(&[]);
    let consumer = world.consumer(&["--batch-size", "300", "--batch-timeout", "20ms"]);
    world.wait_for_at_least(EVENTS, 1_000, LONG).await;
    consumer.signal("STOP");
    tokio::time::sleep(Duration::from_secs(12)).await;
    consumer.signal("CONT");
    assert_exactly(&world, &expected).await;
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn files_arriving_late_slowly_twice_and_by_the_thousand() {
    let world = World::new("files").await;
    let _consumer = world.consumer(&[]);
    let _bridge = world.bridge(&["--settle-time", "1s"]);
    // A file written in place, slowly, without a rename: taken only once it is complete.
    let slow = world.input_dir().join("slow.csv");
    std::fs::create_dir_all(world.input_dir()).unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&slow).unwrap();
        file.write_all(HEADER.as_bytes()).unwrap();
        for i in 0..20 {
            write!(file, "slow-{i},1,view,10,1.00,2026-11-25T12:00:").unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_millis(100));
            writeln!(file, "{:02}Z", i).unwrap();
        }
    }
    // The same name twice with new content: both versions count.
    world.drop_csv(
        "twice.csv",
        "t1,1,view,10,1.00,2026-11-25T12:00:00Z\nbad,1,view,10,-1,2026-11-25T12:00:00Z\n",
    );
    world.wait_for_count(REJECTED, 1, LONG).await;
    world.drop_csv(
        "twice.csv",
        "t2,1,view,10,1.00,2026-11-25T12:00:00Z\nbad,1,view,10,-1,2026-11-25T12:00:00Z\n",
    );
    world.wait_for_count(REJECTED, 2, LONG).await;

    let mut expected: BTreeSet<String> = (0..20).map(|i| format!("slow-{i}")).collect();
    expected.extend(["t1".to_owned(), "t2".to_owned()]);
    assert_exactly(&world, &expected).await;
    assert_eq!(
        world.count(REJECTED).await,
        2,
        "the slow file was never read half-written"
    );
    let archived: BTreeSet<String> = std::fs::read_dir(world.archive_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        archived,
        ["slow.csv", "twice.1.csv", "twice.csv"]
            .map(String::from)
            .into()
    );

    // Ten thousand small files at once.
    let many = World::new("many_files").await;
    let (expected, rows) = generate(&many, "10000", "1", "26");
    assert_eq!(rows, 10_000);
    many.bridge_once(&[]);
    let _consumer = many.consumer(&[]);
    assert_exactly(&many, &expected).await;
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_under_load_loses_nothing() {
    let mut broker = PrivateBroker::start();
    let world = World::on("broker_restart", &broker.address(), &it_tests::server_url()).await;
    let (expected, _) = generate(&world, "20", "1000", "27");
    let _consumer = world.consumer(&["--batch-size", "500"]);
    let _bridge = world.bridge(&[]);
    world.wait_for_at_least(EVENTS, 2_000, LONG).await;
    broker.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.restart();
    assert_exactly(&world, &expected).await;
    assert_eq!(world.files_waiting(), 0, "all archived");
}

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn postgres_crash_mid_stream_then_recovery_loses_nothing() {
    let postgres = PrivatePostgres::start();
    let mut world = World::on("pg_restart", &it_tests::brokers(), &postgres.server_url()).await;
    let (expected, _) = generate(&world, "20", "1000", "28");
    world.bridge_once(&[]);
    let consumer = world.consumer(&["--batch-size", "500"]);
    world.wait_for_at_least(EVENTS, 2_000, LONG).await;
    world.pool.close().await;
    postgres.crash();
    tokio::time::sleep(Duration::from_secs(4)).await;
    postgres.restart();
    world.reconnect().await.unwrap();
    assert_exactly(&world, &expected).await;
    assert!(consumer
        .log_text()
        .contains("batch not written; will retry"));
}

#[tokio::test(flavor = "multi_thread")]
async fn late_classification_survives_a_crash() {
    let world = World::new("late_crash").await;
    // One partition, one row per transaction: the crash lands right after A is committed, so the
    // restarted consumer's first new row is B, late only if the watermark A set was kept.
    world.drop_csv(
        "late.csv",
        "A,1,view,10,1.00,2026-11-25T12:30:00Z\n\
             B,1,view,10,1.00,2026-11-25T12:00:00Z\n\
             C,1,view,10,1.00,2026-11-25T12:40:00Z\n\
             D,1,view,10,1.00,2026-11-25T12:05:00Z\n",
    );
    world.bridge_once(&["--partitions", "1"]);
    let args = [
        "--late-policy",
        "quarantine",
        "--batch-size",
        "1",
        "--partitions",
        "1",
        "--instance-id",
        "one",
    ];
    let aborted = world
        .consumer_failing_at(&args, Failpoint::ConsumerAfterDbCommit, 1)
        .wait_for_exit(LONG);
    assert!(!aborted.success());
    assert_eq!(
        world.count(EVENTS).await,
        1,
        "A was committed before the crash"
    );
    let _restarted = world.consumer(&args);
    world
        .wait_for_count(
            "SELECT sum(next_offset)::bigint FROM ingest_checkpoints",
            5,
            LONG,
        )
        .await;
    assert_eq!(
        world.event_ids().await,
        ["A", "C"].map(String::from).into(),
        "B stays late after the restart"
    );
    let late: BTreeSet<String> = sqlx::query_scalar(
        "SELECT event_id FROM ecommerce_events_rejected WHERE reason_code = 'late'",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(late, ["B", "D"].map(String::from).into());
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_database_refuses_is_quarantined_alone() {
    let world = World::new("db_refuses").await;
    world.drop_csv(
        "a.csv",
        "r1,1,view,10,1.00,2026-11-25T12:00:00Z\n\
             r2,1,view,666,1.00,2026-11-25T12:00:00Z\n\
             r3,1,view,11,1.00,2026-11-25T12:00:00Z\n",
    );
    // An operator's rule the contract knows nothing about.
    let migrate = world.spawn(
        "consumer",
        &["--database-url", &world.database_url, "--migrate-only"],
    );
    assert!(migrate.wait_for_exit(LONG).success());
    sqlx::query("ALTER TABLE ecommerce_events ADD CONSTRAINT no_666 CHECK (product_id <> 666)")
        .execute(&world.pool)
        .await
        .unwrap();
    world.bridge_once(&[]);
    let _consumer = world.consumer(&[]);
    assert_exactly(&world, &["r1", "r3"].map(String::from).into()).await;
    let (code, reason, event_id): (String, String, String) =
        sqlx::query_as("SELECT reason_code, reason, event_id FROM ecommerce_events_rejected")
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert_eq!((code.as_str(), event_id.as_str()), ("database", "r2"));
    assert!(reason.contains("no_666"), "{reason}");
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn broker_down_longer_than_the_message_timeout_keeps_the_file_until_it_is_back() {
    let mut broker = PrivateBroker::start();
    let world = World::on("broker_down", &broker.address(), &it_tests::server_url()).await;
    let _consumer = world.consumer(&[]);
    let _bridge = world.bridge(&["-X", "message.timeout.ms=2000"]);
    world
        .wait_for_count("SELECT count(*) FROM ingest_checkpoints", 0, LONG)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.kill9();
    let (expected, _) = generate(&world, "3", "500", "30");
    // Deliveries time out: the files must stay where they are.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(world.files_waiting(), 3, "nothing archived");
    broker.restart();
    assert_exactly(&world, &expected).await;
    assert_eq!(world.files_waiting(), 0, "archived after recovery");
}

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn connections_cut_again_and_again_and_a_full_server_lose_nothing() {
    let postgres = PrivatePostgres::start_with("-c max_connections=8");
    let world = World::on("conn_cuts", &it_tests::brokers(), &postgres.server_url()).await;
    let (expected, _) = generate(&world, "20", "1000", "32");
    world.bridge_once(&[]);
    // Every connection the server allows is taken: the consumer waits, then gets in.
    let mut held = Vec::new();
    while let Ok(connection) = sqlx::PgConnection::connect(&world.database_url).await {
        held.push(connection);
        assert!(held.len() < 20, "max_connections is not in force");
    }
    let consumer = world.consumer(&["--batch-size", "500"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        consumer.log_text().contains("too many clients"),
        "the full server was felt"
    );
    drop(held);
    // Then its connection is cut, over and over, at whatever point of a transaction it is in.
    world.wait_for_at_least(EVENTS, 1, LONG).await;
    for _ in 0..30 {
        let _ = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&world.pool)
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_exactly(&world, &expected).await;
    let log = consumer.log_text();
    assert!(
        log.contains("too many clients") || log.contains("53300"),
        "the full server was felt"
    );
    assert!(log.contains("batch not written; will retry"));
}

#[tokio::test(flavor = "multi_thread")]
async fn files_renamed_or_deleted_while_read_double_nothing() {
    let world = World::new("moved").await;
    let (expected, _) = generate(&world, "1", "100000", "33");
    let original = std::fs::read_dir(world.input_dir())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let _consumer = world.consumer(&[]);
    let bridge = world.bridge(&[]);
    // Renamed within the folder while the bridge reads it: the bridge claimed it first, so the
    // rename finds nothing (or, if it won, the new name is published in full).
    world.wait_for_at_least(EVENTS, 1, LONG).await;
    let _ = std::fs::rename(&original, world.input_dir().join("renamed.csv"));
    assert_exactly(&world, &expected).await;
    assert_eq!(world.count(REJECTED).await, 0);

    // Deleted while read: what was published stays (once), the bridge goes on with other files.
    let (more, _) = {
        let other = World::new("moved_other").await;
        let generated = generate(&other, "1", "100000", "34");
        for entry in std::fs::read_dir(other.input_dir()).unwrap() {
            let path = entry.unwrap().path();
            std::fs::rename(&path, world.input_dir().join("doomed.csv")).unwrap();
        }
        generated
    };
    world
        .wait_for_at_least(EVENTS, expected.len() as i64 + 1, LONG)
        .await;
    // Claimed already: the delete finds nothing, and the file is published in full.
    let _ = std::fs::remove_file(world.input_dir().join("doomed.csv"));
    world.drop_csv("after.csv", "after,1,view,10,1.00,2026-11-25T12:00:00Z\n");
    world
        .wait_for_count(
            "SELECT count(*) FROM ecommerce_events WHERE event_id = 'after'",
            1,
            LONG,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = world.event_ids().await;
    let allowed: BTreeSet<String> = expected
        .iter()
        .chain(more.iter())
        .cloned()
        .chain(["after".to_owned()])
        .collect();
    assert!(
        stored.is_subset(&allowed),
        "only rows that were in the files"
    );
    assert!(
        stored.is_superset(&expected),
        "the renamed file is complete"
    );
    assert_eq!(
        world.count(REJECTED).await,
        0,
        "no half-read row was quarantined"
    );
    drop(bridge);
    world.assert_every_row_accounted().await;
}
