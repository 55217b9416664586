//! Lineage: every stored event names its file, the file's content identity, its line and the
//! Kafka message it came from; `explain` prints it.

use it_tests::{World, HEADER};

use it_tests::PATIENCE as LONG;

#[tokio::test(flavor = "multi_thread")]
async fn explain_names_the_file_line_and_message_of_an_event_even_after_a_republish() {
    let world = World::new("lineage").await;
    let body = format!(
        "{HEADER}first,1,view,10,1.00,2026-11-25T12:00:00Z\nsecond,1,view,10,1.00,2026-11-25T12:00:01Z\n"
    );
    world.drop_file("original.csv", body.as_bytes());
    let _consumer = world.consumer(&["--partitions", "1"]);
    world.bridge_once(&["--partitions", "1"]);
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 2, LONG)
        .await;
    // The same bytes again under another name: nothing new is stored, the lineage stays. (Each
    // publication is two rows and the file's end message.)
    world.drop_file("again.csv", body.as_bytes());
    world.bridge_once(&[]);
    world
        .wait_for_count(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM ingest_checkpoints",
            6,
            LONG,
        )
        .await;
    let (file, file_id, line, partition, offset): (String, String, i64, i32, i64) = sqlx::query_as(
        "SELECT source_file, source_file_id, source_line, kafka_partition, kafka_offset
             FROM ecommerce_events WHERE event_id = 'second'",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        (file.as_str(), line, partition, offset),
        ("original.csv", 3, 0, 1)
    );
    assert_eq!(file_id.len(), 32, "the content identity: {file_id}");

    let output = std::process::Command::new(it_tests::binary_path("explain"))
        .args(["second", "--database-url", &world.database_url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(&format!("file     original.csv line 3 (content {file_id})")),
        "{text}"
    );
    assert!(text.contains("kafka    partition 0, offset 1"), "{text}");
    let missing = std::process::Command::new(it_tests::binary_path("explain"))
        .args(["nobody", "--database-url", &world.database_url])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    world.assert_every_row_accounted().await;
}
