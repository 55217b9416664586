//! `retention apply`: moves the retention horizon and drops the events dated before it, online,
//! in bounded steps; with `--every`, again and again as time passes. `retention show`: where it
//! stands. Consumers quarantine an event dated before the horizon as `expired`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args as ClapArgs, Parser, Subcommand};
use operator_tools::retention::{self, Horizon, Moves, Retention};
use process::{Attempt, Backoff, Stopped};
use sqlx::PgConnection;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Drops whole time ranges of events, keeping the aggregates, the ledger and `status` true.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    database: operator_tools::DatabaseArgs,
    #[command(flatten)]
    log: process::LogArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Set the horizon and drop every event dated before it. Ingestion goes on: from the moment
    /// the horizon is set, an event dated before it is quarantined `expired`.
    Apply(Apply),
    /// Print the horizon, when it was set, and how many events before it remain.
    Show,
}

#[derive(ClapArgs)]
struct Apply {
    /// Keep the events of this last stretch of time (`30d`, `12h`), by the database's clock.
    #[arg(long, value_parser = process::duration::parse_duration, conflicts_with = "before", required_unless_present = "before")]
    older_than: Option<Duration>,
    /// Drop the events dated before this instant (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long)]
    before: Option<DateTime<Utc>>,
    /// Move the horizon back (keep events dated after it that arrive from now on). Events
    /// dropped before stay dropped.
    #[arg(long)]
    move_back: bool,
    /// Events dropped per step (one transaction each).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(i32).range(1..))]
    step_rows: i32,
    /// Apply `--older-than` again at this interval until stopped (SIGINT or SIGTERM).
    #[arg(long, value_parser = process::duration::parse_duration, requires = "older_than")]
    every: Option<Duration>,
}

impl Apply {
    fn moves(&self) -> Moves {
        if self.move_back {
            Moves::BackToo
        } else {
            Moves::ForwardOnly
        }
    }

    fn horizon(&self) -> Horizon {
        match (self.before, self.older_than) {
            (Some(at), _) => Horizon::At(at),
            (None, Some(age)) => Horizon::OlderThan(age),
            (None, None) => unreachable!("clap requires --older-than or --before"),
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    process::init_logging(args.log.log_format);
    let result = match &args.command {
        Command::Apply(apply) => run(&args, apply).await,
        Command::Show => show(&args).await,
    };
    // Said once, on stderr: not also as a log line, as `process::exit` does for the services.
    if let Err(error) = result {
        eprintln!("error: {}", process::causes(&error));
        std::process::exit(1);
    }
}

async fn run(args: &Args, apply: &Apply) -> anyhow::Result<()> {
    let shutdown = process::shutdown_token();
    let Some(every) = apply.every else {
        let mut db = args.database.connect().await?;
        return apply_once(&mut db, apply, &shutdown).await;
    };
    // Kept up: a round that fails (the database restarting, say) is said and tried again at the
    // next one, on a new connection.
    loop {
        let round = async {
            let mut db = args.database.connect().await?;
            apply_once(&mut db, apply, &shutdown).await
        };
        if let Err(error) = round.await {
            let error = process::causes(&error);
            tracing::warn!(%error, next_in = ?every, "retention round failed");
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Moves the horizon, then drops what lies before it, step by step until none is left or a
/// shutdown is asked for (a later run goes on where this one stopped).
async fn apply_once(
    db: &mut PgConnection,
    apply: &Apply,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let horizon = apply.horizon().resolve(db).await?;
    let old = retention::move_horizon(db, horizon, apply.moves())
        .await
        .context("failed to set the retention horizon")?;
    match old {
        Some(old) if old != horizon => println!("retention horizon moved from {old} to {horizon}"),
        Some(_) => println!("retention horizon stays at {horizon}"),
        None => println!("retention horizon set to {horizon}"),
    }
    let (mut dropped, started) = (0u64, Instant::now());
    while !shutdown.is_cancelled() {
        let Some(step) = drop_step(db, apply.step_rows, shutdown).await? else {
            break;
        };
        if step == 0 {
            println!(
                "dropped {dropped} events dated before {horizon} in {:.1} s; none is left",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        dropped += step;
        tracing::info!(dropped, "dropping events before the retention horizon");
    }
    println!("stopped after dropping {dropped} events; `retention apply` again goes on");
    Ok(())
}

/// One step, tried again when it lost to a consumer writing the same users' sets; None when a
/// shutdown came first.
async fn drop_step(
    db: &mut PgConnection,
    rows: i32,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<u64>> {
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let mut losses = 0;
    let step = process::retry(backoff, shutdown, async || {
        match retention::drop_step(db, rows).await {
            Ok(dropped) => Ok(dropped),
            Err(error) if retention::lost_to_a_writer(&error) && losses < MAX_LOSSES => {
                losses += 1;
                tracing::warn!(%error, "a drop step lost to a writer; trying it again");
                Err(Attempt::Retry(error))
            }
            Err(error) => Err(Attempt::Fail(error)),
        }
    })
    .await;
    match step {
        Ok(dropped) => Ok(Some(dropped)),
        Err(Stopped::Shutdown) => Ok(None),
        Err(Stopped::Failed(error)) => {
            Err(anyhow::Error::new(error).context("failed to drop events before the horizon"))
        }
    }
}

/// Losses to writers in a row before a step gives up: each is a rolled-back step, and many in
/// a row mean something else is wrong.
const MAX_LOSSES: u32 = 20;

async fn show(args: &Args) -> anyhow::Result<()> {
    let mut db = args.database.connect().await?;
    let Some(state) = Retention::read(&mut db).await? else {
        println!("no retention: every event is kept");
        return Ok(());
    };
    let remaining = retention::remaining(&mut db).await?;
    println!(
        "horizon {} (set {}): events dated before it are dropped and arrivals quarantined `expired`",
        state.horizon, state.set_at
    );
    match state.completed_at {
        Some(done) => println!("dropped: none before the horizon is left (since {done})"),
        None => println!("dropping: {remaining} events before the horizon remain"),
    }
    Ok(())
}
