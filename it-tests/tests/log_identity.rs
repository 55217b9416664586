//! A checkpoint knows its log: when the broker's storage is wiped or the topic deleted and created
//! again (offsets start at 0 again)
//! while PostgreSQL keeps its checkpoints, the new messages are read, not skipped as replays, and
//! the restart is recorded.

use it_tests::broker::PrivateBroker;
use it_tests::World;
use std::time::Duration;

use it_tests::BROKER_FAULT_PATIENCE as LONG;

/// `files` files of 100 events from the generator, seeded.
fn generate(world: &World, files: &str, seed: &str) {
    assert!(world
        .generator(&["--files", files, "--events-per-file", "100", "--seed", seed])
        .success());
}

/// Kafka's committed offset, of the old log, is ahead of the new log's checkpoint: nothing was
/// lost, so no rewind is recorded beside the restart.
async fn assert_no_rewind(world: &World) {
    let rewound = world
        .count("SELECT count(*) FROM ingest_log_events WHERE kind = 'rewound'")
        .await;
    assert_eq!(rewound, 0, "a restart is not a rewind");
}

/// Deletes the world's topic, and waits for the deletion to settle.
async fn delete_topic(world: &World) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .create()
        .expect("admin");
    let deleted = admin
        .delete_topics(&[&world.topic], &AdminOptions::new())
        .await
        .expect("delete topic");
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
}
use it_tests::EVENTS;

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_broker_is_read_again_from_its_start_and_reported() {
    let mut broker = PrivateBroker::start();
    let world = World::on("log_wiped", &broker.address(), &it_tests::server_url()).await;
    let generate = |files: &str, seed: &str| generate(&world, files, seed);
    generate("2", "41");
    world.bridge_once(&[]);
    let consumer = world.consumer(&[]);
    world.wait_for_count(EVENTS, 200, LONG).await;
    let checkpoints = world
        .count("SELECT sum(next_offset)::int8 FROM ingest_checkpoints")
        .await;
    assert_eq!(checkpoints, 202, "200 rows and 2 file ends");
    assert!(consumer.terminate(Duration::from_secs(30)).success());

    broker.wipe();
    generate("12", "42");
    world.bridge_once(&[]);
    let consumer = world.consumer(&[]);
    world.wait_for_count(EVENTS, 1_400, LONG).await;
    let restarted = world
        .count("SELECT count(*) FROM ingest_log_events WHERE kind = 'restarted'")
        .await;
    assert!(restarted >= 1, "the restart is recorded ({restarted})");
    assert!(
        consumer
            .log_text()
            .contains("reading it again from its start"),
        "the restart is logged"
    );
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_deleted_and_created_again_is_read_from_its_start_and_reported() {
    let world = World::new("topic_recreated").await;
    let generate = |files: &str, seed: &str| generate(&world, files, seed);
    generate("2", "43");
    world.bridge_once(&[]);
    let consumer = world.consumer(&[]);
    world.wait_for_count(EVENTS, 200, LONG).await;
    assert!(consumer.terminate(Duration::from_secs(30)).success());

    // Deleted and created again (by the bridge, on its next run): offsets start at 0 again.
    delete_topic(&world).await;
    generate("3", "44");
    world.bridge_once(&[]);
    let consumer = world.consumer(&[]);
    world.wait_for_count(EVENTS, 500, LONG).await;
    let restarted = world
        .count("SELECT count(*) FROM ingest_log_events WHERE kind = 'restarted'")
        .await;
    assert!(restarted >= 1, "the restart is recorded ({restarted})");
    assert!(consumer
        .log_text()
        .contains("reading it again from its start"));
    assert_no_rewind(&world).await;
    world.assert_every_row_accounted().await;
}

/// The same while the consumer keeps running through it, the new log shorter than the old
/// checkpoints (librdkafka resets the fetch to the new log's start with a warning and no
/// rebalance): before, every new event was taken for a replay of what was stored and skipped.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_made_again_under_a_running_consumer_is_read_from_its_start_and_reported() {
    let world = World::new("topic_again_live").await;
    let generate = |files: &str, seed: &str| generate(&world, files, seed);
    generate("3", "47");
    world.bridge_once(&[]);
    let mut consumer = world.consumer(&[]);
    world.wait_for_count(EVENTS, 300, LONG).await;

    delete_topic(&world).await;
    // One file: about 34 messages a partition where the checkpoints stand near 101.
    generate("1", "48");
    world.bridge_once(&[]);
    world
        .wait_for_count_showing(EVENTS, 400, LONG, || consumer.log_text())
        .await;
    let restarted = world
        .count("SELECT count(*) FROM ingest_log_events WHERE kind = 'restarted'")
        .await;
    assert!(restarted >= 1, "the restart is recorded ({restarted})");
    assert!(consumer.is_running());
    assert_no_rewind(&world).await;
    world.assert_every_row_accounted().await;
}

/// The same with a new log longer than the old one: the consumer's next fetch offset exists in
/// the new log, so nothing is reset or refused, yet the messages before it are new.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_made_again_longer_under_a_running_consumer_is_read_from_its_start() {
    let world = World::new("topic_again_longer").await;
    let generate = |files: &str, seed: &str| generate(&world, files, seed);
    generate("3", "57");
    world.bridge_once(&[]);
    let consumer = world.consumer(&[]);
    world.wait_for_count(EVENTS, 300, LONG).await;

    delete_topic(&world).await;
    // Six files: about 200 messages a partition where the checkpoints stand near 101.
    generate("6", "58");
    world.bridge_once(&[]);
    world
        .wait_for_count_showing(EVENTS, 900, LONG, || consumer.log_text())
        .await;
    let restarted = world
        .count("SELECT count(*) FROM ingest_log_events WHERE kind = 'restarted'")
        .await;
    assert!(restarted >= 1, "the restart is recorded ({restarted})");
    assert_no_rewind(&world).await;
    world.assert_every_row_accounted().await;
}
