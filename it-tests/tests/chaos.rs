//! A short chaos run in the default test command: random SIGKILLs of the generator, the bridge,
//! the consumer (a static member, since Tansu 0.6 never expires dead members), the broker and
//! PostgreSQL, with hostile files mixed into the input. `scripts/chaos.sh` runs longer ones with
//! a second consumer, which is left out here: with Tansu 0.6, two static members killed in turn
//! can leave the group waiting for a member that is gone.

#[cfg_attr(feature = "docker", ignore = "needs a host Tansu or initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn random_kills_of_every_component_lose_and_duplicate_nothing() {
    let report = it_tests::chaos::run_chaos(
        25,
        20261125,
        it_tests::chaos::ChaosOptions {
            kill_broker: true,
            kill_postgres: true,
            consumers: 1,
            hostile: true,
        },
    )
    .await
    .unwrap();
    println!("{report}");
    assert!(report.kills >= 5, "{report}");
    assert!(report.rows_in > 1_000, "{report}");
    assert_eq!((report.lost, report.duplicated), (0, 0), "{report}");
    assert!(report.ledger_files > 0, "{report}");
    assert_eq!(
        report.unreconciled_files, 0,
        "every file reconciles: {report}"
    );
    assert_eq!(report.rows_out, report.valid_distinct, "{report}");
}
