//! kill -9 at awkward moments, then restart: the table must equal the set of distinct valid
//! event_ids of the input, with no loss and no duplicate.

use it_tests::{event_ids_in, Failpoint, World};
use std::time::Duration;

use it_tests::EVENTS;
const REJECTED: &str = "SELECT count(*) FROM ecommerce_events_rejected";
const MINUTES: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn consumer_killed_mid_stream_again_and_again_loses_and_duplicates_nothing() {
    let world = World::new("kill_consumer").await;
    let generated = world.generator(&[
        "--files",
        "20",
        "--events-per-file",
        "1000",
        "--seed",
        "7",
        "--duplicate-rate",
        "0.05",
    ]);
    assert!(generated.success());
    let (expected, rows) = event_ids_in(&world.input_dir());
    assert_eq!(rows, 20_000);
    assert!(expected.len() < rows, "the input has duplicates");
    world.bridge_once(&[]);

    // Small batches so every kill lands between, or inside, many transactions.
    // The same instance id on every restart: the new process takes the partitions over at once.
    let small = [
        "--batch-size",
        "300",
        "--batch-timeout",
        "20ms",
        "--instance-id",
        "restarted",
    ];
    for round in 1..=4 {
        let mut consumer = world.consumer(&small);
        world
            .wait_for_at_least(EVENTS, round * 3_000, MINUTES)
            .await;
        consumer.kill9();
    }
    let _consumer = world.consumer(&small);
    world
        .wait_for_count(EVENTS, expected.len() as i64, MINUTES)
        .await;
    assert_eq!(world.event_ids().await, expected);
    // Every message is covered by exactly one checkpoint, and nothing trickles in afterwards.
    world
        .wait_for_count(
            "SELECT sum(next_offset)::bigint FROM ingest_checkpoints",
            // The rows and the 20 files' end messages.
            rows as i64 + 20,
            MINUTES,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.count(EVENTS).await, expected.len() as i64);
    assert_eq!(world.count(REJECTED).await, 0);
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_killed_mid_file_republishes_it_and_nothing_is_doubled() {
    let world = World::new("kill_bridge").await;
    assert!(world
        .generator(&[
            "--files",
            "1",
            "--events-per-file",
            "150000",
            "--seed",
            "11",
            "--malformed-rate",
            "0"
        ])
        .success());
    let (expected, rows) = event_ids_in(&world.input_dir());
    assert_eq!(rows, 150_000);

    let _consumer = world.consumer(&[]);
    // The bridge dies (an abort, no clean-up, as under kill -9) 60,000 rows into the file, what
    // it sent so far delivered: a point inside the file however fast either side runs.
    let bridge = world.bridge_failing_at(&[], Failpoint::BridgeMidFile, 60_000);
    assert!(!bridge.wait_for_exit(MINUTES).success(), "the bridge died");
    let before_restart = world.count(EVENTS).await;
    assert!(
        (before_restart as usize) < rows,
        "the kill landed mid-file ({before_restart} rows were in)"
    );
    assert_eq!(
        world.files_waiting(),
        1,
        "an unfinished file is never archived"
    );

    world.bridge_once(&[]);
    assert_eq!(world.files_waiting(), 0);
    world
        .wait_for_count(EVENTS, expected.len() as i64, MINUTES)
        .await;
    assert_eq!(world.event_ids().await, expected);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.count(EVENTS).await, expected.len() as i64);
    assert_eq!(
        world.count(REJECTED).await,
        0,
        "republished rows are duplicates, not rejects"
    );
    world.assert_every_row_accounted().await;
}
