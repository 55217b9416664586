//! Classification depends on the log alone: consumers whose clocks are three hours behind and
//! three hours ahead (`PIPELINE_CLOCK_SKEW`, see `consumer/src/clock.rs` for why not libfaketime)
//! store and quarantine exactly what a consumer with the right clock does, from the same topic,
//! each in its own database.

use it_tests::World;
use std::collections::BTreeSet;
use std::time::Duration;

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
