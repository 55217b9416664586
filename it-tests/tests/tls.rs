//! Production connections: the whole pipeline over SASL_SSL to Kafka (Kafka's own TLS listener, a
//! CA of our own, SCRAM-SHA-512 with one user per component, ACLs granting each only what it needs)
//! and over TLS to PostgreSQL (`sslmode=verify-full`, a server that refuses plain connections); a
//! wrong password and a wrong CA are each refused with an error that says so.

use it_tests::broker::{kafka_tool, PrivateBroker};
use it_tests::database::PrivatePostgres;
use it_tests::tls::{sasl_ssl_options, TestCa};
use it_tests::World;
use std::time::Duration;

use it_tests::PATIENCE as LONG;

/// One user per component, and an administrator who creates the topic.
const USERS: &[(&str, &str)] = &[
    ("bridge", "bridge-secret"),
    ("consumer", "consumer-secret"),
    ("admin", "admin-secret"),
];

fn postgres_tls_url(postgres: &PrivatePostgres, ca: &TestCa) -> String {
    format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        postgres.server_url(),
        ca.ca_pem().display()
    )
}

/// The topic made by an operator, as on a cluster where the pipeline's users may not create one.
fn create_topic(broker: &PrivateBroker, topic: &str) {
    let admin = broker.admin_address();
    kafka_tool(
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &admin,
            "--create",
            "--topic",
            topic,
            "--partitions",
            "3",
        ],
    );
}

/// The least privilege `docs/connecting.md` shows: the bridge describes and writes the topic; the consumer
/// reads it and uses its group.
fn grant_least_privilege(broker: &PrivateBroker, topic: &str, group: &str) {
    broker.allow("User:bridge", &["Describe", "Write"], &["--topic", topic]);
    broker.allow("User:consumer", &["Read", "Describe"], &["--topic", topic]);
    broker.allow("User:consumer", &["Read"], &["--group", group]);
}

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn events_flow_end_to_end_over_sasl_ssl_with_least_privilege() {
    let ca = TestCa::new("pipeline");
    let broker = PrivateBroker::start_sasl_ssl(&ca, USERS, true);
    let postgres = PrivatePostgres::start_tls(&ca);
    let server = postgres_tls_url(&postgres, &ca);
    let world = World::on("tls", &broker.address(), &server).await;
    create_topic(&broker, &world.topic);
    grant_least_privilege(&broker, &world.topic, &world.group);
    assert!(world
        .generator(&["--files", "3", "--events-per-file", "100", "--seed", "51"])
        .success());
    let bridge = sasl_ssl_options(&ca, "bridge", "bridge-secret");
    let bridge: Vec<&str> = bridge.iter().map(String::as_str).collect();
    world.bridge_once(&bridge);
    // The consumer takes its settings from a client properties file, as kcat -F does.
    let properties = world.dir.path().join("client.properties");
    std::fs::write(
        &properties,
        format!(
            "# managed Kafka\nsecurity.protocol = SASL_SSL\nssl.ca.location: {}\n\
             sasl.mechanism=SCRAM-SHA-512\nsasl.username=consumer\nsasl.password=consumer-secret\n",
            ca.ca_pem().display()
        ),
    )
    .unwrap();
    let properties = properties.to_str().unwrap();
    let metrics = format!("127.0.0.1:{}", it_tests::ports::free_port());
    let _consumer = world.consumer(&[
        "--kafka-config",
        properties,
        "--instance-id",
        "tls-1",
        "--metrics-addr",
        &metrics,
    ]);
    world
        .wait_for_at_least("SELECT count(*) FROM ecommerce_events", 1, LONG)
        .await;
    // Readiness tells the truth at once: rows landed, so the broker connection works (not
    // "not connected yet" until librdkafka's first statistics, seconds later).
    let (status, body) =
        telemetry::http_get(&format!("http://{metrics}/readyz"), Duration::from_secs(5))
            .await
            .unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
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

    // The rights are exactly those: the consumer's user may not publish to the topic.
    world.drop_file(
        "intruder.csv",
        b"event_id,user_id,event_type,product_id,price,event_time\nx,1,view,1,1.00,2026-11-25T12:00:00Z\n",
    );
    let intruder = sasl_ssl_options(&ca, "consumer", "consumer-secret");
    let mut args: Vec<&str> = intruder.iter().map(String::as_str).collect();
    args.push("--once");
    let refused = world.bridge(&args);
    let log = refused.log.clone();
    let status = refused.wait_for_exit(LONG);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        !status.success(),
        "the consumer's user published to the topic:\n{log}"
    );
    assert!(
        log.to_lowercase().contains("authoriz"),
        "no clear authorization error:\n{log}"
    );
    assert_eq!(world.event_ids().await.len(), 300);
}

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_or_certificate_authority_is_refused_with_a_clear_error() {
    let ca = TestCa::new("pipeline");
    let wrong = TestCa::new("stranger");
    let broker = PrivateBroker::start_sasl_ssl(&ca, USERS, false);
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

    // Kafka: a bridge that cannot verify the broker, or whose password is wrong, says so.
    for (options, expected) in [
        (
            sasl_ssl_options(&wrong, "bridge", "bridge-secret"),
            "certificate verify failed",
        ),
        (
            sasl_ssl_options(&ca, "bridge", "not-the-password"),
            "Authentication failed",
        ),
    ] {
        let mut args: Vec<&str> = options.iter().map(String::as_str).collect();
        args.push("--once");
        let bridge = world.bridge(&args);
        let log = bridge.log.clone();
        let status = bridge.wait_for_exit(LONG);
        let log = std::fs::read_to_string(log).unwrap();
        assert!(
            !status.success(),
            "the bridge went on without `{expected}`:\n{log}"
        );
        assert!(log.contains(expected), "no `{expected}` error:\n{log}");
    }

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
