//! The chaos run: the whole pipeline on private services, with every component (generator,
//! bridge, up to three consumers, the broker, PostgreSQL) killed with SIGKILL at random, then
//! restarted. Consumers are dynamic group members (no `--instance-id`), as most deployments run
//! them: a killed one is expired by the broker and its partitions reassigned.
//! At the end the invariant is checked and printed: every valid event in once, every invalid row
//! quarantined once, nothing lost, nothing duplicated.
//!
//! The oracle reads the archived files with event-model's rules (the unit tests pin those rules;
//! this run is about faults, not about validation).

use crate::broker::PrivateBroker;
use crate::database::PrivatePostgres;
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

/// A part of the pipeline the run kills: the consumers are numbered 0 to 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Generator,
    Bridge,
    Consumer(usize),
    Broker,
    Postgres,
}

impl Component {
    const ALL: [Component; 7] = [
        Component::Generator,
        Component::Bridge,
        Component::Consumer(0),
        Component::Consumer(1),
        Component::Consumer(2),
        Component::Broker,
        Component::Postgres,
    ];

    /// Its name in the report.
    fn name(self) -> &'static str {
        match self {
            Component::Generator => "generator",
            Component::Bridge => "bridge",
            Component::Consumer(0) => "consumer-a",
            Component::Consumer(1) => "consumer-b",
            Component::Consumer(_) => "consumer-c",
            Component::Broker => "broker",
            Component::Postgres => "postgres",
        }
    }

    /// Whether the run starts it as a process of its own (the services it does not).
    fn is_process(self) -> bool {
        !matches!(self, Component::Broker | Component::Postgres)
    }
}

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
/// is written in place with a pause mid-line rather than renamed in.
pub fn hostile_file(n: u64) -> (String, Vec<u8>, bool) {
    const HEADER: &str = "event_id,user_id,event_type,product_id,price,event_time";
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ok = |tag: &str| format!("h{n}-{tag},1,view,10,1.00,{now}");
    let row = |id: &str, rest: &str| format!("h{n}-{id},{rest}");
    let (name, body): (&str, Vec<u8>) = match n % 7 {
        0 => (
            "nul-header",
            lines(
                &[&HEADER.replace("price", "pri\0ce"), &ok("a"), &ok("b")],
                "\n",
            ),
        ),
        1 => {
            let (nul_id, nul_type) = (row("\0x", "1,view,10,1.00,"), row("t", "1,vi\0ew,10,1.00,"));
            let rows = [HEADER, &(nul_id + &now), &ok("a"), &(nul_type + &now)];
            ("nul-values", lines(&rows, "\n"))
        }
        2 => {
            let (negative, bad_user) = (row("bad", "1,view,10,-1,"), row("bad2", "x,view,10,1,"));
            let rows = [
                HEADER,
                &ok("a"),
                &(negative + &now),
                &ok("b"),
                &(bad_user + &now),
            ];
            ("lone-cr", lines(&rows, "\r"))
        }
        3 => {
            let far = row("far", "1,view,10,1.00,9999-12-31T23:59:59Z");
            ("future", lines(&[HEADER, &far, &ok("a")], "\n"))
        }
        4 => {
            let c = "\u{1}".repeat(60_000);
            let huge = format!("{c},{c},{c},10,1.00,{now}");
            (
                "too-large",
                lines(&[HEADER, &ok("a"), &huge, &ok("b")], "\n"),
            )
        }
        5 => {
            let mut body = format!("{HEADER}\n{}\nh{n}-utf8,1,view,10,", ok("a")).into_bytes();
            body.extend_from_slice(b"\xff\xfe,");
            body.extend_from_slice(format!("{now}\n").as_bytes());
            ("invalid-utf8", body)
        }
        _ => (
            "in-place",
            lines(&[HEADER, &ok("a"), &ok("b"), &ok("c")], "\n"),
        ),
    };
    (
        format!("hostile-{n:04}-{name}.csv"),
        body,
        name == "in-place",
    )
}

/// Each line followed by `end`.
fn lines(lines: &[&str], end: &str) -> Vec<u8> {
    lines
        .iter()
        .flat_map(|line| [*line, end])
        .collect::<String>()
        .into_bytes()
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

/// The run, its stages in order: start, kill and restart until `seconds` passed, calm, count.
pub async fn run_chaos(
    seconds: u64,
    seed: u64,
    options: ChaosOptions,
) -> anyhow::Result<ChaosReport> {
    let mut run = ChaosRun::start(seed, options).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        let pause = run.rng.random_range(500..3_000);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if options.hostile {
            run.drop_hostile_file();
        }
        run.kill_next().await;
    }
    run.calm().await?;
    run.count().await
}

/// A chaos run in progress: its private services, the processes running, and what it did.
struct ChaosRun {
    rng: StdRng,
    broker: PrivateBroker,
    postgres: PrivatePostgres,
    world: World,
    running: Vec<(Component, Proc)>,
    /// What may be killed, and what is left to kill this round.
    victims: Vec<Component>,
    queue: Vec<Component>,
    report: ChaosReport,
}

impl ChaosRun {
    async fn start(seed: u64, options: ChaosOptions) -> anyhow::Result<ChaosRun> {
        let broker = PrivateBroker::start();
        let postgres = PrivatePostgres::start();
        let world = World::on("chaos", &broker.address(), &postgres.server_url()).await;
        std::fs::create_dir_all(world.input_dir())?;
        let consumers = options.consumers.clamp(1, 3);
        let victims: Vec<Component> = Component::ALL
            .into_iter()
            .filter(|component| match component {
                Component::Broker => options.kill_broker,
                Component::Postgres => options.kill_postgres,
                Component::Generator | Component::Bridge => true,
                Component::Consumer(n) => *n < consumers,
            })
            .collect();
        let mut run = ChaosRun {
            rng: StdRng::seed_from_u64(seed),
            broker,
            postgres,
            world,
            running: Vec::new(),
            victims,
            queue: Vec::new(),
            report: ChaosReport {
                seed,
                ..ChaosReport::default()
            },
        };
        let processes = run.victims.iter().copied().filter(|c| c.is_process());
        run.running = processes.map(|c| (c, run.spawn(c))).collect();
        Ok(run)
    }

    fn spawn(&self, component: Component) -> Proc {
        let input = self.world.input_dir().to_string_lossy().into_owned();
        match component {
            Component::Generator => self.world.spawn(
                "generator",
                &[
                    "--output-dir",
                    &input,
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
                ],
            ),
            Component::Bridge => self.world.bridge(&[]),
            _ => self.world.consumer(&["--batch-size", "500"]),
        }
    }

    fn drop_hostile_file(&mut self) {
        let (name, body, in_place) = hostile_file(self.report.hostile_files);
        self.report.hostile_files += 1;
        if in_place {
            write_in_place(self.world.input_dir().join(name), body);
        } else {
            self.world.drop_file(&name, &body);
        }
    }

    /// Kills the next victim with SIGKILL and restarts it after a while. Every component in
    /// turn, in a random order each round: each is killed at least once per round.
    async fn kill_next(&mut self) {
        if self.queue.is_empty() {
            self.queue = self.victims.clone();
            self.queue.shuffle(&mut self.rng);
        }
        let victim = self.queue.pop().expect("refilled above");
        let down = Duration::from_millis(self.rng.random_range(100..2_000));
        self.report.kills += 1;
        *self.report.victims.entry(victim.name()).or_default() += 1;
        match victim {
            Component::Broker => {
                self.broker.kill9();
                tokio::time::sleep(down).await;
                self.broker.restart();
            }
            Component::Postgres => {
                self.postgres.crash();
                tokio::time::sleep(down).await;
                self.postgres.restart();
            }
            process => {
                if let Some((_, running)) = self.running.iter_mut().find(|(c, _)| *c == process) {
                    running.kill9();
                }
                tokio::time::sleep(down).await;
                self.running.retain(|(c, _)| *c != process);
                let restarted = self.spawn(process);
                self.running.push((process, restarted));
            }
        }
    }

    /// Stops writing, then lets the survivors (restarted where they died) drain the folder.
    async fn calm(&mut self) -> anyhow::Result<()> {
        self.running.retain(|(c, _)| *c != Component::Generator);
        // An in-place writer may still be in its pause.
        tokio::time::sleep(Duration::from_secs(4)).await;
        for index in 0..self.running.len() {
            if !self.running[index].1.is_running() {
                self.running[index].1 = self.spawn(self.running[index].0);
            }
        }
        let files_deadline = Instant::now() + Duration::from_secs(300);
        while self.world.files_waiting() > 0 {
            anyhow::ensure!(
                Instant::now() < files_deadline,
                "the bridge did not drain the folder"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// The oracle's counts from the archive against what the database holds once it settled.
    async fn count(mut self) -> anyhow::Result<ChaosReport> {
        let (valid, invalid, rows_in) = oracle(&self.world.archive_dir())?;
        let report = &mut self.report;
        report.rows_in = rows_in;
        report.valid_distinct = valid.len() as u64;
        report.invalid_rows = invalid;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.world.database_url)
            .await?;
        settle(&pool, report).await?;
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
        Ok(self.report)
    }
}

/// Waits (up to 5 minutes) until the database holds at least what the oracle expects and every
/// file reconciled; the counts it last saw are in `report`.
async fn settle(pool: &sqlx::PgPool, report: &mut ChaosReport) -> anyhow::Result<()> {
    let settle_deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out: i64 = sqlx::query_scalar("SELECT count(*) FROM ecommerce_events")
            .fetch_one(pool)
            .await?;
        let rejected: i64 = sqlx::query_scalar("SELECT count(*) FROM ecommerce_events_rejected")
            .fetch_one(pool)
            .await?;
        let (files, unreconciled): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE reconciled_at IS NULL) FROM ingest_files",
        )
        .fetch_one(pool)
        .await?;
        report.rows_out = out as u64;
        report.rejected_out = rejected as u64;
        (report.ledger_files, report.unreconciled_files) = (files as u64, unreconciled as u64);
        let caught_up = report.rows_out >= report.valid_distinct
            && report.rejected_out >= report.invalid_rows
            && report.unreconciled_files == 0;
        if caught_up || Instant::now() > settle_deadline {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
