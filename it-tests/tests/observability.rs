//! What operators see: Prometheus metrics that parse and agree with the database, the live
//! dashboard rendered by a real browser showing the database's numbers, and the status screen.

use it_tests::ports::free_port;
use it_tests::World;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use it_tests::PATIENCE as LONG;

/// Two valid rows, one late (quarantined), three invalid.
fn drop_sample(world: &World) {
    world.drop_csv(
        "sample.csv",
        "m1,1,view,10,1.00,2026-11-25T12:30:00Z\n\
             m2,1,purchase,10,9.50,2026-11-25T12:31:00Z\n\
             m3,1,view,10,1.00,2026-11-25T11:00:00Z\n\
             bad1,1,click,10,1.00,2026-11-25T12:30:00Z\n\
             bad2,1,view,10,-1,2026-11-25T12:30:00Z\n\
             bad3,1,view,10\n",
    );
}

async fn scrape(address: &str) -> String {
    let (status, body) =
        telemetry::http_get(&format!("http://{address}/metrics"), Duration::from_secs(5))
            .await
            .expect("metrics endpoint answers");
    assert_eq!(status, 200);
    body
}

/// Parses with the reference Python client's OpenMetrics parser (strict: it also wants the
/// closing `# EOF`); returns `name{labels} value` lines.
fn parse_prometheus(text: &str) -> Vec<String> {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       print(f'{s.name}{{{labels}}} {s.value:g}')\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    // The parser's own words: a missing `prometheus_client` is not a malformed exposition.
    assert!(
        output.status.success(),
        "the OpenMetrics parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_match_the_database() {
    let world = World::new("metrics").await;
    drop_sample(&world);
    let (consumer_addr, bridge_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _consumer = world.consumer(&[
        "--metrics-addr",
        &consumer_addr,
        "--late-policy",
        "quarantine",
        "--partitions",
        "1",
    ]);
    let _bridge = world.bridge(&["--metrics-addr", &bridge_addr, "--partitions", "1"]);
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events_rejected", 4, LONG)
        .await;
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 2, LONG)
        .await;

    let consumer = parse_prometheus(&scrape(&consumer_addr).await);
    for expected in [
        // Six rows and the file's end message.
        "pipeline_consumer_rows_consumed_total{} 7",
        "pipeline_consumer_rows_inserted_total{} 2",
        "pipeline_consumer_rows_late_total{} 1",
        "pipeline_consumer_rows_rejected_total{reason=invalid_field} 2",
        "pipeline_consumer_rows_rejected_total{reason=field_count} 1",
        "pipeline_consumer_rows_rejected_total{reason=late} 1",
        // Nothing was there before: every batch went straight in by COPY.
        "pipeline_consumer_batches_total{path=staging} 0",
        "pipeline_consumer_batches_total{path=row_by_row} 0",
    ] {
        assert!(
            consumer.iter().any(|line| line == expected),
            "{expected} not in {consumer:#?}"
        );
    }
    assert!(consumer.iter().any(|l| l
        .strip_prefix("pipeline_consumer_batches_total{path=copy} ")
        .is_some_and(|count| count != "0")));
    assert!(consumer
        .iter()
        .any(|l| l.starts_with("pipeline_consumer_batch_duration_seconds_count{} ")));
    assert!(consumer
        .iter()
        .any(|l| l.starts_with("pipeline_consumer_freshness_seconds_bucket{le=")));
    assert!(consumer
        .iter()
        .any(|l| l.starts_with("pipeline_consumer_watermark_timestamp_seconds{partition=0} ")));

    assert!(consumer
        .iter()
        .any(|l| l.starts_with("pipeline_consumer_build_info{version=")));

    let bridge = parse_prometheus(&scrape(&bridge_addr).await);
    for expected in [
        "pipeline_bridge_files_seen_total{} 1",
        "pipeline_bridge_files_archived_total{} 1",
        "pipeline_bridge_rows_published_total{} 6",
    ] {
        assert!(
            bridge.iter().any(|line| line == expected),
            "{expected} not in {bridge:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_in_headless_chromium_shows_the_database_numbers() {
    let world = World::new("dashboard").await;
    assert!(world
        .generator(&[
            "--files",
            "3",
            "--events-per-file",
            "300",
            "--seed",
            "31",
            "--malformed-rate",
            "0.05"
        ])
        .success());
    let dashboard = format!("127.0.0.1:{}", free_port());
    let _consumer = world.consumer(&["--dashboard-addr", &dashboard]);
    world.bridge_once(&[]);
    world
        .wait_for_count(
            "SELECT count(*) FROM ingest_checkpoints WHERE next_offset > 0",
            3,
            LONG,
        )
        .await;
    world
        .wait_for_count(
            "SELECT sum(next_offset)::bigint FROM ingest_checkpoints",
            903,
            LONG,
        )
        .await;

    let url = format!("http://{dashboard}/");
    let profile = tempfile::tempdir().unwrap();
    let browser = |extra: &[&str]| {
        let output = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                "--virtual-time-budget=8000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium (scripts/test.sh installs Debian's chromium package)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    // Caught up: the lag reads 0 once the consumer's next statistics arrive (every 5 s).
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let (_, body) = telemetry::http_get(
            &format!("http://{dashboard}/api/summary"),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_default();
        let summary: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if summary["lag_total"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag never read 0: {body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dom = browser(&["--dump-dom"]);
    let shown = |id: &str| -> String {
        let marker = format!("id=\"{id}\">");
        let start = dom
            .find(&marker)
            .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"))
            + marker.len();
        dom[start..].split('<').next().unwrap().to_owned()
    };
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page loaded its data:\n{dom}"
    );

    let events = world.count("SELECT count(*) FROM ecommerce_events").await;
    let rejected = world
        .count("SELECT count(*) FROM ecommerce_events_rejected")
        .await;
    let (viewers, buyers): (i64, i64) =
        sqlx::query_as("SELECT viewers, buyers FROM ecommerce_funnel")
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert!(
        events > 800 && rejected > 10,
        "{events} events, {rejected} rejected"
    );
    assert_eq!(shown("events-total"), events.to_string());
    assert_eq!(shown("rejected-total"), rejected.to_string());
    assert_eq!(shown("late-total"), "0");
    assert_eq!(shown("lag-total"), "0");
    assert_eq!(shown("funnel-viewers"), viewers.to_string());
    assert_eq!(shown("funnel-buyers"), buyers.to_string());
    assert!(dom.contains("<rect"), "the charts were drawn");

    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    browser(&[
        &format!("--screenshot={}", screenshot.display()),
        "--window-size=1280,900",
    ]);
    assert!(
        std::fs::metadata(&screenshot).unwrap().len() > 10_000,
        "a real screenshot"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_lag_rows_rejections_and_liveness() {
    let world = World::new("status").await;
    drop_sample(&world);
    let metrics = format!("127.0.0.1:{}", free_port());
    let _consumer = world.consumer(&["--metrics-addr", &metrics]);
    world.bridge_once(&[]);
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 3, LONG)
        .await;
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events_rejected", 3, LONG)
        .await;
    world
        .wait_for_count(
            "SELECT sum(next_offset)::bigint FROM ingest_checkpoints",
            7,
            LONG,
        )
        .await;
    // Ready once its first statistics show the broker connection up.
    let deadline = std::time::Instant::now() + LONG;
    while !matches!(
        telemetry::http_get(&format!("http://{metrics}/readyz"), Duration::from_secs(2)).await,
        Ok((200, _))
    ) {
        assert!(std::time::Instant::now() < deadline, "consumer never ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bridge_url = format!("http://127.0.0.1:{}/metrics", free_port());
    let status = |format: &str| {
        Command::new(it_tests::binary_path("status"))
            .args(world.topic_args())
            .args(["--database-url", &world.database_url])
            .args([
                "--consumer-metrics-url",
                &format!("http://{metrics}/metrics"),
            ])
            .args(["--bridge-metrics-url", &bridge_url, "--format", format])
            .output()
            .unwrap()
    };
    let output = status("text");
    let screen = String::from_utf8_lossy(&output.stdout);
    // The bridge is not running: status says so in its exit code too.
    assert_eq!(output.status.code(), Some(2), "{screen}");
    assert!(screen.contains("total lag: 0"), "{screen}");
    assert!(screen.contains("rows today: 3 · rows total: 3"), "{screen}");
    assert!(
        screen.contains("invalid_field 2") && screen.contains("field_count 1"),
        "{screen}"
    );
    assert!(
        screen
            .lines()
            .any(|l| l.contains("consumer") && l.ends_with("ready")),
        "{screen}"
    );
    assert!(
        screen
            .lines()
            .any(|l| l.contains("file-bridge") && l.ends_with("down")),
        "{screen}"
    );

    let output = status("json");
    assert_eq!(output.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["healthy"], false);
    assert_eq!(report["total_lag"], 0);
    assert_eq!(report["rows_total"], 3);
    assert_eq!(report["rejected_by_reason"]["invalid_field"], 2);
    let states: Vec<(&str, &str)> = report["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("file-bridge", "down"), ("consumer", "ready")]);

    // KAFKA_OPTIONS read as the services read it: a comma followed by text without `=` belongs
    // to the value before (a broker list, a password holding a comma). Before, status split it
    // at every comma, exited on the fragment and printed it.
    let output = Command::new(it_tests::binary_path("status"))
        .args(world.topic_args())
        .args(["--database-url", &world.database_url])
        .args(["--bridge-metrics-url", &bridge_url, "--format", "json"])
        .env(
            "KAFKA_OPTIONS",
            "client.rack=se,cret,socket.timeout.ms=30000",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("cret"), "a fragment printed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("no report (exit {:?}): {stderr}", output.status));
    assert_eq!(report["kafka_error"], serde_json::Value::Null, "{report}");
    assert_eq!(report["total_lag"], 0);
}

/// Secrets in a database URL never reach the log: a password pasted with an unescaped `/` (a
/// raw base64 one), and a key passphrase in `?sslpassword=`, which the driver itself would log
/// in clear as a parameter it does not know.
#[tokio::test(flavor = "multi_thread")]
async fn database_secrets_never_reach_the_logs() {
    let world = World::new("secrets").await;
    let raw = "postgres://writer:Zm9v/YmFy@127.0.0.1:1/test";
    let rejected = world.spawn(
        "consumer",
        &["--database-url", raw, "--topic", &world.topic],
    );
    let (_, log) = rejected.wait_with_log(LONG);
    assert!(!log.contains("YmFy"), "a password in the log:\n{log}");

    let with_passphrase = format!("{}?sslpassword=KeyPass42", world.database_url);
    let consumer = world.spawn(
        "consumer",
        &[
            "--database-url",
            &with_passphrase,
            "--brokers",
            &world.brokers,
            "--topic",
            &world.topic,
            "--group",
            &world.group,
        ],
    );
    world
        .wait_for_count(
            "SELECT count(*) FROM pg_tables WHERE tablename = 'ingest_checkpoints'",
            1,
            LONG,
        )
        .await;
    let log = consumer.log_text();
    assert!(log.contains("sslpassword=***"), "{log}");
    assert!(
        !log.contains("KeyPass42"),
        "a passphrase in the log:\n{log}"
    );
}
