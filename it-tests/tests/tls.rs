//! Production connections: the whole pipeline over TLS to Kafka (a CA of our own, the broker's
//! certificate verified) and to PostgreSQL (`sslmode=verify-full`, a server that refuses plain
//! connections); a wrong CA is refused on both with a clear error.

use it_tests::services::PrivatePostgres;
use it_tests::tls::{TestCa, TlsBroker};
use it_tests::World;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(120);

fn kafka_tls(ca: &TestCa) -> Vec<String> {
    vec![
        "-X".into(),
        "security.protocol=ssl".into(),
        "-X".into(),
        format!("ssl.ca.location={}", ca.ca_pem().display()),
    ]
}

fn postgres_tls_url(postgres: &PrivatePostgres, ca: &TestCa) -> String {
    format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        postgres.server_url(),
        ca.ca_pem().display()
    )
}

#[cfg_attr(feature = "docker", ignore = "needs a host Tansu or initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn events_flow_end_to_end_over_tls_to_kafka_and_postgres() {
    let ca = TestCa::new("pipeline");
    let broker = TlsBroker::start(&ca);
    let postgres = PrivatePostgres::start_tls(&ca);
    let server = postgres_tls_url(&postgres, &ca);
    let world = World::on("tls", &broker.address(), &server).await;
    assert!(world
        .generator(&["--files", "3", "--events-per-file", "100", "--seed", "51"])
        .success());
    let kafka = kafka_tls(&ca);
    let kafka: Vec<&str> = kafka.iter().map(String::as_str).collect();
    world.bridge_once(&kafka);
    // The consumer takes its TLS settings from a client properties file, as kcat -F does.
    let properties = world.dir.path().join("client.properties");
    std::fs::write(
        &properties,
        format!(
            "# managed Kafka\nsecurity.protocol = SSL\nssl.ca.location: {}\n",
            ca.ca_pem().display()
        ),
    )
    .unwrap();
    let properties = properties.to_str().unwrap();
    let _consumer = world.consumer(&["--kafka-config", properties, "--instance-id", "tls-1"]);
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 300, LONG)
        .await;
    // Operators see who is connected.
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert!(
        names.iter().any(|name| name.starts_with("consumer-tls-1@")),
        "{names:?}"
    );
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert!(ssl, "the test's own connection is TLS too");

    // The server refuses plain connections: TLS is not optional here.
    let plain = format!("{}?sslmode=disable", postgres.server_url());
    let refused = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&plain)
        .await;
    assert!(refused.is_err(), "a plain connection was accepted");
}

#[cfg_attr(feature = "docker", ignore = "needs a host Tansu or initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_certificate_authority_is_refused_with_a_clear_error() {
    let ca = TestCa::new("pipeline");
    let wrong = TestCa::new("stranger");
    let broker = TlsBroker::start(&ca);
    let postgres = PrivatePostgres::start_tls(&ca);
    let world = World::on(
        "tls_wrong",
        &broker.address(),
        &postgres_tls_url(&postgres, &ca),
    )
    .await;
    world.drop_file(
        "a.csv",
        b"event_id,user_id,event_type,product_id,price,event_time\na,1,view,1,1.00,2026-11-25T12:00:00Z\n",
    );

    // Kafka: the bridge cannot verify the broker and says so.
    let kafka = kafka_tls(&wrong);
    let mut args: Vec<&str> = kafka.iter().map(String::as_str).collect();
    args.push("--once");
    let bridge = world.bridge(&args);
    let log = bridge.log.clone();
    let status = bridge.wait_for_exit(LONG);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        !status.success(),
        "the bridge trusted a broker it cannot verify:\n{log}"
    );
    assert!(
        log.contains("certificate verify failed"),
        "no clear certificate error:\n{log}"
    );

    // PostgreSQL: the consumer cannot verify the server and says so, and writes nothing.
    let wrong_url = world.database_url.replace(
        &ca.ca_pem().display().to_string(),
        &wrong.ca_pem().display().to_string(),
    );
    let consumer = world.consumer_on(&wrong_url, &["--migrate-only"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = consumer.log_text();
    assert!(
        text.contains("invalid peer certificate: UnknownIssuer")
            && text.contains("database not reachable"),
        "no clear certificate error:\n{text}"
    );
}
