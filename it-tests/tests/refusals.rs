//! Refusals in the database's own words: an operator's trigger that raises for some rows (P0001,
//! or a SQLSTATE of its own) gets exactly those rows quarantined with its message, the rest lands,
//! even when a refused row is alone in its batch. A database that refuses every row (a trigger
//! raising for any row, or one turned read-only as a failover leaves it) is an outage, not
//! poison: nothing is quarantined, the partition is reported stuck, and everything lands once
//! the database takes the rows again.

use it_tests::{World, HEADER};
use std::collections::BTreeSet;
use std::time::Duration;

use it_tests::EVENTS;
use it_tests::PATIENCE as LONG;
const REJECTED: &str = "SELECT count(*) FROM ecommerce_events_rejected";

async fn migrate_then(world: &World, sql: &[&str]) {
    let migrate = world.spawn(
        "consumer",
        &["--database-url", &world.database_url, "--migrate-only"],
    );
    assert!(migrate.wait_for_exit(LONG).success());
    for statement in sql {
        sqlx::query(statement).execute(&world.pool).await.unwrap();
    }
}

fn row(id: &str, product: u32) -> String {
    format!("{id},1,view,{product},1.00,2026-11-25T12:00:00Z\n")
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn rows_a_trigger_refuses_are_quarantined_whatever_their_sqlstate() {
    let world = World::new("trigger_refuses").await;
    migrate_then(
        &world,
        &[
            "CREATE FUNCTION refuse_withdrawn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                 IF NEW.product_id = 666 THEN RAISE EXCEPTION 'product 666 is withdrawn'; END IF;
                 IF NEW.product_id = 777 THEN
                     RAISE EXCEPTION 'product 777 needs review' USING ERRCODE = 'ZZ777';
                 END IF;
                 RETURN NEW;
             END $$",
            "CREATE TRIGGER refuse_withdrawn BEFORE INSERT ON ecommerce_events
                 FOR EACH ROW EXECUTE FUNCTION refuse_withdrawn()",
        ],
    )
    .await;
    world.drop_file(
        "mixed.csv",
        [
            HEADER.to_owned(),
            row("r1", 10),
            row("r2", 666),
            row("r3", 11),
            row("r4", 777),
            row("r5", 12),
        ]
        .concat()
        .as_bytes(),
    );
    world.bridge_once(&[]);
    let consumer = world.consumer(&[]);
    world.wait_for_count(REJECTED, 2, LONG).await;
    world.wait_for_count(EVENTS, 3, LONG).await;
    assert!(consumer.terminate(LONG).success());

    // The worst form: the refused row alone in its batch (every row of that batch refused).
    world.drop_file(
        "alone.csv",
        [HEADER.to_owned(), row("s1", 666), row("s2", 13)]
            .concat()
            .as_bytes(),
    );
    world.bridge_once(&[]);
    let _consumer = world.consumer(&["--batch-size", "1"]);
    world.wait_for_count(REJECTED, 3, LONG).await;
    world.wait_for_count(EVENTS, 4, LONG).await;
    let expected: BTreeSet<String> = ["r1", "r3", "r5", "s2"].map(String::from).into();
    assert_eq!(world.event_ids().await, expected);
    let rejects: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT event_id, reason_code, reason FROM ecommerce_events_rejected ORDER BY event_id",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    let shown: Vec<(&str, &str)> = rejects
        .iter()
        .map(|(id, code, _)| (id.as_str(), code.as_str()))
        .collect();
    assert_eq!(
        shown,
        [("r2", "database"), ("r4", "database"), ("s1", "database")]
    );
    assert!(
        rejects[0].2.contains("product 666 is withdrawn"),
        "{rejects:?}"
    );
    assert!(
        rejects[1].2.contains("product 777 needs review"),
        "{rejects:?}"
    );
    assert!(
        rejects[2].2.contains("product 666 is withdrawn"),
        "{rejects:?}"
    );
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_database_that_refuses_every_row_is_reported_stuck_not_quarantined() {
    let world = World::new("refuses_all").await;
    migrate_then(
        &world,
        &[
            "CREATE FUNCTION refuse_all() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                 RAISE EXCEPTION 'maintenance: no writes' USING ERRCODE = 'ZZ000';
             END $$",
            "CREATE TRIGGER refuse_all BEFORE INSERT ON ecommerce_events
                 FOR EACH ROW EXECUTE FUNCTION refuse_all()",
        ],
    )
    .await;
    world.drop_file(
        "a.csv",
        [
            HEADER.to_owned(),
            row("a1", 10),
            row("a2", 11),
            row("a3", 12),
        ]
        .concat()
        .as_bytes(),
    );
    world.bridge_once(&[]);
    let consumer = world.consumer(&["--stuck-after", "2s"]);
    let deadline = std::time::Instant::now() + LONG;
    while !consumer
        .log_text()
        .contains("partitions cannot advance: their batch is not written yet")
    {
        assert!(std::time::Instant::now() < deadline, "never reported stuck");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(world.count(REJECTED).await, 0, "nothing quarantined");
    assert_eq!(world.count(EVENTS).await, 0);

    sqlx::query("DROP TRIGGER refuse_all ON ecommerce_events")
        .execute(&world.pool)
        .await
        .unwrap();
    world.wait_for_count(EVENTS, 3, LONG).await;
    assert_eq!(world.count(REJECTED).await, 0);
    world.assert_every_row_accounted().await;
}

/// Every session of the test's database made read-only (as a failover leaves clients on a
/// standby, or an operator's `default_transaction_read_only`), and what the consumer holds cut.
async fn set_read_only(admin: &mut sqlx::PgConnection, on: bool) {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *admin)
        .await
        .unwrap();
    // This session stays writable, so it can undo what it did.
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *admin)
        .await
        .unwrap();
    let change = if on {
        format!("ALTER DATABASE \"{database}\" SET default_transaction_read_only = on")
    } else {
        format!("ALTER DATABASE \"{database}\" RESET default_transaction_read_only")
    };
    sqlx::query(&change).execute(&mut *admin).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut *admin)
    .await
    .unwrap();
}

/// A database that turns read-only under the consumer (SQLSTATE 25006 on every write, the
/// classic failover hazard: clients left on the old primary or a standby) is an outage, not
/// poison: nothing is quarantined, the consumer stays up and reports it, and every row lands
/// once the database takes writes again.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_database_turned_read_only_is_an_outage_not_poison() {
    let world = World::new("read_only").await;
    let mut admin = world.pool.acquire().await.unwrap();
    let mut consumer = world.consumer(&["--stuck-after", "2s"]);
    let _bridge = world.bridge(&[]);
    let rows_of = |prefix: &str| {
        let mut body = HEADER.to_owned();
        for n in 0..5 {
            body.push_str(&row(&format!("{prefix}{n}"), 10 + n));
        }
        body
    };
    world.drop_file("before.csv", rows_of("before").as_bytes());
    world.wait_for_count(EVENTS, 5, LONG).await;

    set_read_only(&mut admin, true).await;
    world.drop_file("during.csv", rows_of("during").as_bytes());
    let deadline = std::time::Instant::now() + LONG;
    while !consumer
        .log_text()
        .contains("partitions cannot advance: their batch is not written yet")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "never reported stuck:\n{}",
            consumer.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(consumer.is_running(), "{}", consumer.log_text());
    let log = consumer.log_text();
    assert!(log.contains("read-only transaction"), "not refused:\n{log}");
    assert_eq!(world.count(REJECTED).await, 0, "nothing quarantined");

    set_read_only(&mut admin, false).await;
    world.drop_file("after.csv", rows_of("after").as_bytes());
    world.wait_for_count(EVENTS, 15, LONG).await;
    assert_eq!(world.count(REJECTED).await, 0, "nothing quarantined");
    world
        .wait_for_count(
            "SELECT count(*) FROM ingest_files WHERE reconciled_at IS NOT NULL \
             AND rows_inserted = 5",
            3,
            LONG,
        )
        .await;
    world.assert_every_row_accounted().await;
}
