//! More than one of each: two bridges on one input folder publish every file once (and adopt the
//! claims of a bridge that is gone); two or three consumers share six partitions evenly, without a
//! rebalance storm, and the invariant holds.

use it_tests::{event_ids_in, World, HEADER};
use std::collections::BTreeSet;
use std::time::Duration;

use it_tests::BROKER_FAULT_PATIENCE as LONG;
use it_tests::EVENTS;
const MESSAGES: &str = "SELECT coalesce(sum(next_offset), 0)::int8 FROM ingest_checkpoints";

#[tokio::test(flavor = "multi_thread")]
async fn two_bridges_on_one_folder_publish_each_file_once_and_adopt_a_dead_ones_claims() {
    let world = World::new("two_bridges").await;
    // Files a bridge that is gone had claimed (no live process holds its lock), and one an
    // older version left directly in the claim folder.
    let claims = world.input_dir().join(".claimed");
    std::fs::create_dir_all(claims.join("gone")).unwrap();
    let orphan = format!("{HEADER}orphan-1,1,view,10,1.00,2026-11-25T12:00:00Z\n");
    std::fs::write(claims.join("gone").join("orphan.csv"), &orphan).unwrap();
    let legacy = format!("{HEADER}legacy-1,1,view,10,1.00,2026-11-25T12:00:00Z\n");
    std::fs::write(claims.join("legacy.csv"), &legacy).unwrap();

    // Both bridges find all twelve files at start: the sharpest race for the claims.
    assert!(world
        .generator(&["--files", "12", "--events-per-file", "300", "--seed", "51"])
        .success());
    let (mut expected, rows) = event_ids_in(&world.input_dir());
    expected.extend(["orphan-1".to_owned(), "legacy-1".to_owned()]);
    let _consumer = world.consumer(&[]);
    let a = world.bridge(&["--instance-id", "a"]);
    let b = world.bridge(&["--instance-id", "b"]);
    // A third bridge under a name a live one holds refuses to start.
    let deadline = std::time::Instant::now() + LONG;
    while !a.log_text().contains("bridge started") {
        assert!(std::time::Instant::now() < deadline, "{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let twin = world
        .bridge(&["--instance-id", "a"])
        .wait_with_log(Duration::from_secs(60));
    assert!(!twin.0.success(), "{}", twin.1);
    assert!(twin.1.contains("its own --instance-id"), "{}", twin.1);
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    // Every file published exactly once: its rows and its end, nothing more, ever.
    let messages = (rows + 12 + 2 * 2) as i64;
    world.wait_for_count(MESSAGES, messages, LONG).await;
    world.wait_until_archived(LONG).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.count(MESSAGES).await, messages);
    assert_eq!(world.event_ids().await, expected);
    let published = |log: String| log.matches("file published").count();
    let (by_a, by_b) = (published(a.log_text()), published(b.log_text()));
    assert_eq!(by_a + by_b, 14, "a published {by_a}, b {by_b}");
    world.assert_every_row_accounted().await;
}

/// The partitions a consumer was given last, from its log.
fn assigned(log: &str) -> Option<usize> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("partitions assigned"))?;
    let list = line
        .split("partitions=")
        .nth(1)?
        .split_whitespace()
        .next()?;
    Some(list.split(',').filter(|p| !p.is_empty()).count())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_share_six_partitions_evenly_without_a_rebalance_storm() {
    share_six_partitions(2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_consumers_share_six_partitions_evenly_without_a_rebalance_storm() {
    share_six_partitions(3).await;
}

/// `n` consumers joining at once on a six-partition topic: every event once, six / n partitions
/// each, at most one assignment round per join, and none while the group idles.
async fn share_six_partitions(n: usize) {
    let world = World::new(&format!("consumers_{n}")).await;
    assert!(world
        .generator(&[
            "--files",
            "12",
            "--events-per-file",
            "1000",
            "--seed",
            "52",
            "--duplicate-rate",
            "0.05",
        ])
        .success());
    let (expected, _) = event_ids_in(&world.input_dir());
    world.bridge_once(&["--partitions", "6"]);
    let consumers: Vec<_> = (0..n)
        .map(|_| world.consumer(&["--partitions", "6", "--batch-size", "500"]))
        .collect();
    world
        .wait_for_count(EVENTS, expected.len() as i64, LONG)
        .await;
    let stored: BTreeSet<String> = world.event_ids().await;
    assert_eq!(stored, expected);

    let deadline = std::time::Instant::now() + LONG;
    let spread = || -> Vec<Option<usize>> {
        consumers
            .iter()
            .map(|consumer| assigned(&consumer.log_text()))
            .collect()
    };
    while spread() != vec![Some(6 / n); n] {
        assert!(
            std::time::Instant::now() < deadline,
            "uneven: {:?}",
            spread()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Settled: no further rebalance while the group idles.
    let rebalances = || -> usize {
        consumers
            .iter()
            .map(|c| c.log_text().matches("partitions assigned").count())
            .sum()
    };
    let settled = rebalances();
    assert!(
        settled <= n * n,
        "{n} joins cost at most {n} rounds each: {settled}"
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rebalances(), settled, "no rebalance while idle");
    assert_eq!(world.count(EVENTS).await, expected.len() as i64);
}
