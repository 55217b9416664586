//! Compressed input files (`*.csv.gz`, `*.csv.zst`) are read as their content: rows, lines,
//! lineage, the ledger and the archive as for a plain file, the same rows compressed or not are
//! one content, a stream that does not decode is one reject that says where, and a large one is
//! streamed.

use it_tests::{World, EVENTS, HEADER, PATIENCE as LONG, RECONCILED_FILES};
use std::io::Write;

const TIME: &str = "2026-11-20T10:00:00Z";

fn rows(prefix: &str, count: usize) -> String {
    let mut csv = HEADER.to_owned();
    for i in 0..count {
        csv.push_str(&format!(
            "{prefix}-{i},{},view,{},1.50,{TIME}\n",
            1 + i % 40,
            100 + i % 7
        ));
    }
    csv
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

async fn rejects(world: &World) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT source_file, reason_code, reason FROM ecommerce_events_rejected ORDER BY 1",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap()
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn gzip_and_zstd_files_are_read_as_their_content_and_equal_the_same_rows_plain() {
    let world = World::new("compressed").await;
    let gz = rows("gz", 300);
    let zs = rows("zs", 200);
    world.drop_file("a.csv.gz", &gzip(gz.as_bytes()));
    world.drop_file("b.CSV.ZST", &zstd::encode_all(zs.as_bytes(), 3).unwrap());
    let _consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    world.wait_for_count(EVENTS, 500, LONG).await;
    world.wait_for_count(RECONCILED_FILES, 2, LONG).await;
    // The same rows plain: one content with the compressed file, every row a duplicate.
    world.drop_file("a-plain.csv", gz.as_bytes());
    world
        .wait_for_count(
            "SELECT count(*) FROM ingest_files_by_name
             WHERE file_name = 'a-plain.csv' AND rows_duplicate = 300",
            1,
            LONG,
        )
        .await;
    world.wait_until_archived(LONG).await;
    assert_eq!(world.count(EVENTS).await, 500);

    // Lines and lineage are those of the content, under the compressed file's name.
    let (file, line): (String, i64) = sqlx::query_as(
        "SELECT source_file, source_line FROM ecommerce_events WHERE event_id = 'zs-10'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!((file.as_str(), line), ("b.CSV.ZST", 12));
    let ledger: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT file_name, rows_read, rows_inserted, rows_duplicate FROM ingest_files_by_name
         ORDER BY file_name",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    let expected = [
        ("a-plain.csv", 300, 0, 300),
        ("a.csv.gz", 300, 300, 0),
        ("b.CSV.ZST", 200, 200, 0),
    ]
    .map(|(n, r, i, d)| (n.to_owned(), r, i, d));
    assert_eq!(ledger, expected);
    // Archived as they came: the compressed bytes, under their names.
    let archived = std::fs::read(world.archive_dir().join("a.csv.gz")).unwrap();
    assert_eq!(archived, gzip(gz.as_bytes()));
    assert!(world.archive_dir().join("b.CSV.ZST").exists());

    // A backfill of the archive reads the compressed files again: every row a duplicate.
    let messages = "SELECT coalesce(sum(next_offset), 0)::int8 FROM ingest_checkpoints";
    let before = world.count(messages).await;
    let (status, log) = world.backfill(&world.archive_dir(), &[]);
    assert!(status.success(), "backfill failed: {status}\n{log}");
    // Each file's rows and its end message.
    world.wait_for_at_least(messages, before + 803, LONG).await;
    assert_eq!(world.count(EVENTS).await, 500);
    assert_eq!(
        world
            .count("SELECT count(*) FROM ecommerce_events_rejected")
            .await,
        0
    );
    world.assert_aggregates_exact().await;
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_file_that_does_not_decode_is_one_reject_that_says_where() {
    let world = World::new("compressed_bad").await;
    let mut truncated = gzip(rows("cut", 5_000).as_bytes());
    truncated.truncate(truncated.len() / 2);
    world.drop_file("cut.csv.gz", &truncated);
    world.drop_file("plain.csv.gz", rows("plain", 3).as_bytes());
    world.drop_file("noise.csv.zst", &[7u8; 300]);
    world.drop_file("good.csv", rows("good", 3).as_bytes());
    let _consumer = world.consumer(&[]);
    let _bridge = world.bridge(&[]);
    world.wait_for_count(RECONCILED_FILES, 4, LONG).await;
    world.wait_until_archived(LONG).await;
    // Nothing of a file that does not decode is stored, not even the rows before the fault.
    assert_eq!(world.count(EVENTS).await, 3);
    let rejects = rejects(&world).await;
    let files: Vec<&str> = rejects.iter().map(|(f, _, _)| f.as_str()).collect();
    assert_eq!(files, ["cut.csv.gz", "noise.csv.zst", "plain.csv.gz"]);
    for (file, code, reason) in &rejects {
        assert_eq!(code, "undecodable_file", "{file}: {reason}");
        assert!(
            reason.contains("does not decode at byte"),
            "{file}: {reason}"
        );
    }
    let (_, _, cut) = &rejects[0];
    assert!(
        cut.contains("gzip stream") && cut.contains("ends early"),
        "{cut}"
    );
    // Where it stopped: deep into the content, not at its start.
    let line: i64 = world
        .count("SELECT source_line FROM ecommerce_events_rejected WHERE source_file = 'cut.csv.gz'")
        .await;
    assert!(line > 100, "stopped at line {line}");
    let (_, _, plain) = &rejects[2];
    assert!(plain.contains("at byte"), "{plain}");
    // Each such file is one row read, that row rejected: reconciled, archived as it came.
    let ledger: i64 = world
        .count(
            "SELECT count(*) FROM ingest_files_by_name
             WHERE rows_read = 1 AND rows_rejected = 1 AND reconciled_at IS NOT NULL",
        )
        .await;
    assert_eq!(ledger, 3);
    assert_eq!(
        std::fs::read(world.archive_dir().join("cut.csv.gz")).unwrap(),
        truncated
    );
    world.assert_every_row_accounted().await;
}

#[cfg_attr(feature = "docker", ignore = "needs host Java")]
#[tokio::test(flavor = "multi_thread")]
async fn a_large_compressed_file_is_streamed_within_the_bridges_memory() {
    let world = World::new("compressed_large").await;
    // 256 MiB of content in a few hundred KiB: one unterminated field between two good rows.
    let path = world.dir.path().join("big.csv.gz");
    let made = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ printf '{}first,1,view,10,1.00,{TIME}\\nbig,1,view,10,1.00,\"'; \
               head -c 268435456 /dev/zero | tr '\\0' y; \
               printf '\"\\nlast,1,view,10,1.00,{TIME}\\n'; }} | gzip -1 > '{}'",
            HEADER.replace('\n', "\\n"),
            path.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::create_dir_all(world.input_dir()).unwrap();
    std::fs::rename(&path, world.input_dir().join("big.csv.gz")).unwrap();
    let _consumer = world.consumer(&[]);
    let bridge = world.bridge(&["--once"]);
    let log = bridge.log.clone();
    let (status, peak_kib) = bridge.wait_with_peak_rss(LONG);
    let log = std::fs::read_to_string(log).unwrap();
    assert!(status.success(), "file-bridge --once failed:\n{log}");
    assert!(
        peak_kib < 100 * 1024,
        "bridge peak RSS {peak_kib} KiB for 256 MiB of compressed content"
    );
    world.wait_for_count(RECONCILED_FILES, 1, LONG).await;
    let ids = world.event_ids().await;
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), ["first", "last"]);
    let rejected: i64 = world
        .count("SELECT count(*) FROM ecommerce_events_rejected WHERE reason_code = 'row_too_large'")
        .await;
    assert_eq!(rejected, 1);
    world.assert_every_row_accounted().await;
}
