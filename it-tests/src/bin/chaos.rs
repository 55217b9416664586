//! `chaos`: runs the pipeline under random SIGKILLs of every component for a while, then checks
//! and prints the invariant. Exits non-zero if anything was lost or duplicated.

use clap::Parser;

/// Random kills of generator, bridge, consumers, broker and PostgreSQL; then the invariant.
#[derive(Parser)]
struct Args {
    /// How long the kills go on.
    #[arg(long, env = "CHAOS_SECONDS", default_value_t = 60)]
    seconds: u64,
    /// Seed of the kill schedule (default: random).
    #[arg(long, env = "CHAOS_SEED")]
    seed: Option<u64>,
    /// Never kill the broker (Tansu 0.6 can lose its consumer group's assignments when it is
    /// killed under a group; Redpanda and Kafka do not).
    #[arg(long, env = "CHAOS_SPARE_BROKER")]
    spare_broker: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("chaos: {} s of random kills, seed {seed}", args.seconds);
    let report = it_tests::chaos::run_chaos(
        args.seconds,
        seed,
        it_tests::chaos::ChaosOptions {
            kill_broker: !args.spare_broker,
            kill_postgres: true,
            consumers: 2,
            hostile: true,
        },
    )
    .await?;
    println!("{report}");
    anyhow::ensure!(
        report.lost == 0 && report.duplicated == 0 && report.unreconciled_files == 0,
        "the invariant does not hold"
    );
    Ok(())
}
