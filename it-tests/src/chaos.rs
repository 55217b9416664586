//! The chaos run: the whole pipeline on private services, with every component (generator,
//! bridge, up to three consumers, the broker, PostgreSQL) killed with SIGKILL at random, then
//! restarted. Consumers are dynamic group members (no `--instance-id`), as most deployments run
//! them: a killed one is expired by the broker and its partitions reassigned.
//! At the end the invariant is checked and printed: every valid event in once, every invalid row
//! quarantined once, nothing lost, nothing duplicated.
//!
//! The oracle reads the archived files with event-model's rules (the unit tests pin those rules;
//! this run is about faults, not about validation).

use crate::services::{PrivateBroker, PrivatePostgres};
use crate::{Proc, World};
use event_model::{validate, RowReader};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct ChaosReport {
    pub seed: u64,
    pub kills: u64,
    /// Kills per component.
    pub victims: std::collections::BTreeMap<&'static str, u64>,
    pub hostile_files: u64,
    pub rows_in: u64,
    pub valid_distinct: u64,
    pub invalid_rows: u64,
    pub rows_out: u64,
    pub rejected_out: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Files of the ledger whose rows are not all accounted for (inserted, duplicate, rejected).
    pub unreconciled_files: u64,
    pub ledger_files: u64,
    /// Live aggregates that differ from a full scan after the kills (`aggregates check`).
    pub aggregate_differences: Vec<operator_tools::aggregates::Difference>,
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {}: kills {} {:?}, hostile files {}, events in {} ({} distinct valid, {} invalid), rows out {}, rejected {}, lost {}, duplicated {}, ledger files {} ({} unreconciled), aggregates differing from a scan {:?}",
            self.seed, self.kills, self.victims, self.hostile_files, self.rows_in, self.valid_distinct, self.invalid_rows,
            self.rows_out, self.rejected_out, self.lost, self.duplicated, self.ledger_files,
            self.unreconciled_files, self.aggregate_differences
        )
    }
}

const COMPONENTS: [&str; 7] = [
    "generator",
    "bridge",
    "consumer-a",
    "consumer-b",
    "consumer-c",
    "broker",
    "postgres",
];

/// The consumers among [`COMPONENTS`], in order.
const CONSUMERS: [&str; 3] = ["consumer-a", "consumer-b", "consumer-c"];

/// What a chaos run may do.
#[derive(Debug, Clone, Copy)]
pub struct ChaosOptions {
    /// Kill the broker too.
    pub kill_broker: bool,
    /// Kill PostgreSQL too.
    pub kill_postgres: bool,
    /// One to three consumers in the group.
    pub consumers: usize,
    /// Mix hostile files into the generated input (see [`hostile_file`]).
    pub hostile: bool,
}

/// The n-th hostile file: each kind the contract must survive, in turn. Every one has rows with
/// ids of its own, so the oracle's counts stay exact. Returns its name, its bytes, and whether it
/// is written in place with a pause mid-line rather than renamed in. A table of fixtures, hence
/// its length.
pub fn hostile_file(n: u64) -> (String, Vec<u8>, bool) {
    const HEADER: &str = "event_id,user_id,event_type,product_id,price,event_time";
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ok = |tag: &str| format!("h{n}-{tag},1,view,10,1.00,{now}");
    let (name, body, in_place): (&str, Vec<u8>, bool) = match n % 7 {
        0 => (
            "nul-header",
            format!(
                "event_id,user_id,event_type,product_id,pri\0ce,event_time\n{}\n{}\n",
                ok("a"),
                ok("b")
            )
            .into_bytes(),
            false,
        ),
        1 => (
            "nul-values",
            format!(
                "{HEADER}\nh{n}-\0x,1,view,10,1.00,{now}\n{}\nh{n}-t,1,vi\0ew,10,1.00,{now}\n",
                ok("a")
            )
            .into_bytes(),
            false,
        ),
        2 => (
            "lone-cr",
            format!(
                "{HEADER}\r{}\rh{n}-bad,1,view,10,-1,{now}\r{}\rh{n}-bad2,x,view,10,1,{now}\r",
                ok("a"),
                ok("b")
            )
            .into_bytes(),
            false,
        ),
        3 => (
            "future",
            format!(
                "{HEADER}\nh{n}-far,1,view,10,1.00,9999-12-31T23:59:59Z\n{}\n",
                ok("a")
            )
            .into_bytes(),
            false,
        ),
        4 => {
            let controls = "\u{1}".repeat(60_000);
            (
                "too-large",
                format!(
                    "{HEADER}\n{}\n{controls},{controls},{controls},10,1.00,{now}\n{}\n",
                    ok("a"),
                    ok("b")
                )
                .into_bytes(),
                false,
            )
        }
        5 => {
            let mut body = format!("{HEADER}\n{}\nh{n}-utf8,1,view,10,", ok("a")).into_bytes();
            body.extend_from_slice(b"\xff\xfe,");
            body.extend_from_slice(format!("{now}\n").as_bytes());
            ("invalid-utf8", body, false)
        }
        _ => (
            "in-place",
            format!("{HEADER}\n{}\n{}\n{}\n", ok("a"), ok("b"), ok("c")).into_bytes(),
            true,
        ),
    };
    (format!("hostile-{n:04}-{name}.csv"), body, in_place)
}

/// Writes a file in place, pausing 3 s in the middle of its last line.
fn write_in_place(path: std::path::PathBuf, body: Vec<u8>) {
    std::thread::spawn(move || {
        use std::io::Write;
        let cut = body.len() - 8;
        let Ok(mut file) = std::fs::File::create(&path) else {
            return;
        };
        let _ = file.write_all(&body[..cut]).and_then(|()| file.flush());
        std::thread::sleep(Duration::from_secs(3));
        let _ = file.write_all(&body[cut..]);
    });
}

/// The run, its stages in order (start, kill and restart, calm, oracle, count): a script, read
/// top to bottom.
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
    let consumers = &CONSUMERS[..options.consumers.clamp(1, CONSUMERS.len())];
    let start = |name: &str| -> Proc {
        match name {
            "generator" => world.spawn("generator", &generator_args),
            "bridge" => world.bridge(&[]),
            _ => world.consumer(&["--batch-size", "500"]),
        }
    };
    let mut running: Vec<(&str, Proc)> = COMPONENTS
        .iter()
        .filter(|name| matches!(**name, "generator" | "bridge") || consumers.contains(name))
        .map(|n| (*n, start(n)))
        .collect();
    let victims: Vec<&str> = COMPONENTS
        .into_iter()
        .filter(|name| match *name {
            "broker" => options.kill_broker,
            "postgres" => options.kill_postgres,
            "generator" | "bridge" => true,
            consumer => consumers.contains(&consumer),
        })
        .collect();
    let mut report = ChaosReport {
        seed,
        ..ChaosReport::default()
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut hostile = 0;
    let mut queue: Vec<&str> = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
        if options.hostile {
            let (name, body, in_place) = hostile_file(hostile);
            hostile += 1;
            report.hostile_files = hostile;
            if in_place {
                write_in_place(world.input_dir().join(name), body);
            } else {
                world.drop_file(&name, &body);
            }
        }
        // Every component in turn, in a random order each round: each is killed at least once
        // per round.
        if queue.is_empty() {
            queue = victims.clone();
            queue.shuffle(&mut rng);
        }
        let victim = queue.pop().expect("refilled above");
        let down = Duration::from_millis(rng.random_range(100..2_000));
        report.kills += 1;
        *report.victims.entry(victim).or_default() += 1;
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
    // An in-place writer may still be in its pause.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for (name, process) in running.iter_mut() {
        if !process.is_running() {
            *process = start(name);
        }
    }
    let files_deadline = Instant::now() + Duration::from_secs(300);
    while world.files_waiting() > 0 {
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
        let (files, unreconciled): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE reconciled_at IS NULL) FROM ingest_files",
        )
        .fetch_one(&pool)
        .await?;
        report.rows_out = out as u64;
        report.rejected_out = rejected as u64;
        (report.ledger_files, report.unreconciled_files) = (files as u64, unreconciled as u64);
        let caught_up = report.rows_out >= report.valid_distinct
            && report.rejected_out >= invalid
            && report.unreconciled_files == 0;
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
    let mut db = pool.acquire().await?;
    report.aggregate_differences = operator_tools::aggregates::check(&mut db).await?.1;
    drop(running);
    Ok(report)
}

/// Distinct valid event_ids, invalid row count and all rows of the archived files. An event
/// dated more than a day ahead counts as invalid: the consumer quarantines it as `future`.
fn oracle(archive: &std::path::Path) -> anyhow::Result<(BTreeSet<String>, u64, u64)> {
    let (mut valid, mut invalid, mut rows) = (BTreeSet::new(), 0, 0);
    for entry in std::fs::read_dir(archive)? {
        let path = entry?.path();
        let mut reader = RowReader::new(std::fs::File::open(&path)?, "f", "id", 0);
        let horizon = chrono::Utc::now() + chrono::TimeDelta::days(1);
        while let Some(keyed) = reader.next_row()? {
            rows += 1;
            match validate(&keyed.row) {
                Ok(event) if event.event_time <= horizon => {
                    valid.insert(event.event_id);
                }
                _ => invalid += 1,
            }
        }
    }
    Ok((valid, invalid, rows))
}
