//! Health and readiness: `/healthz` says the process serves, `/readyz` says it can do its work
//! (database, broker, partitions, nothing stuck) and names what is missing; the dashboard runs
//! without a broker.

use it_tests::database::PrivatePostgres;
use it_tests::ports::free_port;
use it_tests::World;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use it_tests::PATIENCE as LONG;

async fn get(addr: &str, path: &str) -> (u16, String) {
    telemetry::http_get(&format!("http://{addr}{path}"), Duration::from_secs(5))
        .await
        .unwrap_or((0, String::new()))
}

/// Waits until `path` answers `status`; returns the body.
async fn wait_for(addr: &str, path: &str, status: u16) -> String {
    let deadline = Instant::now() + LONG;
    loop {
        let (got, body) = get(addr, path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed at {got} ({body}), expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// One raw request, for methods the test client does not send; the whole answer.
async fn raw(addr: &str, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_database_while_health_stays_up() {
    let postgres = PrivatePostgres::start();
    let world = World::on("health", &it_tests::brokers(), &postgres.server_url()).await;
    let consumer_addr = format!("127.0.0.1:{}", free_port());
    let bridge_addr = format!("127.0.0.1:{}", free_port());
    let _bridge = world.bridge(&["--metrics-addr", &bridge_addr]);
    let _consumer = world.consumer(&["--metrics-addr", &consumer_addr]);

    assert_eq!(wait_for(&consumer_addr, "/healthz", 200).await, "alive\n");
    wait_for(&consumer_addr, "/readyz", 200).await;
    wait_for(&bridge_addr, "/readyz", 200).await;

    // Proper HTTP: HEAD has the head and no body, other methods and paths are refused properly.
    let head = raw(&consumer_addr, "HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD answered a body: {head}");
    let post = raw(
        &consumer_addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(
        post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{post}"
    );
    assert_eq!(get(&consumer_addr, "/nothing-here").await.0, 404);

    // The database goes away: alive, not ready, and the answer says why.
    world.pool.close().await;
    postgres.crash();
    let body = wait_for(&consumer_addr, "/readyz", 503).await;
    assert!(body.contains("database"), "{body}");
    assert_eq!(get(&consumer_addr, "/healthz").await.0, 200);
    postgres.restart();
    wait_for(&consumer_addr, "/readyz", 200).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_runs_without_a_broker() {
    let world = World::new("dashboard_only").await;
    let dashboard = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    // Nothing listens on port 1: there is no broker at all.
    let mut process = world.spawn(
        "consumer",
        &[
            "--dashboard-only",
            "--dashboard-addr",
            &dashboard,
            "--metrics-addr",
            &metrics,
            "--brokers",
            "127.0.0.1:1",
            "--database-url",
            &world.database_url,
        ],
    );
    let page = wait_for(&dashboard, "/", 200).await;
    assert!(page.contains("<html"), "{page}");
    wait_for(&metrics, "/readyz", 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(process.is_running(), "{}", process.log_text());
    // No completeness assertion: nothing is ingested (the dashboard alone, no
    // migrations).
}

#[test]
fn logs_go_to_stderr_as_json_when_asked_and_a_fatal_error_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(it_tests::binary_path("generator"))
        .args(["--log-format", "json", "--files", "1", "--interval", "0s"])
        .arg("--output-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(output.stdout.is_empty(), "logs on stdout");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.is_empty());
    for line in stderr.lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(value.get("level").is_some(), "{line}");
    }

    // A fatal error: one clear line on stderr, no colour codes when not on a terminal.
    let output = std::process::Command::new(it_tests::binary_path("file-bridge"))
        .args(["--kafka-config", "/nonexistent/client.properties", "--once"])
        .arg("--input-dir")
        .arg(dir.path())
        .arg("--archive-dir")
        .arg(dir.path().join("archive"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: invalid Kafka client configuration in /nonexistent/client.properties"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes off a terminal: {stderr}"
    );
}

/// Holds `count` connections to `addr` that never send a byte, opening a new one as soon as the
/// server closes one (the worst form: the pressure never lets up), until `stop`.
fn idle_clients(addr: &str, count: usize, stop: &tokio_util::sync::CancellationToken) {
    for _ in 0..count {
        let (addr, stop) = (addr.to_owned(), stop.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let Ok(mut stream) = tokio::net::TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let mut sink = [0u8; 64];
                tokio::select! {
                    _ = stream.read(&mut sink) => {}
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn probes_are_answered_while_thousands_of_idle_connections_press_on_the_port() {
    let world = World::new("idle_sockets").await;
    let consumer_addr = format!("127.0.0.1:{}", free_port());
    let _consumer = world.consumer(&["--metrics-addr", &consumer_addr]);
    world.drop_file(
        "a.csv",
        format!(
            "{}a1,1,view,10,1.00,2026-11-25T12:00:00Z\n",
            it_tests::HEADER
        )
        .as_bytes(),
    );
    world.bridge_once(&[]);
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 1, LONG)
        .await;
    wait_for(&consumer_addr, "/readyz", 200).await;

    // Far more idle clients than connections are served at once (256), re-opened as soon as
    // they are closed.
    let stop = tokio_util::sync::CancellationToken::new();
    idle_clients(&consumer_addr, 2_000, &stop);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for round in 0..5 {
        for (path, expected) in [
            ("/healthz", "alive"),
            ("/readyz", "ready"),
            ("/metrics", "pipeline_consumer_rows_inserted_total"),
        ] {
            let started = Instant::now();
            let (status, body) = telemetry::http_get(
                &format!("http://{consumer_addr}{path}"),
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_else(|error| (0, error.to_string()));
            assert_eq!(
                status, 200,
                "round {round}: {path} answered {status} ({body})"
            );
            assert!(body.contains(expected), "{path}: {body}");
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{path} took {:?}",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Ingestion goes on meanwhile.
    world.drop_file(
        "b.csv",
        format!(
            "{}b1,1,view,10,1.00,2026-11-25T12:00:00Z\n",
            it_tests::HEADER
        )
        .as_bytes(),
    );
    world.bridge_once(&[]);
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 2, LONG)
        .await;
    stop.cancel();
    world.assert_every_row_accounted().await;
}

/// A consumer started before its broker answers (Compose, systemd and Kubernetes start things in
/// any order) waits for it, as it waits for a database, with readiness saying why, and consumes
/// once the broker is there. Before, it exited at once.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_started_before_its_broker_waits_for_it() {
    let mut broker = it_tests::broker::PrivateBroker::start();
    broker.kill9();
    let world = World::on("broker_later", &broker.address(), &it_tests::server_url()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut consumer = world.consumer(&["--metrics-addr", &metrics]);
    let body = wait_for(&metrics, "/readyz", 503).await;
    let deadline = Instant::now() + LONG;
    while !consumer
        .log_text()
        .contains("Kafka not reachable; will retry")
    {
        assert!(Instant::now() < deadline, "{}", consumer.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(consumer.is_running(), "exited:\n{}", consumer.log_text());
    let body_now = get(&metrics, "/readyz").await.1;
    assert!(
        body_now.contains("Kafka not reachable"),
        "readiness names the broker: {body_now} (first: {body})"
    );

    broker.restart();
    let _bridge = world.bridge(&[]);
    world.drop_csv(
        "later.csv",
        "b1,1,view,1,1.00,2026-11-25T12:00:00Z\nb2,2,view,2,2.00,2026-11-25T12:00:00Z\n",
    );
    world.wait_for_count(it_tests::EVENTS, 2, LONG).await;
    wait_for(&metrics, "/readyz", 200).await;
}
