//! The database's own defaults and locks, set by others while the pipeline runs: a managed
//! service's presets (short statement and lock timeouts, serializable isolation, a local time
//! zone and date style) neither stop the migrations nor change what is stored, and a lock timeout
//! behind someone else's lock is a wait, never a reason to quarantine valid rows.

use it_tests::{World, PATIENCE};
use sqlx::{Connection, PgConnection};
use std::time::{Duration, Instant};

/// A connection of the test's own, under a session it sets itself (the database's defaults are
/// hostile on purpose).
async fn admin(world: &World) -> PgConnection {
    let mut connection = PgConnection::connect(&world.database_url).await.unwrap();
    sqlx::raw_sql(
        "SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0;
         SET default_transaction_isolation = 'read committed'; SET TimeZone = 'UTC'",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    connection
}

async fn set_defaults(admin: &mut PgConnection, settings: &[&str]) {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *admin)
        .await
        .unwrap();
    for setting in settings {
        sqlx::query(&format!("ALTER DATABASE \"{database}\" SET {setting}"))
            .execute(&mut *admin)
            .await
            .unwrap();
    }
}

async fn count(admin: &mut PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(admin).await.unwrap()
}

async fn wait_for(admin: &mut PgConnection, sql: &str, expected: i64, log: impl Fn() -> String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Before the migrations ran, the table is not there yet.
        let now = match sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&mut *admin)
            .await
        {
            Ok(now) => now,
            Err(error) if error.to_string().contains("does not exist") => -1,
            Err(error) => panic!("`{sql}`: {error}"),
        };
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{sql}` is {now}, not {expected}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Data rows (`drop_csv` puts the header above them).
fn rows(prefix: &str, n: usize) -> String {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&format!(
            "{prefix}-{i},{},view,{},1.50,2026-11-25T12:00:00Z\n",
            i + 1,
            i % 7 + 1
        ));
    }
    body
}

const EVENTS: &str = "SELECT count(*) FROM ecommerce_events";

/// Every quarantined row, as `line reason_code: reason`.
async fn rejects(admin: &mut PgConnection) -> String {
    sqlx::query_scalar(
        "SELECT coalesce(string_agg(source_line || ' ' || reason_code || ': ' || reason, '; '), '')
         FROM ecommerce_events_rejected",
    )
    .fetch_one(admin)
    .await
    .unwrap()
}

/// Presets as managed services ship them, only harsher: before the consumer set its own session,
/// it exited at start with "while executing migration 13: canceling statement due to statement
/// timeout" and nothing was ever stored.
#[tokio::test(flavor = "multi_thread")]
async fn migrations_and_writes_run_under_the_consumers_own_session_whatever_the_database_presets() {
    let world = World::new("hostile_defaults").await;
    let mut admin = admin(&world).await;
    set_defaults(
        &mut admin,
        &[
            "statement_timeout = '1ms'",
            "lock_timeout = '25ms'",
            "idle_in_transaction_session_timeout = '50ms'",
            "default_transaction_isolation = 'serializable'",
            "TimeZone = 'America/St_Johns'",
            "DateStyle = 'SQL, DMY'",
            "IntervalStyle = 'sql_standard'",
        ],
    )
    .await;
    let mut consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    world.drop_csv("presets.csv", &rows("preset", 300));
    wait_for(&mut admin, EVENTS, 300, || consumer.log_text()).await;
    assert!(consumer.is_running(), "{}", consumer.log_text());
    assert_eq!(rejects(&mut admin).await, "");
    // Stored as the instant the file says, read back in UTC.
    assert_eq!(
        count(
            &mut admin,
            "SELECT count(*) FROM ecommerce_events WHERE event_time = '2026-11-25 12:00:00+00'"
        )
        .await,
        300
    );
    wait_for(
        &mut admin,
        "SELECT count(*) FROM ingest_files WHERE reconciled_at IS NOT NULL AND rows_inserted = 300",
        1,
        || consumer.log_text(),
    )
    .await;
    world.assert_every_row_accounted().await;
}

/// A writer whose `lock_timeout` runs out behind an operator's `LOCK ... IN SHARE MODE` (what
/// `aggregates rebuild` and a plain `CREATE INDEX` take) while a file is being written: before,
/// the batch went row by row and the rows refused while the lock was held were quarantined as
/// `database`; the rest went in once it was released.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_timeout_behind_an_operators_lock_is_a_wait_not_poison() {
    let world = World::new("lock_timeout").await;
    let mut admin = admin(&world).await;
    set_defaults(&mut admin, &["lock_timeout = '100ms'"]).await;
    let consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    world.drop_csv("before.csv", &rows("before", 5));
    wait_for(&mut admin, EVENTS, 5, || consumer.log_text()).await;

    let mut holder = admin_lock(&world).await;
    world.drop_csv("during.csv", &rows("during", 60));
    // Long enough for the batch to arrive and meet the lock, short of its 60 rows × 100 ms.
    tokio::time::sleep(Duration::from_secs(3)).await;
    sqlx::query("COMMIT").execute(&mut holder).await.unwrap();

    wait_for(&mut admin, EVENTS, 65, || consumer.log_text()).await;
    assert_eq!(
        rejects(&mut admin).await,
        "",
        "valid rows quarantined:\n{}",
        consumer.log_text()
    );
    wait_for(
        &mut admin,
        "SELECT count(*) FROM ingest_files WHERE reconciled_at IS NOT NULL AND rows_rejected = 0",
        2,
        || consumer.log_text(),
    )
    .await;
    world.assert_every_row_accounted().await;
}

/// A session holding a SHARE lock on the events table until it commits.
async fn admin_lock(world: &World) -> PgConnection {
    let mut holder = admin(world).await;
    sqlx::raw_sql("BEGIN; LOCK TABLE ecommerce_events IN SHARE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    holder
}
