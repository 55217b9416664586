//! Classification depends on the log alone: consumers whose clocks are three hours behind and
//! three hours ahead (`PIPELINE_CLOCK_SKEW`, see `consumer/src/clock.rs` for why not libfaketime)
//! store and quarantine exactly what a consumer with the right clock does, from the same topic,
//! each in its own database.

use it_tests::World;
use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use it_tests::PATIENCE as LONG;

/// What a database ended up with: the stored ids, and each quarantined row with its reason.
async fn outcome(world: &World) -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let rejected: Vec<(String, String)> =
        sqlx::query_as("SELECT coalesce(event_id, ''), reason_code FROM ecommerce_events_rejected")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    (world.event_ids().await, rejected.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_with_skewed_clocks_classify_every_message_alike() {
    let right = World::new("clock_right").await;
    assert!(right
        .generator(&[
            "--files",
            "4",
            "--events-per-file",
            "100",
            "--seed",
            "33",
            "--late-rate",
            "0.05",
            "--duplicate-rate",
            "0.05",
            "--malformed-rate",
            "0.02",
        ])
        .success());
    // Events ahead of their file: 10 minutes (allowed, 15 by default) and 2 hours (future).
    let now = chrono::Utc::now();
    let at = |minutes: i64| {
        (now + chrono::TimeDelta::minutes(minutes))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    right.drop_csv(
        "ahead.csv",
        &format!(
            "soon,1,view,10,1.00,{}\nfar,1,view,10,1.00,{}\n",
            at(10),
            at(120)
        ),
    );
    right.bridge_once(&[]);

    let _consumer = right.consumer(&[]);
    let behind = World::new("clock_behind").await;
    let ahead = World::new("clock_ahead").await;
    let mut skewed = Vec::new();
    for (world, offset) in [(&behind, "-3h"), (&ahead, "+3h")] {
        let group = it_tests::unique("it-clock");
        let args = [
            "--brokers",
            &right.brokers,
            "--topic",
            &right.topic,
            "--group",
            &group,
            "--database-url",
            &world.database_url,
        ];
        let env = [("PIPELINE_CLOCK_SKEW", offset)];
        skewed.push(world.spawn_with_env("consumer", &args, &env));
    }
    // Every row of the five files accounted for, in each database.
    for world in [&right, &behind, &ahead] {
        world
            .wait_for_count(it_tests::RECONCILED_FILES, 5, LONG)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reference = outcome(&right).await;
    assert!(reference.0.contains("soon"));
    assert!(
        reference
            .1
            .contains(&("far".to_owned(), "future".to_owned())),
        "{:?}",
        reference.1
    );
    assert_eq!(outcome(&behind).await, reference, "a clock 3 h behind");
    assert_eq!(outcome(&ahead).await, reference, "a clock 3 h ahead");
    for consumer in &skewed {
        let log = consumer.log_text();
        assert!(log.contains("the consumer's clock is skewed"), "{log}");
        assert!(!log.contains("watermark reset"), "{log}");
    }
}

/// A file of ten events dated `dated`, its modification time set to `modified`, renamed into
/// the input folder (as a writer on another host would, its clock ahead or behind).
fn land_with_mtime(world: &World, name: &str, dated: SystemTime, modified: SystemTime) {
    let dated = chrono::DateTime::<chrono::Utc>::from(dated).format("%Y-%m-%dT%H:%M:%SZ");
    let mut body = it_tests::HEADER.to_owned();
    for n in 0..10 {
        body.push_str(&format!("{name}-{n},1,view,10,1.00,{dated}\n"));
    }
    let input = world.input_dir();
    std::fs::create_dir_all(&input).unwrap();
    let temporary = input.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, body).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&temporary)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    std::fs::rename(&temporary, input.join(format!("{name}.csv"))).unwrap();
}

/// The bridge's settle rules measure a file's quiet time; a writer whose clock is ahead stamps
/// modification times in the future, which the host's clock never "passes" in time. Each file
/// lands: one there before the bridge started (settled by the bridge's own watch) and ones
/// renamed in while it runs, an hour, a day and ten years ahead, and one from 1970. A file
/// landing is the host's claim, not the writer's clock: events as far ahead as their file's
/// modification time are still `future`.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn files_stamped_by_a_clock_far_ahead_or_behind_are_each_taken() {
    let world = World::new("clock_mtime").await;
    let (now, hour) = (SystemTime::now(), Duration::from_secs(3600));
    let decade = 3650 * 24 * hour;
    land_with_mtime(&world, "before_start", now, now + 24 * hour);
    let _bridge = world.bridge(&[]);
    let _consumer = world.consumer(&["--late-policy", "quarantine"]);
    land_with_mtime(&world, "hour_ahead", now, now + hour);
    land_with_mtime(&world, "day_ahead", now, now + 24 * hour);
    land_with_mtime(&world, "decade_ahead", now, now + decade);
    land_with_mtime(&world, "epoch", now, UNIX_EPOCH + Duration::from_secs(1));
    land_with_mtime(&world, "all_ahead", now + decade, now + decade);
    world
        .wait_for_count(
            "SELECT count(*) FROM ingest_files WHERE reconciled_at IS NOT NULL",
            6,
            LONG,
        )
        .await;
    assert_eq!(
        world.files_waiting(),
        0,
        "a file was left in the input folder"
    );
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM ecommerce_events_rejected \
                 WHERE reason_code = 'future' AND event_id LIKE 'all_ahead-%'"
            )
            .await,
        10,
        "events a decade ahead passed because their file's modification time was"
    );
    assert_eq!(
        world.event_ids().await.len(),
        50,
        "every other event is stored"
    );
    world.assert_every_row_accounted().await;
}

/// A backfill of an archive copied or restored later (`cp -a`, `rsync -a` and `tar x` keep the
/// modification time; the change time becomes the copy's): a row that was `future` when its
/// file landed ten minutes ago is `future` again. Before, the backfill judged it against the
/// copy's time, stored it and let it move the watermark.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_of_a_copied_archive_judges_future_as_when_its_files_landed() {
    let world = World::new("copied_archive").await;
    let archive = world.dir.path().join("restored");
    std::fs::create_dir_all(&archive).unwrap();
    let now = chrono::Utc::now();
    let at = |minutes: i64| {
        (now + chrono::TimeDelta::minutes(minutes))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let path = archive.join("old.csv");
    std::fs::write(
        &path,
        format!(
            "{}past-1,1,view,10,1.00,{}\nahead-1,1,view,10,1.00,{}\n",
            it_tests::HEADER,
            at(-20),
            at(-1)
        ),
    )
    .unwrap();
    // Written and landed ten minutes ago, copied now.
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    let _consumer = world.consumer(&["--max-future", "1m"]);
    let (status, log) = world.backfill(&archive, &[]);
    assert!(status.success(), "{log}");
    world
        .wait_for_count(
            "SELECT count(*) FROM ecommerce_events_rejected WHERE reason_code = 'future' AND event_id = 'ahead-1'",
            1,
            LONG,
        )
        .await;
    world.wait_for_count(it_tests::EVENTS, 1, LONG).await;
    world.assert_every_row_accounted().await;
}
