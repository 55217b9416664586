//! Least privilege: an owner role runs the migrations, the consumer runs as a writer role that
//! can write rows but cannot create anything; passwords never reach the logs.

use it_tests::{unique, World, RECONCILED_FILES};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn consumer_runs_as_a_writer_role_and_never_logs_passwords() {
    let world = World::new("access").await;
    let (owner, writer) = (unique("owner"), unique("writer"));
    let (owner_secret, writer_secret) = ("0wner-s3cret-pw", "wr1ter-s3cret-pw");
    let database = world.database_url.rsplit('/').next().unwrap().to_owned();
    for statement in [
        format!("CREATE ROLE \"{owner}\" LOGIN PASSWORD '{owner_secret}'"),
        format!("CREATE ROLE \"{writer}\" LOGIN PASSWORD '{writer_secret}'"),
        format!("ALTER DATABASE \"{database}\" OWNER TO \"{owner}\""),
        format!("ALTER SCHEMA public OWNER TO \"{owner}\""),
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC".to_owned(),
    ] {
        sqlx::query(&statement).execute(&world.pool).await.unwrap();
    }
    let url_for = |role: &str, secret: &str| {
        world.database_url.replacen(
            "postgres://postgres@",
            &format!("postgres://{role}:{secret}@"),
            1,
        )
    };
    let owner_url = url_for(&owner, owner_secret);
    let writer_url = url_for(&writer, writer_secret);

    let migrate = world.spawn(
        "consumer",
        &["--database-url", &owner_url, "--migrate-only"],
    );
    let log = migrate.log.clone();
    assert!(migrate.wait_for_exit(Duration::from_secs(60)).success());
    let owner_log = std::fs::read_to_string(log).unwrap();
    assert!(owner_log.contains("migrations applied"), "{owner_log}");

    // The grants `docs/connecting.md` gives the writer, read from that page and made by the
    // owner: a grant the page forgets fails this test (a file never reconciles).
    let as_owner = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&owner_url)
        .await
        .unwrap();
    for statement in documented_grants() {
        let statement = statement.replace("pipeline_writer", &format!("\"{writer}\""));
        sqlx::query(&statement).execute(&as_owner).await.unwrap();
    }

    world.drop_csv(
        "a.csv",
        "w1,1,view,10,1.00,2026-11-25T12:00:00Z\nbad,1,view,10,-1,2026-11-25T12:00:00Z\n",
    );
    world.bridge_once(&[]);
    let consumer = world.consumer_on(&writer_url, &["--skip-migrations"]);
    world
        .wait_for_count(
            "SELECT count(*) FROM ecommerce_events",
            1,
            Duration::from_secs(60),
        )
        .await;
    world
        .wait_for_count(
            "SELECT count(*) FROM ecommerce_events_rejected",
            1,
            Duration::from_secs(60),
        )
        .await;

    let as_writer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&writer_url)
        .await
        .unwrap();
    let create = sqlx::query("CREATE TABLE sneaky (x int)")
        .execute(&as_writer)
        .await;
    assert!(create.is_err(), "the writer role cannot create tables");
    let drop_table = sqlx::query("DROP TABLE ecommerce_events")
        .execute(&as_writer)
        .await;
    assert!(drop_table.is_err(), "the writer role cannot drop tables");

    let writer_log = consumer.log_text();
    assert!(writer_log.contains("batch committed"));
    for secret in [owner_secret, writer_secret] {
        assert!(
            !owner_log.contains(secret) && !writer_log.contains(secret),
            "a password was logged"
        );
    }
    assert!(writer_log.contains(":***@"), "the URL is logged, redacted");
    world
        .wait_for_count(RECONCILED_FILES, 1, Duration::from_secs(60))
        .await;
    world.assert_every_row_accounted().await;
}

/// The SQL block of `docs/connecting.md` that follows the migrations, one statement each.
fn documented_grants() -> Vec<String> {
    let page = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/connecting.md"
    ))
    .unwrap();
    let block = page
        .split("-- as pipeline_owner, after the migrations")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the grants block in docs/connecting.md");
    let grants: Vec<String> = block
        .split(';')
        .map(|statement| statement.trim().to_owned())
        .filter(|statement| !statement.is_empty())
        .collect();
    assert!(grants.len() >= 8, "{grants:?}");
    grants
}
