//! A short chaos run in the default test command; `scripts/chaos.sh` runs longer ones.

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_of_every_component_lose_and_duplicate_nothing() {
    let report = it_tests::chaos::run_chaos(25, 20261125).await.unwrap();
    println!("{report}");
    assert!(report.kills >= 5, "{report}");
    assert!(report.rows_in > 1_000, "{report}");
    assert_eq!((report.lost, report.duplicated), (0, 0), "{report}");
    assert_eq!(report.rows_out, report.valid_distinct, "{report}");
}
