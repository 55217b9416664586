//! A short chaos run in the default test command: random SIGKILLs of the generator, the bridge,
//! two dynamic consumers (expired by the broker when killed), the Kafka node and PostgreSQL, with
//! hostile files mixed into the input. `scripts/chaos.sh` runs longer ones with three consumers.

#[cfg_attr(feature = "docker", ignore = "needs host Java and initdb")]
#[tokio::test(flavor = "multi_thread")]
async fn random_kills_of_every_component_lose_and_duplicate_nothing() {
    let report = it_tests::chaos::run_chaos(
        45,
        20261125,
        it_tests::chaos::ChaosOptions {
            kill_broker: true,
            kill_postgres: true,
            consumers: 2,
            hostile: true,
        },
    )
    .await
    .unwrap();
    println!("{report}");
    assert_eq!(
        report.victims.len(),
        6,
        "every component killed at least once: {report}"
    );
    assert!(report.rows_in > 1_000, "{report}");
    assert_eq!((report.lost, report.duplicated), (0, 0), "{report}");
    assert!(report.aggregate_differences.is_empty(), "{report}");
    assert!(report.ledger_files > 0, "{report}");
    assert_eq!(
        report.unreconciled_files, 0,
        "every file reconciles: {report}"
    );
    assert_eq!(report.rows_out, report.valid_distinct, "{report}");
}
