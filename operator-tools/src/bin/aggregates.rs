//! `aggregates check`: recomputes the live aggregates from the stored rows and lists any
//! difference (exit status 1 when there is one, 2 when it could not check). `aggregates rebuild`: fills them for events
//! stored before they existed, online, in bounded steps, with progress.

use clap::{Parser, Subcommand};
use operator_tools::aggregates::{self, Coverage};
use std::io::IsTerminal;

/// Proves or rebuilds the live aggregates the dashboard, `status` and the analytics views read.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    database: operator_tools::DatabaseArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Recompute every aggregate from the stored rows and report where they differ. Scans the
    /// whole table, in one snapshot.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Empty the aggregates and count every stored event again, in id order. Ingestion goes on;
    /// writers wait only while a step counts its rows.
    Rebuild {
        /// Events counted per step (one transaction each).
        #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(i32).range(1..))]
        step_rows: i32,
        /// Go on with a rebuild already under way instead of starting again.
        #[arg(long)]
        resume: bool,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match &args.command {
        Command::Check { json } => match check(&args, *json).await {
            Ok(true) => std::process::exit(0),
            Ok(false) => std::process::exit(1),
            // Apart from a difference: the check could not run.
            Err(error) => {
                eprintln!("error: {error:#}");
                std::process::exit(2)
            }
        },
        Command::Rebuild { step_rows, resume } => {
            process::exit(rebuild(&args, *step_rows, *resume).await)
        }
    }
}

/// True when every aggregate equals the scan.
async fn check(args: &Args, json: bool) -> anyhow::Result<bool> {
    let mut db = args.database.connect().await?;
    let (coverage, differences) = aggregates::check(&mut db).await?;
    if json {
        let report = serde_json::json!({ "coverage": coverage, "differences": differences });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(differences.is_empty());
    }
    if let Coverage::Rebuilding { counted_up_to } = &coverage {
        println!("a rebuild is under way: compared the events with ids up to {counted_up_to:?}");
    }
    for difference in &differences {
        println!(
            "{} {}: a scan says {}, the aggregate holds {}",
            difference.aggregate, difference.key, difference.scanned, difference.kept
        );
    }
    if differences.is_empty() {
        println!("the aggregates equal a full scan");
    }
    Ok(differences.is_empty())
}

async fn rebuild(args: &Args, step_rows: i32, resume: bool) -> anyhow::Result<()> {
    let mut db = args.database.connect().await?;
    let resuming = resume && Coverage::read(&mut db).await? != Coverage::Complete;
    if !resuming {
        aggregates::start_rebuild(&mut db).await?;
    }
    // The planner's estimate: counting a billion rows for a progress bar would take minutes.
    let (estimate,): (f32,) = sqlx::query_as(
        "SELECT greatest(reltuples, 0) FROM pg_class WHERE oid = 'ecommerce_events'::regclass",
    )
    .fetch_one(&mut db)
    .await?;
    let bar = std::io::stderr()
        .is_terminal()
        .then(|| indicatif::ProgressBar::new(estimate as u64));
    let (mut counted, started) = (0u64, std::time::Instant::now());
    loop {
        let step = aggregates::rebuild_step(&mut db, step_rows).await?;
        if step == 0 {
            break;
        }
        counted += step;
        match &bar {
            Some(bar) => bar.inc(step),
            None => eprintln!("counted {counted} events (the table holds about {estimate})"),
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "aggregates rebuilt: {counted} events counted in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
