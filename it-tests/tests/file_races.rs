//! Files are claimed, not guessed: a writer that pauses mid-line, a new file renamed over one still
//! being delivered, a file renamed or dropped again under another name, and an archive that fails
//! each leave every row published once and every bad row quarantined once.

use it_tests::ports::free_port;
use it_tests::{World, HEADER};
use std::io::Write;
use std::time::Duration;

use it_tests::EVENTS;
use it_tests::PATIENCE as LONG;
const REJECTED: &str = "SELECT count(*) FROM ecommerce_events_rejected";

fn rows(prefix: &str, count: usize) -> String {
    (0..count)
        .map(|i| format!("{prefix}-{i},1,view,10,1.00,2026-11-25T12:00:00Z\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_pausing_mid_line_loses_nothing_and_truncates_nothing() {
    let world = World::new("pause").await;
    let _consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    std::fs::create_dir_all(world.input_dir()).unwrap();
    let path = world.input_dir().join("in-place.csv");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(format!("{HEADER}{}", rows("before", 3)).as_bytes())
        .unwrap();
    // Cut in the middle of the time zone, for longer than the settle time.
    file.write_all(b"cut,1,view,10,1.00,2026-11-25T12:00:00+0")
        .unwrap();
    file.flush().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    file.write_all(format!("1:00\n{}", rows("after", 3)).as_bytes())
        .unwrap();
    drop(file);
    world.wait_for_count(EVENTS, 7, LONG).await;
    let stored: String = sqlx::query_scalar(
        "SELECT to_char(event_time AT TIME ZONE 'UTC', 'HH24:MI') FROM ecommerce_events
         WHERE event_id = 'cut'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        stored, "11:00",
        "the row was read whole, time zone included"
    );
    assert_eq!(world.count(REJECTED).await, 0);
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_renamed_over_one_still_delivering_is_published_too() {
    let world = World::new("rename_over").await;
    // A large first file, so its deliveries are pending when the second lands under its name.
    world.drop_csv("same.csv", &rows("first", 50_000));
    let _bridge = world.bridge(&[]);
    let deadline = std::time::Instant::now() + LONG;
    while !world
        .claimed_files()
        .iter()
        .any(|file| file.ends_with("same.csv"))
    {
        assert!(std::time::Instant::now() < deadline, "never claimed");
        std::thread::sleep(Duration::from_millis(5));
    }
    world.drop_csv(
        "same.csv",
        &format!(
            "{}bad,1,view,10,-1,2026-11-25T12:00:00Z\n",
            rows("second", 10)
        ),
    );
    let _consumer = world.consumer(&[]);
    world.wait_for_count(EVENTS, 50_010, LONG).await;
    world.wait_for_count(REJECTED, 1, LONG).await;
    world.wait_until_archived(LONG).await;
    let archived = std::fs::read_dir(world.archive_dir()).unwrap().count();
    assert_eq!(archived, 2, "both versions archived");
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn renamed_or_repeated_content_records_its_bad_rows_once() {
    let world = World::new("same_content").await;
    let body = format!(
        "{HEADER}{}bad-1,1,view,10,-1,2026-11-25T12:00:00Z\n{}bad-2,x,view,10,1.00,2026-11-25T12:00:00Z\n",
        rows("big", 30_000),
        rows("more", 10)
    );
    world.drop_file("big.csv", body.as_bytes());
    let _consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    world.wait_for_at_least(EVENTS, 1, LONG).await;
    // Renamed while published (the bridge claimed it first, so this usually finds nothing).
    let _ = std::fs::rename(
        world.input_dir().join("big.csv"),
        world.input_dir().join("big-renamed.csv"),
    );
    world.wait_for_count(EVENTS, 30_010, LONG).await;
    world.wait_for_count(REJECTED, 2, LONG).await;
    // The same bytes dropped again under other names.
    world.drop_file("again.csv", body.as_bytes());
    world.drop_file("and-again.csv", body.as_bytes());
    world.wait_until_archived(LONG).await;
    // Wait until the consumer has read every message of every file.
    let archived = std::fs::read_dir(world.archive_dir()).unwrap().count();
    world
        .wait_for_at_least(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM ingest_checkpoints",
            // Each file's rows and its end message.
            (30_013 * archived) as i64,
            LONG,
        )
        .await;
    assert_eq!(world.count(EVENTS).await, 30_010);
    assert_eq!(world.count(REJECTED).await, 2, "bad rows recorded once");
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_archive_is_retried_alone_and_leaves_no_partial_copy() {
    let world = World::new("archive_fails").await;
    std::fs::create_dir_all(world.input_dir()).unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let _consumer = world.consumer(&[]);
    let bridge = world.bridge(&["--metrics-addr", &metrics_addr]);
    // The archive folder is replaced by a plain file: every archive attempt fails.
    let archive = world.archive_dir();
    let deadline = std::time::Instant::now() + LONG;
    while !archive.exists() {
        assert!(std::time::Instant::now() < deadline, "bridge never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::remove_dir(&archive).unwrap();
    std::fs::write(&archive, "not a folder").unwrap();
    world.drop_csv("a.csv", &rows("a", 100));
    world.wait_for_count(EVENTS, 100, LONG).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let metric = |name: &'static str| {
        let url = format!("http://{metrics_addr}/metrics");
        async move {
            let (_, body) = telemetry::http_get(&url, Duration::from_secs(2))
                .await
                .unwrap();
            body.lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.rsplit(' ').next())
                .unwrap_or_default()
                .to_owned()
        }
    };
    assert_eq!(
        metric("pipeline_bridge_files_seen_total").await,
        "1",
        "published once, not again and again"
    );
    assert_eq!(metric("pipeline_bridge_files_archived_total").await, "0");
    assert!(bridge
        .log_text()
        .contains("failed to archive a published file; will retry"));
    // The archive comes back: the file is archived, whole, and nothing partial is left.
    std::fs::remove_file(&archive).unwrap();
    std::fs::create_dir(&archive).unwrap();
    let deadline = std::time::Instant::now() + LONG;
    while world.files_waiting() > 0 {
        assert!(std::time::Instant::now() < deadline, "never archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let names: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.csv"]);
    assert_eq!(metric("pipeline_bridge_files_seen_total").await, "1");
    // Archived on the retry path, counted like any other (it read 0 here before).
    assert_eq!(metric("pipeline_bridge_files_archived_total").await, "1");
    assert_eq!(metric("pipeline_bridge_rows_published_total").await, "100");
    world.assert_every_row_accounted().await;
}

/// A file held open for writing waits, as it must, but not silently: after a while the bridge
/// says which file waits and why, and `pipeline_bridge_files_waiting` counts it, under `--once`
/// too. Before, it waited with no log line or metric, and `--once` never said why it did not end.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_held_open_for_writing_waits_with_its_reason_logged_and_counted() {
    let world = World::new("held_open").await;
    let _consumer = world.consumer(&[]);
    std::fs::create_dir_all(world.input_dir()).unwrap();
    let path = world.input_dir().join("held.csv");
    // Another process holds the file open for writing after writing whole rows.
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3>>'{}'; printf '{}{}' >&3; exec sleep 60",
            path.display(),
            HEADER.replace('\n', "\\n"),
            rows("held", 3).replace('\n', "\\n")
        ))
        .spawn()
        .unwrap();
    // A name that is not a data file, beside it: ignored, and counted.
    std::fs::write(world.input_dir().join("notes.txt"), "not data").unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let bridge = world.bridge(&["--once", "--metrics-addr", &metrics]);
    let deadline = std::time::Instant::now() + LONG;
    while !bridge.log_text().contains("waits to be complete") {
        assert!(
            std::time::Instant::now() < deadline,
            "no word of the waiting file:\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = bridge.log_text();
    assert!(
        log.contains("held.csv") && log.contains("held open for writing"),
        "{log}"
    );
    let (_, text) =
        telemetry::http_get(&format!("http://{metrics}/metrics"), Duration::from_secs(5))
            .await
            .unwrap();
    assert!(
        text.lines()
            .any(|line| line == "pipeline_bridge_files_waiting 1")
            && text
                .lines()
                .any(|line| line == "pipeline_bridge_files_ignored 1"),
        "{text}"
    );
    // `status` shows both, from the bridge's metrics.
    let status = std::process::Command::new(it_tests::binary_path("status"))
        .args(world.topic_args())
        .args(["--database-url", &world.database_url])
        .args(["--bridge-metrics-url", &format!("http://{metrics}/metrics")])
        .args(["--format", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        report["input_folder"],
        serde_json::json!({"files_waiting": 1, "files_ignored": 1})
    );
    assert_eq!(world.count(EVENTS).await, 0, "taken while held open");

    writer.kill().unwrap();
    writer.wait().unwrap();
    assert!(
        bridge.wait_for_exit(LONG).success(),
        "--once ends once the file is done"
    );
    world.wait_for_count(EVENTS, 3, LONG).await;
    world.assert_every_row_accounted().await;
}
