//! A checkpoint knows its log: when the broker's storage is wiped (offsets start at 0 again)
//! while PostgreSQL keeps its checkpoints, the new messages are read, not skipped as replays, and
//! the restart is recorded.

use it_tests::services::PrivateBroker;
use it_tests::World;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(180);
const EVENTS: &str = "SELECT count(*) FROM ecommerce_events";

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_broker_is_read_again_from_its_start_and_reported() {
    let mut broker = PrivateBroker::start();
    let world = World::on("log_wiped", &broker.address(), &it_tests::server_url()).await;
    let generate = |files: &str, seed: &str| {
        assert!(world
            .generator(&["--files", files, "--events-per-file", "100", "--seed", seed])
            .success());
    };
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
