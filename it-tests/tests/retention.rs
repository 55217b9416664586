//! Retention: `retention apply` drops whole time ranges of events while the pipeline runs, the
//! aggregates, the ledger and `status` stay true, and an event of a dropped range that arrives
//! again is quarantined `expired`, never taken for a duplicate of a row that is gone.

use it_tests::{binary_path, World, EVENTS, PATIENCE, RECONCILED_FILES};
use std::fmt::Write;
use std::process::{Command, Output};

const HORIZON: &str = "2026-11-01T00:00:00Z";
const BEFORE_HORIZON: &str = "SELECT count(*) FROM ecommerce_events
    WHERE event_time < '2026-11-01T00:00:00Z'";
const EXPIRED: &str =
    "SELECT count(*) FROM ecommerce_events_rejected WHERE reason_code = 'expired'";

/// Rows `id-from..id-to` dated `hours` apart from `start`, users and types in turn.
fn rows(id: &str, range: std::ops::Range<u32>, start: &str, hours: i64) -> String {
    let start: chrono::DateTime<chrono::Utc> = start.parse().unwrap();
    let mut out = String::new();
    for i in range {
        let time = start + chrono::TimeDelta::hours(hours * i64::from(i));
        let kind = ["view", "add_to_cart", "purchase"][i as usize % 3];
        let time = time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        writeln!(
            out,
            "{id}-{i},{},{kind},{},{}.25,{time}",
            1 + i % 7,
            100 + i % 5,
            1 + i % 9
        )
        .unwrap();
    }
    out
}

fn retention(world: &World, args: &[&str]) -> Output {
    Command::new(binary_path("retention"))
        .args(args)
        .args(["--database-url", &world.database_url])
        .output()
        .unwrap()
}

fn succeeded(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_a_time_range_and_an_event_of_it_arriving_again_is_expired() {
    let world = World::new("retention_drop").await;
    let _consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    world.drop_csv("old.csv", &rows("old", 0..50, "2026-10-01T00:00:00Z", 6));
    world.drop_csv("new.csv", &rows("new", 0..50, "2026-11-20T00:00:00Z", 1));
    world.wait_for_count(RECONCILED_FILES, 2, PATIENCE).await;
    assert_eq!(world.count(EVENTS).await, 100);

    // Small steps: the drop goes in several transactions.
    let stdout = succeeded(&retention(
        &world,
        &["apply", "--before", HORIZON, "--step-rows", "7"],
    ));
    assert!(stdout.contains("dropped 50 events"), "{stdout}");
    assert_eq!(world.count(EVENTS).await, 50);
    assert_eq!(world.count(BEFORE_HORIZON).await, 0);
    let expired_in_ledger = world
        .count("SELECT rows_expired FROM ingest_files WHERE file_name = 'old.csv'")
        .await;
    assert_eq!(expired_in_ledger, 50, "the ledger counts the dropped rows");
    world.assert_every_row_accounted().await;
    world.assert_aggregates_exact().await;

    // The same consumer, whose dedup window still holds the dropped ids: ten come again as they
    // were, five with times after the horizon (their ids are free again), five are duplicates.
    let mut again = rows("old", 0..10, "2026-10-01T00:00:00Z", 6);
    again.push_str(&rows("old", 10..15, "2026-11-21T00:00:00Z", 1)[..]);
    again.push_str(&rows("new", 0..5, "2026-11-20T00:00:00Z", 1));
    world.drop_csv("again.csv", &again);
    world.wait_for_count(RECONCILED_FILES, 3, PATIENCE).await;
    assert_eq!(world.count(EXPIRED).await, 10);
    let reasons: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT reason, field FROM ecommerce_events_rejected WHERE reason_code = 'expired'",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    for (reason, field) in &reasons {
        assert!(
            reason.contains("before the retention horizon 2026-11-01T00:00:00+00:00"),
            "{reason}"
        );
        assert_eq!(field.as_deref(), Some("event_time"));
    }
    let stored_again = world
        .count("SELECT count(*) FROM ecommerce_events WHERE event_id LIKE 'old-%'")
        .await;
    assert_eq!(
        stored_again, 5,
        "ids of dropped events, dated after the horizon"
    );
    let (inserted, duplicate, rejected): (i64, i64, i64) = sqlx::query_as(
        "SELECT rows_inserted, rows_duplicate, rows_rejected FROM ingest_files
         WHERE file_name = 'again.csv'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!((inserted, duplicate, rejected), (5, 5, 10));
    assert_eq!(world.count(EVENTS).await, 55);
    world.assert_every_row_accounted().await;
    world.assert_aggregates_exact().await;

    let status = Command::new(binary_path("status"))
        .args(["--database-url", &world.database_url])
        .args(["--brokers", &world.brokers, "--format", "json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).expect(&text);
    assert_eq!(report["rows_total"], 55, "{text}");
    assert_eq!(report["rejected_by_reason"]["expired"], 10, "{text}");
    assert_eq!(
        report["retention"]["horizon"], "2026-11-01T00:00:00Z",
        "{text}"
    );
    assert!(report["retention"]["completed_at"].is_string(), "{text}");

    let explained = Command::new(binary_path("explain"))
        .args(["old-20", "--database-url", &world.database_url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(
        text.contains("retention dropped the events dated before 2026-11-01"),
        "{text}"
    );

    let shown = succeeded(&retention(&world, &["show"]));
    assert!(shown.contains("none before the horizon is left"), "{shown}");
    let back = retention(&world, &["apply", "--before", "2026-10-15T00:00:00Z"]);
    let stderr = String::from_utf8_lossy(&back.stderr);
    assert!(!back.status.success());
    assert!(stderr.contains("only moves forward"), "{stderr}");
    assert_eq!(stderr.matches("only moves forward").count(), 1, "{stderr}");
}

/// The worst form: the horizon moves while two consumers write batches straddling it. A batch
/// judged by the old horizon must not commit after the drop passed it.
#[tokio::test(flavor = "multi_thread")]
async fn retention_applied_under_running_consumers_leaves_no_event_before_the_horizon() {
    let world = World::new("retention_running").await;
    let files = 30;
    let per_file = 1_000;
    for file in 0..files {
        // Each file spans 2026-10-12 to 2026-11-21: about half before the horizon.
        let body = rows(&format!("f{file}"), 0..per_file, "2026-10-12T00:00:00Z", 1);
        world.drop_csv(&format!("mixed-{file:02}.csv"), &body);
    }
    let _consumers = [world.consumer(&[]), world.consumer(&[])];
    let _bridge = world.bridge(&[]);
    world.wait_for_at_least(EVENTS, 3_000, PATIENCE).await;
    let stdout = succeeded(&retention(
        &world,
        &["apply", "--before", HORIZON, "--step-rows", "500"],
    ));
    assert!(stdout.contains("none is left"), "{stdout}");
    world
        .wait_for_count(RECONCILED_FILES, i64::from(files), PATIENCE)
        .await;
    assert_eq!(world.count(BEFORE_HORIZON).await, 0);
    let before_horizon = i64::from(files) * 480; // 20 days of hourly rows each
    let (expired, dropped): (i64, i64) = sqlx::query_as(&format!(
        "SELECT ({EXPIRED}), (SELECT sum(rows_expired)::int8 FROM ingest_files)"
    ))
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(expired + dropped, before_horizon, "{expired} + {dropped}");
    assert!(expired > 0, "the run ended before the horizon moved");
    assert_eq!(
        world.count(EVENTS).await,
        i64::from(files * per_file) - before_horizon
    );
    world.assert_every_row_accounted().await;
    world.assert_aggregates_exact().await;
}

/// The protocol the consumer's transactions follow, held open by hand: a writer that read the
/// old horizon (first in its transaction, as every batch does) is waited for by the horizon's
/// move, and the drop that follows takes the row it wrote before the new horizon.
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_judged_by_the_old_horizon_is_waited_for_and_its_rows_dropped() {
    let world = World::new("retention_writer").await;
    let mut sink = consumer::sink::Sink::new(&world.database_url, "it", "it");
    sink.migrate().await.unwrap();
    let mut writer = world.pool.begin().await.unwrap();
    let horizon: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT retention_horizon_held()")
            .fetch_one(&mut *writer)
            .await
            .unwrap();
    assert_eq!(horizon, None);

    let url = world.database_url.clone();
    let apply = tokio::task::spawn_blocking(move || {
        Command::new(binary_path("retention"))
            .args(["apply", "--before", HORIZON, "--database-url", &url])
            .output()
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !apply.is_finished(),
        "the horizon moved under an open writer"
    );
    sqlx::query(
        "INSERT INTO ecommerce_events (event_id, user_id, event_type, product_id, price,
                                       event_time, source_file, source_line, landed_at)
         VALUES ('judged-by-the-old-horizon', 1, 'view', 1, 1.00, '2026-10-01T00:00:00Z',
                 'by-hand', 1, now())",
    )
    .execute(&mut *writer)
    .await
    .unwrap();
    writer.commit().await.unwrap();

    let stdout = succeeded(&apply.await.unwrap());
    assert!(stdout.contains("dropped 1 events"), "{stdout}");
    assert_eq!(world.count(BEFORE_HORIZON).await, 0);
    world.assert_aggregates_exact().await;
}

/// `--every` keeps the command up, applying `--older-than` by the database's clock each round,
/// until it is asked to stop.
#[tokio::test(flavor = "multi_thread")]
async fn retention_every_interval_keeps_dropping_what_grows_old_until_stopped() {
    let world = World::new("retention_every").await;
    let _consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    let now = chrono::Utc::now();
    let days_ago = |days: i64| {
        (now - chrono::TimeDelta::days(days)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    world.drop_csv("old.csv", &rows("old", 0..20, &days_ago(60), 1));
    world.drop_csv("recent.csv", &rows("recent", 0..20, &days_ago(2), 1));
    world.wait_for_count(RECONCILED_FILES, 2, PATIENCE).await;

    let url = world.database_url.clone();
    let args = ["apply", "--older-than", "30d", "--every", "1s"];
    let kept_up = world.spawn(
        "retention",
        &[&args[..], &["--database-url", &url]].concat(),
    );
    let old = "SELECT count(*) FROM ecommerce_events WHERE event_id LIKE 'old-%'";
    world.wait_for_count(old, 0, PATIENCE).await;
    // A later arrival of the same age goes by the horizon, and the next round finds nothing.
    world.drop_csv("late.csv", &rows("late", 0..5, &days_ago(45), 1));
    world.wait_for_count(RECONCILED_FILES, 3, PATIENCE).await;
    assert_eq!(world.count(EXPIRED).await, 5);
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(world.count(EVENTS).await, 20, "the recent events stay");
    kept_up.signal("TERM");
    let (status, log) = kept_up.wait_with_log(PATIENCE);
    assert!(status.success(), "{log}");
    assert!(
        log.matches("retention horizon moved from").count() >= 2,
        "{log}"
    );
    world.assert_every_row_accounted().await;
    world.assert_aggregates_exact().await;
}
