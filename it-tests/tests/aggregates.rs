//! The live aggregates equal a full scan: after duplicates, replays, late events, a rebalance and
//! a consumer killed mid-stream; after an operator's deletes, updates and truncate; and after an
//! online rebuild over events stored before them, while the consumer writes.

use it_tests::{World, EVENTS, PATIENCE as LONG, RECONCILED_FILES};

const MESSAGES: &str = "SELECT coalesce(sum(next_offset), 0)::int8 FROM ingest_checkpoints";

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn the_aggregates_equal_a_full_scan_after_duplicates_replays_late_events_and_a_rebalance() {
    let world = World::new("aggregates_exact").await;
    assert!(world
        .generator(&[
            "--files",
            "24",
            "--events-per-file",
            "400",
            "--seed",
            "22",
            "--duplicate-rate",
            "0.05",
            "--late-rate",
            "0.05",
            "--malformed-rate",
            "0.02",
        ])
        .success());
    let mut first = world.consumer(&["--batch-size", "500"]);
    let bridge = world.bridge(&[]);
    world.wait_for_at_least(EVENTS, 1_000, LONG).await;
    // A second member joins (a rebalance), then the first dies mid-stream: its partitions are
    // read again from PostgreSQL's checkpoints by the survivor.
    let _second = world.consumer(&["--batch-size", "500"]);
    world.wait_for_at_least(EVENTS, 3_000, LONG).await;
    first.kill9();
    world.wait_until_archived(LONG).await;
    drop(bridge);
    world.wait_for_count(RECONCILED_FILES, 24, LONG).await;
    let messages = world.count(MESSAGES).await;
    // Every file published again: all of it arrives as duplicates, none counted twice.
    let (status, log) = world.backfill(&world.archive_dir(), &[]);
    assert!(status.success(), "backfill failed: {status}\n{log}");
    world.wait_for_at_least(MESSAGES, 2 * messages, LONG).await;
    world.assert_aggregates_exact().await;

    let (events, late): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE is_late) FROM ecommerce_events")
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert!(late > 0, "the input had late events");
    let (kept_events, kept_late): (i64, i64) =
        sqlx::query_as("SELECT sum(events)::int8, sum(late)::int8 FROM agg_totals")
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert_eq!((kept_events, kept_late), (events, late));
    // Late events count in the minute they are dated: hours before the rest.
    let oldest_minute: i64 = world
        .count(
            "SELECT sum(events)::int8 FROM agg_events_per_minute
             WHERE minute = (SELECT date_trunc('minute', min(event_time), 'UTC') FROM ecommerce_events)",
        )
        .await;
    assert!(oldest_minute > 0);
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn an_online_rebuild_counts_older_events_exactly_while_the_consumer_writes() {
    let world = World::new("aggregates_rebuild").await;
    let consumer = world.consumer(&["--batch-size", "300"]);
    world
        .wait_for_count("SELECT count(*) FROM agg_state", 1, LONG)
        .await;
    // Events stored before the aggregates existed: written without them counting, the state the
    // migration leaves on a table with rows. Their ids interleave with the generator's.
    for statement in [
        "ALTER TABLE ecommerce_events DISABLE TRIGGER agg_events_inserted",
        "INSERT INTO ecommerce_events
             (event_id, user_id, event_type, product_id, price, event_time, is_late,
              source_file, source_line, landed_at)
         SELECT md5(g::text), 1 + g % 700,
                (ARRAY['view', 'add_to_cart', 'remove_from_cart', 'purchase'])[1 + g % 4],
                1000 + g % 40, (g % 90) + 0.5, now() - g * interval '7 seconds', g % 11 = 0,
                'before.csv', g, now()
         FROM generate_series(1, 30000) g",
        "ALTER TABLE ecommerce_events ENABLE TRIGGER agg_events_inserted",
        "UPDATE agg_state SET counted_up_to = ''",
    ] {
        sqlx::query(statement).execute(&world.pool).await.unwrap();
    }
    let _bridge = world.bridge(&[]);
    let generator = world.spawn(
        "generator",
        &[
            "--output-dir",
            world.input_dir().to_str().unwrap(),
            "--files",
            "20",
            "--events-per-file",
            "300",
            "--interval",
            "100ms",
            "--seed",
            "23",
            "--duplicate-rate",
            "0.05",
            "--malformed-rate",
            "0.05",
        ],
    );
    world.wait_for_at_least(EVENTS, 30_500, LONG).await;
    let rebuild = world.spawn(
        "aggregates",
        &[
            "--database-url",
            &world.database_url,
            "rebuild",
            "--resume",
            "--step-rows",
            "1000",
        ],
    );
    let (status, log) = rebuild.wait_with_log(LONG);
    assert!(status.success(), "rebuild failed: {status}\n{log}");
    assert!(log.contains("aggregates rebuilt"), "{log}");
    assert!(generator.wait_for_exit(LONG).success());
    world.wait_until_archived(LONG).await;
    world.wait_for_count(RECONCILED_FILES, 20, LONG).await;
    world.assert_aggregates_exact().await;
    drop(consumer);

    // An operator's hand on the table: every change moves the aggregates with it.
    for statement in [
        "DELETE FROM ecommerce_events WHERE event_id IN
             (SELECT event_id FROM ecommerce_events ORDER BY event_id LIMIT 500)",
        "UPDATE ecommerce_events SET price = price + 1, user_id = user_id + 1,
             event_time = event_time - interval '2 days'
         WHERE event_id IN (SELECT event_id FROM ecommerce_events ORDER BY event_id DESC LIMIT 500)",
        "UPDATE ecommerce_events_rejected SET resolved_at = now()
         WHERE id IN (SELECT id FROM ecommerce_events_rejected LIMIT 3)",
    ] {
        sqlx::query(statement).execute(&world.pool).await.unwrap();
        world.assert_aggregates_exact().await;
    }
    sqlx::query("TRUNCATE ecommerce_events")
        .execute(&world.pool)
        .await
        .unwrap();
    world.assert_aggregates_exact().await;
    let totals: i64 = world
        .count("SELECT count(*) FROM agg_events_per_minute")
        .await;
    assert_eq!(totals, 0);
}
