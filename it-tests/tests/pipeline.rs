//! The pipeline end to end against a real broker and a real PostgreSQL: files in, rows out.

use it_tests::{event_ids_in, World, HEADER};
use std::collections::BTreeSet;
use std::time::Duration;

use it_tests::EVENTS;
const REJECTED: &str = "SELECT count(*) FROM ecommerce_events_rejected";
const MINUTE: Duration = Duration::from_secs(60);

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|id| id.to_string()).collect()
}

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn happy_path_every_generated_event_lands_once_with_its_values() {
    let world = World::new("happy").await;
    assert!(world
        .generator(&["--files", "5", "--events-per-file", "400", "--seed", "42"])
        .success());
    let (expected, rows) = event_ids_in(&world.input_dir());
    assert_eq!(rows, 2_000);
    let expected_rows = rows_as_written(&world.input_dir());

    let consumer = world.consumer(&[]);
    world.bridge_once(&[]);
    assert_eq!(world.files_waiting(), 0, "every file archived");
    assert_eq!(files_in(&world.archive_dir()), 5);

    world.wait_for_count(EVENTS, 2_000, MINUTE).await;
    assert_eq!(world.event_ids().await, expected);
    let stored: BTreeSet<String> = sqlx::query_scalar(
        "SELECT concat_ws(',', event_id, user_id, event_type, product_id, price,
                to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
         FROM ecommerce_events",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(stored, expected_rows, "values stored exactly as written");
    assert_eq!(world.count(REJECTED).await, 0);
    assert_eq!(
        world
            .count("SELECT sum(next_offset)::bigint FROM ingest_checkpoints")
            .await,
        2_005,
        "checkpoints cover every message: 2,000 rows and 5 file ends"
    );

    let log = consumer.log.clone();
    let status = consumer.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("batch committed") && log.contains("inserted="));
    assert!(log.contains("consumer stopped"));
    world.assert_every_row_accounted().await;
}

fn rows_as_written(dir: &std::path::Path) -> BTreeSet<String> {
    let mut rows = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        rows.extend(text.lines().skip(1).map(str::to_owned));
    }
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_within_and_across_files_are_written_once_first_wins() {
    let world = World::new("dups").await;
    world.drop_csv(
        "a.csv",
        "e1,1,view,10,1.00,2026-11-25T12:00:00Z\n\
             e2,1,view,11,2.00,2026-11-25T12:00:01Z\n\
             e3,1,add_to_cart,11,2.00,2026-11-25T12:00:02Z\n\
             e2,1,view,11,2.00,2026-11-25T12:00:01Z\n",
    );
    world.drop_csv(
        "b.csv",
        "e3,1,add_to_cart,11,99.00,2026-11-25T12:00:02Z\n\
             e4,2,purchase,11,2.00,2026-11-25T12:00:03Z\n\
             e1,1,view,10,1.00,2026-11-25T12:00:00Z\n",
    );
    let _consumer = world.consumer(&[]);
    world.bridge_once(&[]);
    world.wait_for_count(EVENTS, 4, MINUTE).await;
    assert_eq!(world.event_ids().await, ids(&["e1", "e2", "e3", "e4"]));
    assert_eq!(
        world
            .count("SELECT (price * 100)::bigint FROM ecommerce_events WHERE event_id = 'e3'")
            .await,
        200,
        "the first copy of e3 wins"
    );
    // The duplicates are dropped, not quarantined, and nothing arrives later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.count(EVENTS).await, 4);
    assert_eq!(world.count(REJECTED).await, 0);
    world.assert_every_row_accounted().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_malformed_row_is_quarantined_with_its_reason() {
    let world = World::new("malformed").await;
    let mut body = format!(
        "{HEADER}ok1,1,view,10,1.00,2026-11-25T12:00:00Z\n\
         ok2 , 2 , Purchase , 11 , 5 ,2026-11-25 12:00:00.1234567+01:00\n\
         bad-type,1,click,10,1.00,2026-11-25T12:00:00Z\n\
         bad-price-negative,1,view,10,-1.00,2026-11-25T12:00:00Z\n\
         bad-price-exponent,1,view,10,1e3,2026-11-25T12:00:00Z\n\
         bad-user,abc,view,10,1.00,2026-11-25T12:00:00Z\n\
         bad-product,1,view,2147483648,1.00,2026-11-25T12:00:00Z\n\
         bad-date,1,view,10,1.00,2026-02-30T12:00:00Z\n\
         bad-hour,1,view,10,1.00,2026-11-25T25:00:00Z\n\
         ,1,view,10,1.00,2026-11-25T12:00:00Z\n\
         too-few,1,view,10,1.00\n\
         too-many,1,view,10,1.00,2026-11-25T12:00:00Z,extra\n"
    )
    .into_bytes();
    // line 14: invalid UTF-8 in product_id; line 15: a NUL inside event_id.
    body.extend_from_slice(b"bad-utf8,1,view,1\xff0,1.00,2026-11-25T12:00:00Z\n");
    body.extend_from_slice(b"nul\x00id,1,view,10,1.00,2026-11-25T12:00:00Z\n");
    // lines 16-17: a quoted newline inside event_type; line 18 must still be counted right.
    body.extend_from_slice(
        b"quoted,1,\"vi\new\",10,1.00,2026-11-25T12:00:00Z\n\
          ok3,1,view,10,\"1.50\",2026-11-25T12:00:00Z\n\
          bad-decimals,1,view,10,12.345,2026-11-25T12:00:00Z\n\
          bad-offset,1,view,10,1.00,2026-11-25T12:00:00+25:00\n\
          =HYPERLINK(\"x\"),1,view,10,1.00,2026-11-25T12:00:00Z\n",
    );
    world.drop_file("bad.csv", &body);
    // A header without `price`: every row rejected, naming the column.
    world.drop_file(
        "noprice.csv",
        b"event_id,user_id,event_type,product_id,event_time\n\
          np1,1,view,10,2026-11-25T12:00:00Z\n\
          np2,1,view,10,2026-11-25T12:00:00Z\n",
    );
    world.drop_file("empty.csv", b"");
    world.drop_file("header-only.csv", HEADER.as_bytes());
    // BOM, CRLF, columns in another order with an extra one: accepted.
    world.drop_file(
        "bom-crlf.csv",
        b"\xef\xbb\xbf EVENT_TIME ,price,extra,event_id,user_id,event_type,product_id\r\n\
          2026-11-25T12:00:00Z,3.00,x,crlf1,1,view,10\r\n\r\n",
    );

    let _consumer = world.consumer(&[]);
    world.bridge_once(&[]);
    assert_eq!(files_in(&world.archive_dir()), 5, "all five files archived");
    world.wait_for_count(REJECTED, 17, MINUTE).await;
    world.wait_for_count(EVENTS, 5, MINUTE).await;
    assert_eq!(
        world.event_ids().await,
        ids(&["ok1", "ok2", "ok3", "crlf1", "=HYPERLINK(\"x\")"])
    );
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM ecommerce_events WHERE event_id = 'ok2' AND user_id = 2
                 AND event_type = 'purchase' AND price = 5
                 AND event_time = '2026-11-25T11:00:00.123456Z'"
            )
            .await,
        1,
        "trimmed, lower-cased, offset applied, fraction kept to the microsecond"
    );

    let rows: Vec<(String, i64, String, Option<String>, String)> = sqlx::query_as(
        "SELECT source_file, source_line, reason_code, field, reason
         FROM ecommerce_events_rejected ORDER BY source_file, source_line",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    let got: Vec<(&str, i64, &str, Option<&str>)> = rows
        .iter()
        .map(|(f, l, c, fld, _)| (f.as_str(), *l, c.as_str(), fld.as_deref()))
        .collect();
    let field = Some;
    assert_eq!(
        got,
        vec![
            ("bad.csv", 4, "invalid_field", field("event_type")),
            ("bad.csv", 5, "invalid_field", field("price")),
            ("bad.csv", 6, "invalid_field", field("price")),
            ("bad.csv", 7, "invalid_field", field("user_id")),
            ("bad.csv", 8, "invalid_field", field("product_id")),
            ("bad.csv", 9, "invalid_field", field("event_time")),
            ("bad.csv", 10, "invalid_field", field("event_time")),
            ("bad.csv", 11, "invalid_field", field("event_id")),
            ("bad.csv", 12, "field_count", None),
            ("bad.csv", 13, "field_count", None),
            ("bad.csv", 14, "invalid_utf8", None),
            ("bad.csv", 15, "invalid_field", field("event_id")),
            ("bad.csv", 16, "invalid_field", field("event_type")),
            ("bad.csv", 19, "invalid_field", field("price")),
            ("bad.csv", 20, "invalid_field", field("event_time")),
            ("noprice.csv", 2, "missing_column", field("price")),
            ("noprice.csv", 3, "missing_column", field("price")),
        ]
    );
    for (_, line, _, _, reason) in &rows {
        assert!(!reason.is_empty(), "line {line} has a reason");
    }
    assert!(rows[0].4.contains("`event_type`") && rows[0].4.contains("click"));
    assert_eq!(rows[8].4, "row has 5 fields, header has 6");
    assert_eq!(rows[10].4, "field `product_id`: invalid UTF-8");
    assert_eq!(rows[15].4, "header has no column `price`");

    let raw = |line: i64| {
        let pool = world.pool.clone();
        async move {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT raw FROM ecommerce_events_rejected WHERE source_file = 'bad.csv' AND source_line = $1",
            )
            .bind(line)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        raw(14).await,
        b"bad-utf8,1,view,1\xff0,1.00,2026-11-25T12:00:00Z".to_vec(),
        "invalid UTF-8 kept byte for byte"
    );
    assert_eq!(
        raw(15).await,
        b"nul\x00id,1,view,10,1.00,2026-11-25T12:00:00Z".to_vec(),
        "NUL kept"
    );
    world.assert_every_row_accounted().await;
}

async fn late_world(policy: &str) -> (World, it_tests::Proc) {
    let world = World::new(&format!("late_{policy}")).await;
    // One partition, so every row meets the same watermark.
    world.drop_csv(
        "late.csv",
        "on1,1,view,10,1.00,2026-11-25T12:00:00Z\n\
             on2,1,view,10,1.00,2026-11-25T12:30:00Z\n\
             late1,1,view,10,1.00,2026-11-25T12:05:00Z\n\
             on3,1,view,10,1.00,2026-11-25T12:20:00Z\n\
             late2,1,view,10,1.00,2026-11-24T12:00:00Z\n\
             late1,1,view,10,1.00,2026-11-25T12:05:00Z\n",
    );
    let consumer = world.consumer(&["--partitions", "1", "--late-policy", policy]);
    world.bridge_once(&["--partitions", "1"]);
    (world, consumer)
}

#[tokio::test(flavor = "multi_thread")]
async fn late_events_are_written_and_flagged_under_accept() {
    let (world, _consumer) = late_world("accept").await;
    world.wait_for_count(EVENTS, 5, MINUTE).await;
    let late: BTreeSet<String> =
        sqlx::query_scalar("SELECT event_id FROM ecommerce_events WHERE is_late")
            .fetch_all(&world.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(late, ids(&["late1", "late2"]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(world.count(REJECTED).await, 0);
    assert_eq!(world.count(EVENTS).await, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn late_events_are_quarantined_once_under_quarantine() {
    let (world, _consumer) = late_world("quarantine").await;
    world.wait_for_count(EVENTS, 3, MINUTE).await;
    world.wait_for_count(REJECTED, 2, MINUTE).await;
    assert_eq!(world.event_ids().await, ids(&["on1", "on2", "on3"]));
    let late: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT event_id, reason_code, field FROM ecommerce_events_rejected ORDER BY event_id",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        late,
        vec![
            ("late1".into(), "late".into(), Some("event_time".into())),
            ("late2".into(), "late".into(), Some("event_time".into())),
        ],
        "the second copy of late1 is a duplicate, not a second quarantine"
    );
}
