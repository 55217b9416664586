//! The chaos run: the whole pipeline on private services, with every component (generator,
//! bridge, two consumers, the broker, PostgreSQL) killed with SIGKILL at random, then restarted.
//! At the end the invariant is checked and printed: every valid event in once, every invalid row
//! quarantined once, nothing lost, nothing duplicated.
//!
//! The oracle reads the archived files with event-model's rules (the unit tests pin those rules;
//! this run is about faults, not about validation).

use crate::services::{PrivateBroker, PrivatePostgres};
use crate::{Proc, World};
use event_model::{validate, RowReader};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub kills: u64,
    pub rows_in: u64,
    pub valid_distinct: u64,
    pub invalid_rows: u64,
    pub rows_out: u64,
    pub rejected_out: u64,
    pub lost: u64,
    pub duplicated: u64,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: kills {}, events in {} ({} distinct valid, {} invalid), rows out {}, rejected {}, lost {}, duplicated {}",
            self.seed, self.kills, self.rows_in, self.valid_distinct, self.invalid_rows,
            self.rows_out, self.rejected_out, self.lost, self.duplicated
        )
    }
}

const COMPONENTS: [&str; 6] = [
    "generator",
    "bridge",
    "consumer-a",
    "consumer-b",
    "broker",
    "postgres",
];

/// What a chaos run may do.
#[derive(Debug, Clone, Copy)]
pub struct ChaosOptions {
    /// Kill the broker too. Tansu 0.6 restores group members that died with it and never expires
    /// them, which can leave a group without assignments (see README).
    pub kill_broker: bool,
    /// Kill PostgreSQL too.
    pub kill_postgres: bool,
    /// One or two consumers in the group. With Tansu 0.6, two static members killed in turn can
    /// leave the group waiting for a member that is gone.
    pub consumers: usize,
}

pub async fn run_chaos(
    seconds: u64,
    seed: u64,
    options: ChaosOptions,
) -> anyhow::Result<ChaosReport> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut broker = PrivateBroker::start();
    let postgres = PrivatePostgres::start();
    let world = World::on("chaos", &broker.address(), &postgres.server_url()).await;
    std::fs::create_dir_all(world.input_dir())?;
    let input = world.input_dir().to_string_lossy().into_owned();
    let generator_args = [
        "--output-dir",
        input.as_str(),
        "--events-per-file",
        "200",
        "--interval",
        "100ms",
        "--duplicate-rate",
        "0.05",
        "--late-rate",
        "0.02",
        "--malformed-rate",
        "0.02",
    ];
    let consumer_args = |id: &'static str| ["--batch-size", "500", "--instance-id", id];
    let start = |name: &str| -> Proc {
        match name {
            "generator" => world.spawn("generator", &generator_args),
            "bridge" => world.bridge(&[]),
            "consumer-a" => world.consumer(&consumer_args("a")),
            _ => world.consumer(&consumer_args("b")),
        }
    };
    let mut running: Vec<(&str, Proc)> = COMPONENTS[..2 + options.consumers.clamp(1, 2)]
        .iter()
        .map(|n| (*n, start(n)))
        .collect();
    let victims: Vec<&str> = COMPONENTS
        .into_iter()
        .filter(|name| match *name {
            "broker" => options.kill_broker,
            "postgres" => options.kill_postgres,
            "consumer-b" => options.consumers >= 2,
            _ => true,
        })
        .collect();
    let mut report = ChaosReport {
        seed,
        ..ChaosReport::default()
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
        let victim = victims[rng.random_range(0..victims.len())];
        let down = Duration::from_millis(rng.random_range(100..2_000));
        report.kills += 1;
        match victim {
            "broker" => {
                broker.kill9();
                tokio::time::sleep(down).await;
                broker.restart();
            }
            "postgres" => {
                postgres.crash();
                tokio::time::sleep(down).await;
                postgres.restart();
            }
            name => {
                if let Some((_, process)) = running.iter_mut().find(|(n, _)| *n == name) {
                    process.kill9();
                }
                tokio::time::sleep(down).await;
                running.retain(|(n, _)| *n != name);
                running.push((name, start(name)));
            }
        }
    }
    // Calm: stop writing, then let the survivors (restarted where they died) drain everything.
    running.retain(|(n, _)| *n != "generator");
    for (name, process) in running.iter_mut() {
        if !process.is_running() {
            *process = start(name);
        }
    }
    let files_deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_dir(world.input_dir())?.any(|e| {
        e.map(|e| e.file_name().to_string_lossy().ends_with(".csv"))
            .unwrap_or(false)
    }) {
        anyhow::ensure!(
            Instant::now() < files_deadline,
            "the bridge did not drain the folder"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (valid, invalid, rows_in) = oracle(&world.archive_dir())?;
    report.rows_in = rows_in;
    report.valid_distinct = valid.len() as u64;
    report.invalid_rows = invalid;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&world.database_url)
        .await?;
    let settle_deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out: i64 = sqlx::query_scalar("SELECT count(*) FROM ecommerce_events")
            .fetch_one(&pool)
            .await?;
        let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM ecommerce_events_rejected")
            .fetch_one(&pool)
            .await?;
        report.rows_out = out as u64;
        report.rejected_out = rejected as u64;
        let caught_up = report.rows_out >= report.valid_distinct && report.rejected_out >= invalid;
        if caught_up || Instant::now() > settle_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored: BTreeSet<String> =
        sqlx::query_scalar::<_, String>("SELECT event_id FROM ecommerce_events")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .collect();
    let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM ecommerce_events_rejected")
        .fetch_one(&pool)
        .await?;
    report.rows_out = stored.len() as u64;
    report.rejected_out = rejected as u64;
    report.lost =
        valid.difference(&stored).count() as u64 + invalid.saturating_sub(report.rejected_out);
    report.duplicated =
        stored.difference(&valid).count() as u64 + report.rejected_out.saturating_sub(invalid);
    drop(running);
    Ok(report)
}

/// Distinct valid event_ids, invalid row count and all rows of the archived files.
fn oracle(archive: &std::path::Path) -> anyhow::Result<(BTreeSet<String>, u64, u64)> {
    let (mut valid, mut invalid, mut rows) = (BTreeSet::new(), 0, 0);
    for entry in std::fs::read_dir(archive)? {
        let path = entry?.path();
        let mut reader = RowReader::new(std::fs::File::open(&path)?, "f", "id", 0);
        while let Some(keyed) = reader.next_row()? {
            rows += 1;
            match validate(&keyed.row) {
                Ok(event) => {
                    valid.insert(event.event_id);
                }
                Err(_) => invalid += 1,
            }
        }
    }
    Ok((valid, invalid, rows))
}
