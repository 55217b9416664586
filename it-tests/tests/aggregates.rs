//! The live aggregates equal a full scan: after duplicates, replays, late events, a rebalance and
//! a consumer killed mid-stream; after an operator's deletes, updates and truncate; and after an
//! online rebuild over events stored before them, while the consumer writes; and when an
//! operator's deletes race inserts or each other, or two rebuilds overlap.

use it_tests::{World, EVENTS, PATIENCE as LONG, RECONCILED_FILES};
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

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
    world.assert_every_row_accounted().await;
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
    // No completeness assertion: events were written straight into the table,
    // outside any file.
}

/// Stores one event of `user` at `time` (UTC) with the aggregates' triggers, as any writer does.
const INSERT_ONE: &str = "INSERT INTO ecommerce_events
    (event_id, user_id, event_type, product_id, price, event_time, source_file, source_line, landed_at)
    VALUES ($1, $2, 'view', 10, 1.00, $3::timestamptz, 'race.csv', 1, now())";

async fn connect(world: &World) -> PgConnection {
    PgConnection::connect(&world.database_url).await.unwrap()
}

async fn insert_one(db: &mut PgConnection, id: &str, user: i32, time: &str) {
    sqlx::query(INSERT_ONE)
        .bind(id)
        .bind(user)
        .bind(time)
        .execute(db)
        .await
        .unwrap();
}

/// Runs `sql` in a session of its own and returns once it either finished or waits on a lock
/// (with the aggregates' serialisation it waits; without, it ran straight through).
async fn run_beside(world: &World, sql: &'static str) -> JoinHandle<()> {
    let mut db = connect(world).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        sqlx::query(sql).execute(&mut db).await.unwrap();
    });
    let mut admin = connect(world).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !task.is_finished() && Instant::now() < deadline {
        let waiting: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false)
             FROM pg_stat_activity WHERE pid = $1",
        )
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn the_aggregates_stay_exact_when_deletes_race_inserts_and_rebuilds_overlap() {
    let world = World::new("aggregates_races").await;
    assert!(world
        .consumer(&["--migrate-only"])
        .wait_for_exit(LONG)
        .success());
    let mut a = connect(&world).await;

    // An operator's delete of a user's only event of a day while an insert of another event of
    // that user, stage and day is uncommitted: the user keeps a stored event, so stays counted.
    insert_one(&mut a, "race-x", 4242, "2026-11-02 10:00:00+00").await;
    sqlx::query("BEGIN").execute(&mut a).await.unwrap();
    insert_one(&mut a, "race-y", 4242, "2026-11-02 11:00:00+00").await;
    let delete = run_beside(
        &world,
        "DELETE FROM ecommerce_events WHERE event_id = 'race-x'",
    )
    .await;
    sqlx::query("COMMIT").execute(&mut a).await.unwrap();
    delete.await.unwrap();
    world.assert_aggregates_exact().await;

    // Two deletes at once of a user's two events of a day: the user leaves the set.
    insert_one(&mut a, "race-z1", 4343, "2026-11-03 10:00:00+00").await;
    insert_one(&mut a, "race-z2", 4343, "2026-11-03 11:00:00+00").await;
    sqlx::raw_sql("BEGIN; DELETE FROM ecommerce_events WHERE event_id = 'race-z1'")
        .execute(&mut a)
        .await
        .unwrap();
    let delete = run_beside(
        &world,
        "DELETE FROM ecommerce_events WHERE event_id = 'race-z2'",
    )
    .await;
    sqlx::query("COMMIT").execute(&mut a).await.unwrap();
    delete.await.unwrap();
    world.assert_aggregates_exact().await;
    let users: i64 = world
        .count("SELECT count(*) FROM agg_stage_users WHERE user_id = 4343")
        .await;
    assert_eq!(users, 0, "a user with no stored event is in no set");

    // Two overlapping rebuilds: a start beside a step under way counts nothing twice.
    for id in 0..50 {
        insert_one(&mut a, &format!("race-r{id}"), id, "2026-11-04 10:00:00+00").await;
    }
    sqlx::raw_sql("SELECT agg_rebuild_start(); BEGIN; SELECT agg_rebuild_step(100000000)")
        .execute(&mut a)
        .await
        .unwrap();
    let start = run_beside(&world, "SELECT agg_rebuild_start()").await;
    sqlx::query("COMMIT").execute(&mut a).await.unwrap();
    start.await.unwrap();
    while operator_tools::aggregates::rebuild_step(&mut a, 1_000_000)
        .await
        .unwrap()
        > 0
    {}
    world.assert_aggregates_exact().await;
    // No completeness assertion: an operator deletes stored events by hand.
}
