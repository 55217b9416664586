//! Repair and reload: quarantined rows exported, fixed and dropped in again resolve their rejects
//! once; an archive backfilled into an empty database yields exactly the distinct valid events.

use it_tests::{binary_path, World, RECONCILED_FILES};
use std::process::Command;

use it_tests::PATIENCE as LONG;
const RESOLVED: &str =
    "SELECT count(*) FROM ecommerce_events_rejected WHERE resolved_at IS NOT NULL";

/// Runs `quarantine export` into `path`; the rows it wrote, as records.
fn export(world: &World, path: &std::path::Path) -> Vec<csv::StringRecord> {
    let output = Command::new(binary_path("quarantine"))
        .args(["export", "--database-url", &world.database_url, "--output"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut reader = csv::Reader::from_path(path).unwrap();
    reader.records().map(Result::unwrap).collect()
}

/// Publishes the input folder, waits for `rejects` quarantined rows and exports them into a
/// scratch folder; the consumer (kept running), the folder and the exported rows.
async fn published_and_exported(
    world: &World,
    rejects: i64,
) -> (it_tests::Proc, tempfile::TempDir, Vec<csv::StringRecord>) {
    world.bridge_once(&[]);
    let consumer = world.consumer(&[]);
    world
        .wait_for_count(
            "SELECT count(*) FROM ecommerce_events_rejected",
            rejects,
            LONG,
        )
        .await;
    let scratch = tempfile::tempdir().unwrap();
    let records = export(world, &scratch.path().join("rejects.csv"));
    assert_eq!(records.len() as i64, rejects, "{records:?}");
    (consumer, scratch, records)
}

/// What an operator would do to the exported rows: mend the bad values, rebuild the short row.
fn fixed(records: &[csv::StringRecord]) -> String {
    let mut out = String::from(
        "event_id,user_id,event_type,product_id,price,event_time,reject_reason,reject_id,original_row\n",
    );
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
    for record in records {
        let mut fields: Vec<String> = record.iter().map(str::to_owned).collect();
        if !fields[8].is_empty() {
            let original: Vec<&str> = fields[8].split(',').collect();
            fields[0] = original[0].to_owned();
            fields[1..6].clone_from_slice(&[
                "1".into(),
                "view".into(),
                "10".into(),
                "1.00".into(),
                "2026-11-25T12:05:00Z".into(),
            ]);
        }
        if fields[4] == "abc" {
            fields[4] = "3.00".into();
        }
        if fields[2] == "click" {
            fields[2] = "view".into();
        }
        writer.write_record(&fields).unwrap();
    }
    out.push_str(&String::from_utf8(writer.into_inner().unwrap()).unwrap());
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn rejects_without_a_usable_event_id_are_resolved_by_their_reject_id() {
    let world = World::new("remedy_ids").await;
    let long_id = "a".repeat(65);
    world.drop_csv(
        "ids.csv",
        &format!(
            ",1,view,10,1.00,2026-11-25T12:00:00Z\n\
             {long_id},1,view,10,1.00,2026-11-25T12:01:00Z\n\
             fine,1,view,10,1.00,2026-11-25T12:02:00Z\n"
        ),
    );
    // A file without a header: its rows are `missing_header`, their event_id unknown.
    world.drop_file("headless.csv", b"h1,1,view,10,1.00,2026-11-25T12:03:00Z\n");
    let (_consumer, scratch, records) = published_and_exported(&world, 3).await;

    // Each given an event_id of its own (the ids the rejects lacked), the rest as exported.
    let mut writer = csv::WriterBuilder::new().from_writer(Vec::new());
    writer
        .write_record([
            "event_id",
            "user_id",
            "event_type",
            "product_id",
            "price",
            "event_time",
            "reject_reason",
            "reject_id",
            "original_row",
        ])
        .unwrap();
    for (n, record) in records.iter().enumerate() {
        let mut fields: Vec<String> = record.iter().map(str::to_owned).collect();
        fields[0] = format!("fix-{n}");
        fields[1..6].clone_from_slice(&[
            "1".into(),
            "view".into(),
            "10".into(),
            "1.00".into(),
            "2026-11-25T12:05:00Z".into(),
        ]);
        writer.write_record(&fields).unwrap();
    }
    world.drop_file("fixed.csv", &writer.into_inner().unwrap());
    world.bridge_once(&[]);
    world.wait_for_count(RESOLVED, 3, LONG).await;
    let resolved_by: Vec<(String, i64)> = sqlx::query_as(
        "SELECT resolved_by_file, resolved_by_line FROM ecommerce_events_rejected ORDER BY id",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert!(
        resolved_by.iter().all(|(file, _)| file == "fixed.csv"),
        "{resolved_by:?}"
    );
    assert!(export(&world, &scratch.path().join("again.csv")).is_empty());
    world.wait_for_count(RECONCILED_FILES, 3, LONG).await;
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exported_rejects_fixed_and_dropped_in_again_are_resolved_once() {
    let world = World::new("remedy").await;
    world.drop_csv(
        "broken.csv",
        "r1,1,view,10,1.00,2026-11-25T12:00:00Z\n\
             r2,1,purchase,10,abc,2026-11-25T12:01:00Z\n\
             r3,1,click,10,1.00,2026-11-25T12:02:00Z\n\
             r4,1,view\n",
    );
    let (_consumer, scratch, records) = published_and_exported(&world, 3).await;
    assert!(records[0][6].starts_with("invalid_field: "), "{records:?}");

    // Fixed, dropped in, published: every reject resolved by the row that brought its event.
    let body = fixed(&records);
    world.drop_file("fixed.csv", body.as_bytes());
    world.bridge_once(&[]);
    world.wait_for_count(RESOLVED, 3, LONG).await;
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 4, LONG)
        .await;
    let resolved_by: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT event_id, resolved_by_file, resolved_by_line FROM ecommerce_events_rejected
         ORDER BY event_id",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        resolved_by,
        [("r2", 2), ("r3", 3), ("r4", 4)].map(|(id, line)| (
            id.to_owned(),
            "fixed.csv".to_owned(),
            line
        ))
    );
    assert!(export(&world, &scratch.path().join("again.csv")).is_empty());

    // Doing it twice changes nothing: the same fix again is only duplicates.
    let before: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_id, resolved_at::text FROM ecommerce_events_rejected ORDER BY 1",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    world.drop_file("fixed-again.csv", body.as_bytes());
    world.bridge_once(&[]);
    world.wait_for_count(RECONCILED_FILES, 2, LONG).await;
    let after: Vec<(String, String)> = sqlx::query_as(
        "SELECT event_id, resolved_at::text FROM ecommerce_events_rejected ORDER BY 1",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(before, after);
    assert_eq!(
        world.count("SELECT count(*) FROM ecommerce_events").await,
        4
    );
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_of_an_archive_into_an_empty_database_yields_exactly_the_distinct_valid_events()
{
    let live = World::new("backfill_live").await;
    assert!(live
        .generator(&[
            "--files",
            "4",
            "--events-per-file",
            "400",
            "--seed",
            "41",
            "--duplicate-rate",
            "0.1",
            "--malformed-rate",
            "0.05",
        ])
        .success());
    live.bridge_once(&[]);
    let _live_consumer = live.consumer(&[]);
    live.wait_for_count(RECONCILED_FILES, 4, LONG).await;
    let expected = live.event_ids().await;
    let archive = live.archive_dir();
    let archived: Vec<_> = std::fs::read_dir(&archive).unwrap().collect();

    // A new database and topic, loaded from the archive alone.
    let fresh = World::new("backfill_fresh").await;
    let backfill = fresh.spawn(
        "file-bridge",
        &[
            "--backfill",
            archive.to_str().unwrap(),
            "--backfill-rate",
            "2000",
            "--brokers",
            &fresh.brokers,
            "--topic",
            &fresh.topic,
            "--input-dir",
            fresh.input_dir().to_str().unwrap(),
        ],
    );
    let _consumer = fresh.consumer(&[]);
    let (status, log) = backfill.wait_with_log(LONG);
    assert!(status.success(), "backfill failed: {status}\n{log}");
    assert!(log.contains("backfill started"), "{log}");
    let done = log
        .lines()
        .find(|l| l.contains("backfill done"))
        .unwrap_or_default();
    assert!(done.contains("files=4"), "progress: {log}");
    // The rate limit held: at 2,000 rows/s, the rows took at least rows/2,000 seconds.
    let field = |name: &str| -> f64 {
        let start = done.find(&format!(" {name}=")).expect(done) + name.len() + 2;
        done[start..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .expect(done)
    };
    assert_eq!(field("rows"), 1_600.0, "{done}");
    assert!(
        field("seconds") >= (field("rows") - 1.0) / 2_000.0,
        "{done}"
    );
    fresh
        .wait_for_count(
            "SELECT count(*) FROM ingest_files WHERE reconciled_at IS NOT NULL AND backfilled_at IS NOT NULL",
            4,
            LONG,
        )
        .await;
    assert_eq!(fresh.event_ids().await, expected);
    assert_eq!(
        std::fs::read_dir(&archive).unwrap().count(),
        archived.len(),
        "the archive is left as it was"
    );
    assert_eq!(
        fresh
            .count("SELECT count(*) FROM ecommerce_events_rejected")
            .await,
        live.count("SELECT count(*) FROM ecommerce_events_rejected")
            .await
    );
}
