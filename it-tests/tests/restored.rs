//! PostgreSQL's checkpoint is the one authority, in both directions: a database restored from an
//! older backup (or emptied, or its checkpoints removed by hand) is behind Kafka's committed
//! offsets, and the consumer reads again from what the database holds instead of trusting Kafka.
//! Every rewind is recorded in `ingest_log_events` as `rewound`.

use it_tests::{event_ids_in, World};
use std::process::Command;
use std::time::Duration;

use it_tests::EVENTS;
use it_tests::PATIENCE as LONG;
const REWOUND: &str = "SELECT count(*) FROM ingest_log_events WHERE kind = 'rewound'";

/// Generates `files` files of 100 events, publishes them and lets a consumer store them all,
/// then stops it cleanly (its offsets committed to Kafka).
async fn ingest(world: &World, files: &str, seed: &str) {
    assert!(world
        .generator(&["--files", files, "--events-per-file", "100", "--seed", seed])
        .success());
    world.bridge_once(&[]);
    let (expected, _) = event_ids_in(&world.archive_dir());
    let consumer = world.consumer(&[]);
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    assert!(consumer.terminate(Duration::from_secs(30)).success());
}

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().expect(program);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The database dropped and made again, empty (`None`) or from a plain-SQL dump.
async fn recreate_database(world: &mut World, dump: Option<&std::path::Path>) {
    world.pool.close().await;
    let (server, name) = world
        .database_url
        .rsplit_once('/')
        .map(|(server, name)| (format!("{server}/postgres"), name.to_owned()))
        .unwrap();
    run(
        "psql",
        &[
            "-X",
            "-q",
            &server,
            "-c",
            &format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
            "-c",
            &format!("CREATE DATABASE \"{name}\""),
        ],
    );
    if let Some(dump) = dump {
        run(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                &world.database_url,
                "-f",
                dump.to_str().unwrap(),
            ],
        );
    }
    world.reconnect().await.expect("reconnect");
}

/// Restarts the consumer on the database as it now is and waits for every archived event.
async fn consume_everything_again(world: &World) -> String {
    let (expected, _) = event_ids_in(&world.archive_dir());
    let consumer = world.consumer(&[]);
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    assert_eq!(world.event_ids().await, expected);
    world.wait_for_at_least(REWOUND, 1, LONG).await;
    let log = consumer.log_text();
    assert!(
        log.contains("committed offset is ahead of PostgreSQL's checkpoint"),
        "the rewind is logged:\n{log}"
    );
    log
}

#[cfg_attr(feature = "docker", ignore = "needs host PostgreSQL tools")]
#[tokio::test(flavor = "multi_thread")]
async fn a_database_restored_from_an_older_backup_is_caught_up_from_its_checkpoint() {
    let mut world = World::new("restored").await;
    ingest(&world, "5", "91").await;
    let dump = world.dir.path().join("backup.sql");
    run(
        "pg_dump",
        &[
            "--no-owner",
            "-f",
            dump.to_str().unwrap(),
            &world.database_url,
        ],
    );
    ingest(&world, "5", "92").await;
    assert_eq!(world.count(EVENTS).await, 1_000);

    // Restored from the backup: 500 events and the checkpoints of that moment, while Kafka's
    // committed offsets are at the end of the topic.
    recreate_database(&mut world, Some(&dump)).await;
    assert_eq!(world.count(EVENTS).await, 500);
    consume_everything_again(&world).await;
    let rewind: (i64, i64) = sqlx::query_as(
        "SELECT sum(from_offset)::int8, sum(to_offset)::int8 FROM ingest_log_events WHERE kind = 'rewound'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    // 500 rows and 5 file ends then, 1,000 rows and 10 file ends now.
    assert_eq!(
        rewind,
        (1_010, 505),
        "from Kafka's offsets back to the checkpoints"
    );
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host PostgreSQL tools")]
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_database_or_removed_checkpoints_are_read_again_from_the_log_start() {
    let mut world = World::new("emptied").await;
    ingest(&world, "4", "93").await;

    // An empty database (a new server, the topic still full): everything is read again.
    recreate_database(&mut world, None).await;
    consume_everything_again(&world).await;

    // Checkpoints removed by hand, the events kept: read again, nothing stored twice, and the
    // files published meanwhile land too.
    sqlx::query("TRUNCATE ingest_checkpoints")
        .execute(&world.pool)
        .await
        .unwrap();
    assert!(world
        .generator(&["--files", "2", "--events-per-file", "100", "--seed", "94"])
        .success());
    world.bridge_once(&[]);
    let before = world.count(REWOUND).await;
    consume_everything_again(&world).await;
    assert!(
        world.count(REWOUND).await > before,
        "the second rewind is recorded"
    );
    assert_eq!(world.count(EVENTS).await, 600);
    world.assert_every_row_accounted().await;
}

/// The database moves back while the consumer keeps running, as a failover to an asynchronous
/// replica that missed the last commits does, at the same address: before, the consumer
/// reconnected and carried on from what it had read, and the 500 events the "replica" never
/// received were never read again (1,000 of 1,500 stored, nothing reported).
#[cfg_attr(feature = "docker", ignore = "needs host PostgreSQL tools")]
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_moves_back_under_a_running_consumer_is_read_again_from_its_checkpoint() {
    let mut world = World::new("moved_back").await;
    let consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    let generate = |world: &World, seed: &str| {
        assert!(world
            .generator(&["--files", "5", "--events-per-file", "100", "--seed", seed])
            .success());
    };
    generate(&world, "93");
    world.wait_for_count(EVENTS, 500, LONG).await;
    let replica = world.dir.path().join("replica.sql");
    run(
        "pg_dump",
        &[
            "--no-owner",
            "-f",
            replica.to_str().unwrap(),
            &world.database_url,
        ],
    );
    generate(&world, "94");
    world.wait_for_count(EVENTS, 1_000, LONG).await;

    // The "replica" takes over: the last 500 events and their checkpoints are gone.
    recreate_database(&mut world, Some(&replica)).await;
    generate(&world, "95");
    world.wait_until_archived(LONG).await;
    let (expected, _) = event_ids_in(&world.archive_dir());
    assert_eq!(expected.len(), 1_500);
    world
        .wait_for_count_showing(EVENTS, 1_500, LONG, || consumer.log_text())
        .await;
    assert_eq!(world.event_ids().await, expected);
    world.wait_for_at_least(REWOUND, 1, LONG).await;
    let log = consumer.log_text();
    assert!(
        log.contains("PostgreSQL's checkpoint is behind what this consumer read"),
        "the move back is logged:\n{log}"
    );
    world.assert_every_row_accounted().await;
}
