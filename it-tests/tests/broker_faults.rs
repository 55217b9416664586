//! What a real Kafka cluster does under the pipeline: a partition leader killed mid-stream (three
//! nodes, replication factor 3, `min.insync.replicas=2`), consumers killed under dynamic
//! membership, partitions added to the live topic, and messages deleted before they were read.

use it_tests::broker::KafkaCluster;
use it_tests::{event_ids_in, World};
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use it_tests::BROKER_FAULT_PATIENCE as LONG;
use it_tests::EVENTS;

fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "it-broker-faults-probe")
        .set("enable.auto.commit", "false");
    config
}

/// The node that leads `partition` of `topic` now.
fn leader_of(brokers: &str, topic: &str, partition: i32) -> i32 {
    let probe: BaseConsumer = client_config(brokers).create().expect("probe");
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == partition)
        .map(|p| p.leader())
        .expect("the partition has a leader")
}

/// Waits until the generator wrote `files` files and the bridge archived all of them.
async fn wait_until_archived(world: &World, files: usize) {
    let deadline = Instant::now() + LONG;
    loop {
        let archived = std::fs::read_dir(world.archive_dir())
            .map(|dir| dir.count())
            .unwrap_or(0);
        if archived >= files && world.files_waiting() == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{archived} of {files} files archived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_partition_leader_killed_mid_stream_fails_over_and_nothing_is_lost_or_doubled() {
    let mut cluster = KafkaCluster::start(3);
    let world = World::on("failover", &cluster.bootstrap(), &it_tests::server_url()).await;
    let replicated = ["--replication-factor", "3"];
    let bridge = world.bridge(&replicated);
    let consumers = [world.consumer(&replicated), world.consumer(&replicated)];
    let input = world.input_dir();
    let generator = world.spawn(
        "generator",
        &[
            "--output-dir",
            input.to_str().unwrap(),
            "--files",
            "30",
            "--events-per-file",
            "200",
            "--interval",
            "150ms",
            "--seed",
            "1811",
        ],
    );
    world.wait_for_at_least(EVENTS, 600, LONG).await;

    // Mid-stream: the leader of partition 0 dies at once, and comes back only after the rest of
    // the input has been published to its successors.
    let leader = leader_of(&world.brokers, &world.topic, 0);
    cluster.node(leader).kill9();
    let generated = generator.wait_for_exit(LONG);
    assert!(generated.success());
    wait_until_archived(&world, 30).await;
    let successor = leader_of(&cluster.node(leader % 3 + 1).address(), &world.topic, 0);
    assert_ne!(successor, leader, "partition 0 moved to another leader");
    // Every archived file's rows were acknowledged by the in-sync replicas: they are all there
    // while the old leader is still down.
    let (expected, rows) = event_ids_in(&world.archive_dir());
    assert_eq!(rows, 6_000);
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    cluster.node(leader).restart();
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(world.event_ids().await, expected);
    world
        .wait_for_count(it_tests::RECONCILED_FILES, 30, LONG)
        .await;
    // Nothing doubled: no row of any file was stored or counted twice.
    let counted = world
        .count("SELECT sum(rows_inserted + rows_duplicate)::int8 FROM ingest_files")
        .await;
    assert_eq!(counted, 6_000, "each row counted once");
    drop((bridge, consumers));
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn consumers_killed_under_dynamic_membership_are_expired_and_their_partitions_reassigned() {
    let world = World::new("dynamic").await;
    let six = ["--partitions", "6"];
    let mut consumers: Vec<_> = (0..3).map(|_| world.consumer(&six)).collect();
    assert!(world
        .generator(&["--files", "6", "--events-per-file", "100", "--seed", "61"])
        .success());
    world.bridge_once(&six);
    world.wait_for_count(EVENTS, 600, LONG).await;
    let before = world.event_ids().await;

    // Two of three die without leaving the group (no LeaveGroup, no commit): the broker must
    // expire them after the session timeout and give the survivor all six partitions.
    consumers[0].kill9();
    consumers[1].kill9();
    let killed = Instant::now();
    assert!(world
        .generator(&["--files", "12", "--events-per-file", "100", "--seed", "62"])
        .success());
    world.bridge_once(&six);
    let (expected, _) = event_ids_in(&world.archive_dir());
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    println!("caught up {:?} after the kills", killed.elapsed());
    assert_eq!(world.event_ids().await, expected);
    let after: Vec<String> = expected.difference(&before).cloned().collect();
    let partitions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT kafka_partition) FROM ecommerce_events WHERE event_id = ANY($1)",
    )
    .bind(&after)
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        partitions, 6,
        "rows published after the kills stored from every partition"
    );
    let survivor = consumers[2].log_text();
    assert!(
        survivor.contains("partitions assigned"),
        "the survivor was assigned partitions:\n{survivor}"
    );
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_to_the_live_topic_are_consumed_without_a_restart() {
    let world = World::new("grow").await;
    let _consumer = world.consumer(&[]);
    let bridge = world.bridge(&[]);
    assert!(world
        .generator(&["--files", "2", "--events-per-file", "100", "--seed", "71"])
        .success());
    world.wait_for_count(EVENTS, 200, LONG).await;

    let admin: AdminClient<DefaultClientContext> =
        client_config(&world.brokers).create().expect("admin");
    let grown = admin
        .create_partitions([&NewPartitions::new(&world.topic, 6)], &AdminOptions::new())
        .await
        .expect("create partitions");
    assert!(grown.iter().all(Result::is_ok), "{grown:?}");
    let added = Instant::now();

    // The bridge and the consumer see the new partitions at their next metadata refresh
    // (topic.metadata.refresh.interval.ms, 10 s by default here): files keep coming meanwhile.
    let deadline = Instant::now() + LONG;
    let mut seed = 72;
    loop {
        assert!(world
            .generator(&[
                "--files",
                "1",
                "--events-per-file",
                "100",
                "--seed",
                &seed.to_string()
            ])
            .success());
        seed += 1;
        let new = world
            .count("SELECT count(DISTINCT kafka_partition) FROM ecommerce_events WHERE kafka_partition >= 3")
            .await;
        if new == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rows of {new} of 3 new partitions"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "new partitions consumed {:?} after they were added",
        added.elapsed()
    );
    wait_until_archived(&world, (seed - 72 + 2) as usize).await;
    let (expected, _) = event_ids_in(&world.archive_dir());
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    assert_eq!(
        world.event_ids().await,
        expected,
        "none of their rows skipped"
    );
    drop(bridge);
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn messages_deleted_before_they_were_read_are_recorded_as_a_gap_and_the_rest_stored() {
    let world = World::new("deleted").await;
    let one = ["--partitions", "1"];
    assert!(world
        .generator(&["--files", "2", "--events-per-file", "100", "--seed", "81"])
        .success());
    world.bridge_once(&one);
    let consumer = world.consumer(&one);
    world.wait_for_count(EVENTS, 200, LONG).await;
    assert!(consumer.terminate(Duration::from_secs(30)).success());
    let checkpoint = world
        .count("SELECT next_offset FROM ingest_checkpoints WHERE kafka_partition = 0")
        .await;

    // While no consumer runs, 300 more rows arrive and the first 120 of them are deleted
    // (DeleteRecords, as retention would).
    assert!(world
        .generator(&["--files", "3", "--events-per-file", "100", "--seed", "82"])
        .success());
    world.bridge_once(&one);
    let cut = checkpoint + 120;
    let deleted = keys_between(&world.brokers, &world.topic, checkpoint, cut);
    delete_records_before(&world, cut).await;

    let consumer = world.consumer(&one);
    let (all, _) = event_ids_in(&world.archive_dir());
    let expected: BTreeSet<String> = all.difference(&deleted).cloned().collect();
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    assert_eq!(world.event_ids().await, expected, "what was left is stored");
    let gap: (i64, i64) = sqlx::query_as(
        "SELECT from_offset, to_offset FROM ingest_log_events WHERE kind = 'gap' AND kafka_partition = 0",
    )
    .fetch_one(&world.pool)
    .await
    .expect("the gap is recorded");
    assert_eq!(gap, (checkpoint, cut), "the gap names the deleted offsets");
    assert!(
        consumer
            .log_text()
            .contains("messages were removed from the log before they were read"),
        "the gap is logged"
    );
}

/// Deletes partition 0's messages before `cut` (DeleteRecords, as retention would).
async fn delete_records_before(world: &World, cut: i64) {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&world.brokers).create().expect("admin");
    let mut up_to = TopicPartitionList::new();
    up_to
        .add_partition_offset(&world.topic, 0, Offset::Offset(cut))
        .unwrap();
    admin
        .delete_records(&up_to, &AdminOptions::new())
        .await
        .expect("delete records");
}

/// The keys (event ids) of partition 0's messages in `from..to`.
fn keys_between(brokers: &str, topic: &str, from: i64, to: i64) -> BTreeSet<String> {
    keys_from(brokers, topic, from)
        .into_iter()
        .filter(|(offset, _)| *offset < to)
        .map(|(_, key)| key)
        .collect()
}

/// Every message of partition 0 from `from` to the log's end: offset and key.
fn keys_from(brokers: &str, topic: &str, from: i64) -> Vec<(i64, String)> {
    let probe: BaseConsumer = client_config(brokers).create().expect("probe");
    let (_, end) = probe
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(from))
        .unwrap();
    probe.assign(&assignment).expect("assign");
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut next = from;
    while next < end {
        assert!(Instant::now() < deadline, "read {next} of {end}");
        if let Some(message) = probe.poll(Duration::from_millis(500)) {
            let message = message.expect("message");
            next = message.offset() + 1;
            let key = message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            keys.push((message.offset(), key.unwrap_or_default()));
        }
    }
    keys
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn retention_overtaking_a_running_consumer_is_recorded_as_a_gap() {
    let world = World::new("overtaken").await;
    let one = ["--partitions", "1"];
    assert!(world
        .generator(&["--files", "2", "--events-per-file", "100", "--seed", "83"])
        .success());
    world.bridge_once(&one);
    // Small fetches and a small prefetch queue, so the consumer holds little beyond the batch it
    // writes: retention can overtake where it reads.
    let small = "message.max.bytes=1000,fetch.max.bytes=1024,max.partition.fetch.bytes=1024,queued.max.messages.kbytes=1,queued.min.messages=1";
    let consumer = world.consumer_with_env(
        &["--partitions", "1", "--batch-size", "20"],
        &[("KAFKA_OPTIONS", small)],
    );
    world.wait_for_count(EVENTS, 200, LONG).await;
    let read = world
        .count("SELECT next_offset FROM ingest_checkpoints WHERE kafka_partition = 0")
        .await;

    // The consumer's next write waits behind an operator's lock while 300 more rows arrive and
    // retention removes most of them, beyond what the consumer can have fetched.
    let mut lock = sqlx::pool::PoolConnection::detach(world.pool.acquire().await.unwrap());
    sqlx::raw_sql("BEGIN; LOCK TABLE ingest_checkpoints IN ACCESS EXCLUSIVE MODE")
        .execute(&mut lock)
        .await
        .unwrap();
    assert!(world
        .generator(&["--files", "3", "--events-per-file", "100", "--seed", "84"])
        .success());
    // In record batches of a few rows: a fetch returns at least one whole batch.
    let bridge = world.bridge_with_env(
        &["--once", "--partitions", "1"],
        &[("KAFKA_OPTIONS", "batch.size=1000")],
    );
    assert!(bridge.wait_for_exit(LONG).success());
    let written = keys_from(&world.brokers, &world.topic, read);
    let cut = read + 250;
    delete_records_before(&world, cut).await;
    sqlx::query("COMMIT").execute(&mut lock).await.unwrap();

    // The gap is recorded from wherever the consumer had read to, up to the new log start.
    let deadline = Instant::now() + LONG;
    let (from, to) = loop {
        let gap: Option<(i64, i64)> = sqlx::query_as(
            "SELECT from_offset, to_offset FROM ingest_log_events
             WHERE kind = 'gap' AND kafka_partition = 0",
        )
        .fetch_optional(&world.pool)
        .await
        .unwrap();
        if let Some(gap) = gap {
            break gap;
        }
        assert!(
            Instant::now() < deadline,
            "no gap recorded:\n{}",
            consumer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(to, cut, "the gap ends where the log now starts");
    let gaps = world
        .count("SELECT count(*) FROM ingest_log_events WHERE kind = 'gap'")
        .await;
    assert_eq!(gaps, 1, "recorded once");
    assert!(from >= read && from < cut, "the gap starts at {from}");
    // Everything else is stored: what was read before the gap and what is left after it.
    let deleted: BTreeSet<String> = written
        .iter()
        .filter(|(offset, _)| (from..to).contains(offset))
        .map(|(_, key)| key.clone())
        .collect();
    let (all, _) = event_ids_in(&world.archive_dir());
    let expected: BTreeSet<String> = all.difference(&deleted).cloned().collect();
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    assert_eq!(world.event_ids().await, expected);
    assert!(
        consumer
            .log_text()
            .contains("messages were removed from the log before they were read"),
        "the gap is logged"
    );
}
