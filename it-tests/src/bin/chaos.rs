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
    /// Never kill the broker.
    #[arg(long, env = "CHAOS_SPARE_BROKER")]
    spare_broker: bool,
    /// Consumers in the group (1 to 3), dynamic members.
    #[arg(long, env = "CHAOS_CONSUMERS", default_value_t = 3)]
    consumers: usize,
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
            consumers: args.consumers,
            hostile: true,
        },
    )
    .await?;
    println!("{report}");
    anyhow::ensure!(
        report.lost == 0
            && report.duplicated == 0
            && report.unreconciled_files == 0
            && report.aggregate_differences.is_empty(),
        "the invariant does not hold"
    );
    Ok(())
}
