//! Hostile input: each bad row lands in the rejected table with a precise reason, nothing else is
//! disturbed, memory stays bounded, and odd things in the folder are ignored with a warning.

use it_tests::{World, HEADER};

use it_tests::PATIENCE as LONG;
const TIME: &str = "2026-11-25T12:00:00Z";

#[tokio::test(flavor = "multi_thread")]
async fn hostile_rows_are_quarantined_precisely_and_memory_stays_bounded() {
    let world = World::new("hostile").await;
    let mut body = format!(
        "{HEADER}'; DROP TABLE ecommerce_events; --,1,view,10,1.00,{TIME}\n\
         \"=SUM(A1:A9)\",1,view,10,1.00,{TIME}\n\
         nan,1,view,10,NaN,{TIME}\n\
         huge-exponent,1,view,10,1e309,{TIME}\n\
         negative,1,view,10,-0.01,{TIME}\n\
         big-id-"
    )
    .into_bytes();
    body.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    body.extend_from_slice(
        format!(
            ",1,view,10,1.00,{TIME}\nafter-big,1,view,10,1.00,{TIME}\nlast,1,view,10,1.00,{TIME}"
        )
        .as_bytes(),
    );
    world.drop_file("hostile.csv", &body);
    // An unbalanced quote swallows the rest of the file into one field.
    world.drop_csv(
        "unbalanced.csv",
        &format!(
            "fine,1,view,10,1.00,{TIME}\nu1,1,view,10,\"1.00,{TIME}\nu2,1,view,10,1.00,{TIME}\n"
        ),
    );
    // 50 MB in one unterminated field: rejected, and the bridge never holds it in memory.
    let mut huge = format!("{HEADER}h1,1,view,10,1.00,\"").into_bytes();
    huge.extend(std::iter::repeat_n(b'y', 50 * 1024 * 1024));
    world.drop_file("huge-field.csv", &huge);
    // Things that are not regular files: skipped with a warning, never opened.
    let input = world.input_dir();
    let fifo = std::process::Command::new("mkfifo")
        .arg(input.join("pipe.csv"))
        .status()
        .unwrap();
    assert!(fifo.success());
    std::fs::write(world.dir.path().join("outside.csv"), HEADER).unwrap();
    std::os::unix::fs::symlink(world.dir.path().join("outside.csv"), input.join("link.csv"))
        .unwrap();

    let _consumer = world.consumer(&[]);
    let bridge = world.bridge(&["--once"]);
    let log = bridge.log.clone();
    let (status, peak_kib) = bridge.wait_with_peak_rss(LONG);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "file-bridge --once failed:\n{log}");
    assert!(
        log.contains("pipe.csv") && log.contains("special file"),
        "{log}"
    );
    assert!(log.contains("link.csv") && log.contains("symlink"), "{log}");
    assert!(
        peak_kib < 200 * 1024,
        "bridge peak RSS {peak_kib} KiB for a 50 MB field"
    );

    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 5, LONG)
        .await;
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events_rejected", 6, LONG)
        .await;
    let events = world.event_ids().await;
    let expected: std::collections::BTreeSet<String> = [
        "'; DROP TABLE ecommerce_events; --",
        "=SUM(A1:A9)",
        "after-big",
        "last",
        "fine",
    ]
    .map(String::from)
    .into();
    assert_eq!(
        events, expected,
        "values that look like SQL or formulas are stored verbatim"
    );
    let rejected: Vec<(String, i64, String, Option<String>, String)> = sqlx::query_as(
        "SELECT source_file, source_line, reason_code, field, reason FROM ecommerce_events_rejected
         ORDER BY source_file, source_line",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    let codes: Vec<(&str, i64, &str, Option<&str>)> = rejected
        .iter()
        .map(|(f, l, c, fld, _)| (f.as_str(), *l, c.as_str(), fld.as_deref()))
        .collect();
    assert_eq!(
        codes,
        vec![
            ("hostile.csv", 4, "invalid_field", Some("price")),
            ("hostile.csv", 5, "invalid_field", Some("price")),
            ("hostile.csv", 6, "invalid_field", Some("price")),
            ("hostile.csv", 7, "row_too_large", None),
            ("huge-field.csv", 2, "row_too_large", None),
            ("unbalanced.csv", 3, "field_count", None),
        ]
    );
    assert!(
        rejected[3].4.contains("the limit is 262144"),
        "{}",
        rejected[3].4
    );
    assert_eq!(rejected[5].4, "row has 5 fields, header has 6");
    assert!(
        world.files_waiting() == 2,
        "only the FIFO and the link are left"
    );
    world.assert_every_row_accounted().await;
}

/// A row within the caps whose message would still be larger than the broker takes (JSON writes a
/// control character as six bytes): quarantined by reference, and the rows around it land.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_too_large_for_one_message_is_quarantined_by_reference() {
    let world = World::new("too_large").await;
    let _consumer = world.consumer(&[]);
    // Within the row cap, too large once encoded: as JSON, control characters take six bytes
    // each; in the binary format one, so there the broker's limit is set below the row.
    let controls = "\u{1}".repeat(60_000);
    for (name, bridge_args) in [
        ("json", &["--wire-format", "json"][..]),
        ("binary", &["-X", "message.max.bytes=150000"][..]),
    ] {
        let before = format!("{HEADER}before-{name},1,view,10,1.00,{TIME}\n");
        let body = format!(
            "{before}{controls},{controls},{controls},10,1.00,{TIME}\nafter-{name},1,view,10,1.00,{TIME}\n"
        );
        let file = format!("controls-{name}.csv");
        world.drop_file(&file, body.as_bytes());
        world.bridge_once(bridge_args);
        let of_file = format!("FROM ecommerce_events_rejected WHERE source_file = '{file}'");
        world
            .wait_for_count(&format!("SELECT count(*) {of_file}"), 1, LONG)
            .await;
        let (line, code, reason): (i64, String, String) = sqlx::query_as(&format!(
            "SELECT source_line, reason_code, reason {of_file}"
        ))
        .fetch_one(&world.pool)
        .await
        .unwrap();
        assert_eq!((line, code.as_str()), (3, "too_large"), "{name}");
        let start = before.len();
        let end = start + 3 * controls.len() + 2 + ",10,1.00,".len() + TIME.len();
        assert!(
            reason.contains(&format!("bytes are {start}..{end} of the file")),
            "{reason}"
        );
        assert_eq!(world.files_waiting(), 0, "{name}: the file was archived");
    }
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 4, LONG)
        .await;
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events_rejected", 2, LONG)
        .await;
    world.assert_every_row_accounted().await;
}

/// The world's topic, made by an operator to take record batches of 16 kB at most.
fn create_topic_of_small_batches(world: &World) {
    it_tests::broker::kafka_tool(
        "org.apache.kafka.tools.TopicCommand",
        &[
            "--bootstrap-server",
            &world.brokers,
            "--create",
            "--topic",
            &world.topic,
            "--partitions",
            "3",
            "--config",
            "max.message.bytes=16384",
        ],
    );
}

/// An operator's topic that takes smaller record batches than the producer would send
/// (`max.message.bytes` below the bridge's batch size, as on clusters tuned for small
/// messages), which the bridge is not told: every row still lands and the file is archived. A
/// row too large for the topic alone is quarantined as `too_large`, not retried forever.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_topic_that_takes_only_small_batches_still_gets_every_row() {
    let world = World::new("small_batches").await;
    create_topic_of_small_batches(&world);
    let mut body = HEADER.to_owned();
    for n in 0..5000 {
        body.push_str(&format!("small-{n},1,view,10,1.00,{TIME}\n"));
        if n == 2500 {
            let wide = "w".repeat(20_000);
            body.push_str(&format!("wide,1,{wide},10,1.00,{TIME}\n"));
        }
    }
    world.drop_file("many.csv", body.as_bytes());
    let bridge = world.bridge(&[]);
    let _consumer = world.consumer(&[]);
    world.wait_for_count(it_tests::EVENTS, 5000, LONG).await;
    world
        .wait_for_count(
            "SELECT count(*) FROM ecommerce_events_rejected WHERE reason_code = 'too_large'",
            1,
            LONG,
        )
        .await;
    assert_eq!(
        world
            .count("SELECT count(*) FROM ecommerce_events_rejected")
            .await,
        1
    );
    let deadline = std::time::Instant::now() + LONG;
    while !world.archive_dir().join("many.csv").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "not archived:\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    world.assert_every_row_accounted().await;
}

/// The same topic, filled by `file-bridge --backfill`: before, the backfill never sent smaller
/// batches, so every large file failed the same way on every try.
#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_into_a_topic_that_takes_only_small_batches_gets_every_row() {
    let world = World::new("small_backfill").await;
    create_topic_of_small_batches(&world);
    let archive = world.dir.path().join("old-archive");
    std::fs::create_dir_all(&archive).unwrap();
    let mut body = HEADER.to_owned();
    for n in 0..5000 {
        body.push_str(&format!("old-{n},1,view,10,1.00,{TIME}\n"));
    }
    std::fs::write(archive.join("many.csv"), body).unwrap();
    let _consumer = world.consumer(&[]);
    let (status, log) = world.backfill(&archive, &[]);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("publishing those files again in smaller ones"),
        "{log}"
    );
    world.wait_for_count(it_tests::EVENTS, 5000, LONG).await;
    assert_eq!(
        world
            .count("SELECT count(*) FROM ecommerce_events_rejected")
            .await,
        0
    );
    world.assert_every_row_accounted().await;
}
