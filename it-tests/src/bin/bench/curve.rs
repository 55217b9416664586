//! The curve: how the rate and PostgreSQL's work per row change as the table grows. At each size
//! the table is filled (straight through the migrations' table, the aggregates kept true by their
//! triggers), then the same input goes in twice, as a consumer drain of a pre-filled topic and end
//! to end from files, each measured in PostgreSQL: its CPU, block reads and hits, WAL, the wait
//! events its sessions were in, and (when the server loads it) `pg_stat_statements`. The drain
//! runs twice, right after a checkpoint and again before the next; and a table of nothing but
//! the primary key is measured beside it (`bare_key`), the bound random ids put on the curve.

use super::bare_key::{self, KeyRuns};
use super::{postgres_cpu_seconds, rate, series_ranges, sorted_files, Figures, LONG};
use anyhow::Context;
use consumer::sink::Sink;
use it_tests::World;
use sqlx::{Connection, PgConnection};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Disk a stored event takes, its indexes and the aggregates included (280 bytes at 10 million
/// events), with room to spare: a size that
/// would not fit in the free space is skipped and said so, not run into a full disk.
const BYTES_PER_STORED_EVENT: u64 = 350;

/// What one measured run cost PostgreSQL, per row it stored.
#[derive(Debug, Default)]
struct Cost {
    rows_per_s: f64,
    cpu_us: f64,
    blocks_read: f64,
    blocks_hit: f64,
    pkey_read: f64,
    wal_bytes: f64,
    /// Checkpoints the server started during the run.
    checkpoints: i64,
    /// Share of the sampled moments each wait event (or `CPU`: none) held, over active sessions.
    waits: Vec<(String, f64)>,
    /// The statements that took the most time, with their time per stored row.
    statements: Vec<(String, f64)>,
}

/// The counters a run is measured by, read before and after it.
#[derive(Debug, Clone, Copy, Default, sqlx::FromRow)]
struct Counters {
    blocks_read: i64,
    blocks_hit: i64,
    pkey_read: i64,
    wal: i64,
    #[sqlx(skip)]
    checkpoints: i64,
}

impl Counters {
    async fn read(db: &mut PgConnection) -> anyhow::Result<Counters> {
        let mut counters: Counters = sqlx::query_as(
            "SELECT (SELECT coalesce(sum(heap_blks_read + coalesce(idx_blks_read, 0)
                                         + coalesce(toast_blks_read, 0)), 0)::int8
                     FROM pg_statio_user_tables) AS blocks_read,
                    (SELECT coalesce(sum(heap_blks_hit + coalesce(idx_blks_hit, 0)
                                         + coalesce(toast_blks_hit, 0)), 0)::int8
                     FROM pg_statio_user_tables) AS blocks_hit,
                    (SELECT coalesce(sum(idx_blks_read), 0)::int8 FROM pg_statio_user_indexes
                     WHERE indexrelname = 'ecommerce_events_pkey') AS pkey_read,
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8 AS wal",
        )
        .fetch_one(&mut *db)
        .await?;
        counters.checkpoints = checkpoints_started(db).await?;
        Ok(counters)
    }
}

/// Checkpoints the server has started since its statistics were reset (PostgreSQL 17 moved the
/// counters to a view of their own).
async fn checkpoints_started(db: &mut PgConnection) -> anyhow::Result<i64> {
    let (view, columns) = match sqlx::query_scalar::<_, Option<String>>(
        "SELECT to_regclass('pg_stat_checkpointer')::text",
    )
    .fetch_one(&mut *db)
    .await?
    {
        Some(_) => ("pg_stat_checkpointer", "num_timed + num_requested"),
        None => ("pg_stat_bgwriter", "checkpoints_timed + checkpoints_req"),
    };
    let query = format!("SELECT ({columns})::int8 FROM {view}");
    Ok(sqlx::query_scalar(&query).fetch_one(db).await?)
}

/// A run under measurement: the counters and CPU at its start, and a sampler of wait events.
struct Probe {
    database_url: String,
    counters: Counters,
    cpu: f64,
    statements: bool,
    sampling: Arc<AtomicBool>,
    sampler: tokio::task::JoinHandle<BTreeMap<String, u64>>,
}

impl Probe {
    async fn start(world: &World) -> anyhow::Result<Probe> {
        let mut db = PgConnection::connect(&world.database_url).await?;
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut db)
            .await?;
        let statements = sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut db)
            .await
            .is_ok();
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = tokio::spawn(sample_waits(world.database_url.clone(), sampling.clone()));
        Ok(Probe {
            database_url: world.database_url.clone(),
            counters: Counters::read(&mut db).await?,
            cpu: postgres_cpu_seconds(),
            statements,
            sampling,
            sampler,
        })
    }

    /// What the run cost per row it stored (by the ledger), stored at `rows_per_s`.
    async fn finish(self, stage: &World, rows_per_s: f64) -> anyhow::Result<Cost> {
        // Before the consumer's sessions end and take their CPU time with them.
        let cpu = postgres_cpu_seconds() - self.cpu;
        self.sampling.store(false, Ordering::Relaxed);
        let samples = self.sampler.await?;
        let mut db = PgConnection::connect(&self.database_url).await?;
        let after = Counters::read(&mut db).await?;
        let rows = stage
            .count("SELECT coalesce(sum(rows_inserted), 0)::int8 FROM ingest_files")
            .await as usize;
        let per_row = |value: i64| value as f64 / rows.max(1) as f64;
        let total: u64 = samples.values().sum();
        let mut waits: Vec<(String, f64)> = samples
            .into_iter()
            .map(|(event, n)| (event, 100.0 * n as f64 / total.max(1) as f64))
            .collect();
        waits.sort_by(|a, b| b.1.total_cmp(&a.1));
        waits.truncate(5);
        let statements = if self.statements {
            top_statements(&mut db, rows).await?
        } else {
            Vec::new()
        };
        Ok(Cost {
            rows_per_s,
            cpu_us: cpu * 1e6 / rows.max(1) as f64,
            blocks_read: per_row(after.blocks_read - self.counters.blocks_read),
            blocks_hit: per_row(after.blocks_hit - self.counters.blocks_hit),
            pkey_read: per_row(after.pkey_read - self.counters.pkey_read),
            wal_bytes: per_row(after.wal - self.counters.wal),
            checkpoints: after.checkpoints - self.counters.checkpoints,
            waits,
            statements,
        })
    }
}

/// Every 10 ms, what each active session of the database is waiting on (`CPU` when nothing).
async fn sample_waits(url: String, sampling: Arc<AtomicBool>) -> BTreeMap<String, u64> {
    let mut tally = BTreeMap::new();
    let Ok(mut db) = PgConnection::connect(&url).await else {
        return tally;
    };
    while sampling.load(Ordering::Relaxed) {
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity
             WHERE datname = current_database() AND backend_type = 'client backend'
               AND state = 'active' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut db)
        .await
        .unwrap_or_default();
        for event in events {
            *tally.entry(event).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tally
}

/// The five statements of the run that took the most time, in µs per stored row.
async fn top_statements(db: &mut PgConnection, rows: usize) -> anyhow::Result<Vec<(String, f64)>> {
    let top: Vec<(String, f64)> = sqlx::query_as(
        "SELECT regexp_replace(left(query, 70), '\\s+', ' ', 'g'), total_exec_time
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database
                                               WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT 5",
    )
    .fetch_all(db)
    .await?;
    Ok(top
        .into_iter()
        .map(|(query, ms)| (query, ms * 1e3 / rows.max(1) as f64))
        .collect())
}

/// The generated input: its folder, its rows, and its messages (the rows and one end-of-file
/// message per file).
pub struct CurveInput<'a> {
    pub kept: &'a Path,
    pub rows: usize,
    pub messages: usize,
}

/// The curve at each of `sizes` (ascending), on the generated input.
pub async fn curve_stage(
    input: &CurveInput<'_>,
    sizes: &[usize],
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let (kept, rows) = (input.kept, input.rows);
    let mut stage = World::new("bench_curve").await;
    Sink::new(&stage.database_url, "bench", "bench")
        .migrate()
        .await?;
    // Nested statements too: the aggregate triggers' statements run inside each `COPY`, whose
    // time includes theirs.
    for statement in [
        "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET pg_stat_statements.track = ''all''',
                                    current_database()); END $$",
    ] {
        let _ = sqlx::query(statement).execute(&stage.pool).await;
    }
    publish(&stage, kept).await?;
    let prefilled = stage.topic.clone();
    let mut stored = 0;
    let mut at_empty: Option<BTreeMap<&str, f64>> = None;
    let mut key_at_empty: Option<f64> = None;
    for &size in sizes {
        let free = free_disk_bytes(Path::new("/var/lib/postgresql")).unwrap_or(u64::MAX);
        let needed = (size.saturating_sub(stored) + 2 * rows) as u64 * BYTES_PER_STORED_EVENT
            + (size + 2 * rows) as u64 * bare_key::BYTES_PER_KEY;
        if needed > free {
            println!(
                "curve at {size} stored events: skipped, it needs about {} GiB and {} GiB are free",
                needed >> 30,
                free >> 30
            );
            continue;
        }
        let started = Instant::now();
        grow(&stage, stored, size).await?;
        println!(
            "curve: the table grown to {size} events in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        stored = size;
        settle(&stage).await?;
        stage.topic = prefilled.clone();
        let drain = drained(&mut stage, input.messages).await?;
        // The same drain again before the next checkpoint: the index pages the first one wrote
        // whole into the WAL are not written whole again, as in the long stretch of a
        // checkpoint cycle that follows its first rows.
        forget_the_run(&stage, Next::MidCycle).await?;
        let drain_mid_cycle = drained(&mut stage, input.messages).await?;
        forget_the_run(&stage, Next::AfterCheckpoint).await?;
        let e2e = end_to_end(&mut stage, kept, rows).await?;
        forget_the_run(&stage, Next::AfterCheckpoint).await?;
        let disk = disk(&stage).await?;
        let runs = [
            ("drain", &drain),
            ("drain_mid_cycle", &drain_mid_cycle),
            ("e2e", &e2e),
        ];
        let empty = at_empty.get_or_insert_with(|| {
            runs.iter()
                .map(|(run, cost)| (*run, cost.rows_per_s))
                .collect()
        });
        report(size, &runs, empty, &disk, figures);
        let key = bare_key::measure(&stage.pool, size, rows).await?;
        let key_empty = *key_at_empty.get_or_insert(key.after_checkpoint.rows_per_s);
        report_key(size, &key, key_empty, figures);
    }
    stage.pool.close().await;
    Ok(())
}

/// The input published once to the stage's topic, for every drain.
async fn publish(stage: &World, kept: &Path) -> anyhow::Result<()> {
    copy_input(kept, &stage.input_dir())?;
    let (status, _) = stage
        .bridge(&["--once", "--partitions", "6"])
        .wait_with_log(Duration::from_secs(1200));
    anyhow::ensure!(status.success(), "file-bridge --once failed");
    Ok(())
}

/// The files of `from` moved into the watched folder `input`, in name order, each a rename.
pub fn move_input(from: &Path, input: &Path) -> anyhow::Result<()> {
    for file in sorted_files(from)? {
        std::fs::rename(&file, input.join(file.file_name().context("file name")?))?;
    }
    Ok(())
}

/// The generated files copied into `input`, the folder made if need be.
pub fn copy_input(kept: &Path, input: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(input)?;
    let files = sorted_files(kept)?;
    // An empty copy would leave a drain waiting for rows that never come.
    anyhow::ensure!(
        !files.is_empty(),
        "no input files left in {}",
        kept.display()
    );
    for file in files {
        std::fs::copy(&file, input.join(file.file_name().context("file name")?))?;
    }
    Ok(())
}

/// Events `from + 1 ..= to` written straight into the table, a million per statement (counted
/// by the aggregate triggers unless they are disabled): users, products and 30 days of event
/// times like the generator's.
pub async fn grow(stage: &World, from: usize, to: usize) -> anyhow::Result<()> {
    for (first, last) in series_ranges(from, to, 1_000_000) {
        sqlx::query(
            "INSERT INTO ecommerce_events
                 (event_id, user_id, event_type, product_id, price, event_time, is_late,
                  source_file, source_line, landed_at)
             SELECT md5(g::text), 1 + (g * 7919) % 20000,
                    (ARRAY['view', 'view', 'view', 'add_to_cart', 'remove_from_cart', 'purchase'])[1 + g % 6],
                    1000 + (g * 31) % 200, ((g * 13) % 20000) / 100.0 + 0.99,
                    now() - (g % 2592000) * interval '1 second', false, 'stored', g, now()
             FROM generate_series($1::int8, $2::int8) g",
        )
        .bind(first)
        .bind(last)
        .execute(&stage.pool)
        .await?;
    }
    Ok(())
}

/// Each run starts alike: statistics fresh, nothing dirty left from the fill.
async fn settle(stage: &World) -> anyhow::Result<()> {
    for statement in ["VACUUM ANALYZE ecommerce_events", "CHECKPOINT"] {
        sqlx::query(statement).execute(&stage.pool).await?;
    }
    Ok(())
}

/// Where in a checkpoint cycle the next run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Right after a `CHECKPOINT`: the first change to each page is written whole into the WAL.
    AfterCheckpoint,
    /// Where the run before left off, its pages already written whole since the last checkpoint.
    MidCycle,
}

/// Takes out what a run wrote, so the next one writes the same rows onto the same table.
async fn forget_the_run(stage: &World, next: Next) -> anyhow::Result<()> {
    for statement in [
        "DELETE FROM ecommerce_events WHERE source_file <> 'stored'",
        "TRUNCATE ingest_files, ingest_duplicates, ingest_file_names, ecommerce_events_rejected",
    ] {
        sqlx::query(statement).execute(&stage.pool).await?;
    }
    match next {
        Next::AfterCheckpoint => settle(stage).await,
        Next::MidCycle => {
            sqlx::query("VACUUM ANALYZE ecommerce_events")
                .execute(&stage.pool)
                .await?;
            Ok(())
        }
    }
}

/// A new group drains the stage's pre-filled topic onto the table, timed from its first commit.
async fn drained(stage: &mut World, messages: usize) -> anyhow::Result<Cost> {
    stage.group = it_tests::unique("bench_curve");
    let done = format!(
        "SELECT coalesce(sum(next_offset), 0)::int8 FROM ingest_checkpoints
         WHERE consumer_group = '{}'",
        stage.group
    );
    let probe = Probe::start(stage).await?;
    let consumer = stage.consumer(&[]);
    stage.wait_for_at_least(&done, 1, LONG).await;
    let (started, first) = (Instant::now(), stage.count(&done).await);
    stage.wait_for_count(&done, messages as i64, LONG).await;
    let rate = rate(messages - first as usize, started.elapsed());
    let cost = probe.finish(stage, rate).await?;
    drop(consumer);
    Ok(cost)
}

/// The input moved into a watched folder of a new topic; timed until its last row is stored.
async fn end_to_end(stage: &mut World, kept: &Path, rows: usize) -> anyhow::Result<Cost> {
    stage.topic = it_tests::unique("bench-curve-e2e");
    stage.group = it_tests::unique("bench_curve_e2e");
    let staged = stage.dir.path().join("staged");
    copy_input(kept, &staged)?;
    std::fs::create_dir_all(stage.input_dir())?;
    let consumer = stage.consumer(&[]);
    let bridge = stage.bridge(&[]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let probe = Probe::start(stage).await?;
    let started = Instant::now();
    move_input(&staged, &stage.input_dir())?;
    let reconciled = "SELECT coalesce(sum(rows_read), 0)::int8 FROM ingest_files
                      WHERE reconciled_at IS NOT NULL";
    stage.wait_for_count(reconciled, rows as i64, LONG).await;
    let cost = probe.finish(stage, rate(rows, started.elapsed())).await?;
    drop((consumer, bridge));
    Ok(cost)
}

/// Bytes on disk: the database, the events table with its indexes, and its primary key.
struct Disk {
    database: i64,
    events: i64,
    pkey: i64,
}

async fn disk(stage: &World) -> anyhow::Result<Disk> {
    let (database, events, pkey): (i64, i64, i64) = sqlx::query_as(
        "SELECT pg_database_size(current_database()),
                pg_total_relation_size('ecommerce_events'),
                pg_relation_size('ecommerce_events_pkey')",
    )
    .fetch_one(&stage.pool)
    .await?;
    Ok(Disk {
        database,
        events,
        pkey,
    })
}

fn free_disk_bytes(path: &Path) -> Option<u64> {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

fn report(
    size: usize,
    runs: &[(&str, &Cost)],
    at_empty: &BTreeMap<&str, f64>,
    disk: &Disk,
    figures: &mut Figures,
) {
    let gib = |bytes: i64| bytes as f64 / f64::from(1u32 << 30);
    for &(run, cost) in runs {
        let empty = at_empty.get(run).copied().unwrap_or(f64::NAN);
        let prefix = (
            format!("curve_{size}_{run}"),
            format!("curve at {size} stored, {run}"),
        );
        let rate = format!(
            "{:.0}% of the empty table's",
            100.0 * cost.rows_per_s / empty
        );
        let checkpoints = format!("checkpoints started during the run: {}", cost.checkpoints);
        add_run(
            figures,
            (&prefix.0, &prefix.1),
            Figure::new(cost.rows_per_s, rate),
            Figure::new(cost.cpu_us, "target 15"),
            Figure::new(cost.wal_bytes, checkpoints),
        );
        let note = format!(
            "hits {:.1}, primary-key reads {:.2}",
            cost.blocks_hit, cost.pkey_read
        );
        figures.add(
            &format!("{}_blocks_read_per_row", prefix.0),
            &format!("{}: blocks read per row", prefix.1),
            cost.blocks_read,
            "",
            &note,
        );
        let waits: Vec<String> = cost
            .waits
            .iter()
            .map(|(event, share)| format!("{event} {share:.0}%"))
            .collect();
        println!("    waits: {}", waits.join(", "));
        for (statement, us) in &cost.statements {
            println!("    {us:>7.2} µs/row  {statement}");
        }
    }
    figures.add(
        &format!("curve_{size}_disk_gib"),
        &format!("curve at {size} stored: disk"),
        gib(disk.database),
        "GiB",
        &format!(
            "events and indexes {:.2} GiB, primary key {:.2} GiB",
            gib(disk.events),
            gib(disk.pkey)
        ),
    );
}

fn report_key(size: usize, key: &KeyRuns, empty: f64, figures: &mut Figures) {
    for (run, cost) in [
        ("after_checkpoint", &key.after_checkpoint),
        ("mid_cycle", &key.mid_cycle),
    ] {
        let prefix = (
            format!("curve_{size}_bare_key_{run}"),
            format!("curve at {size}, bare key {}", run.replace('_', " ")),
        );
        let rate = format!(
            "{:.0}% of the empty table's after a checkpoint",
            100.0 * cost.rows_per_s / empty
        );
        add_run(
            figures,
            (&prefix.0, &prefix.1),
            Figure::new(cost.rows_per_s, rate),
            Figure::new(cost.cpu_us, ""),
            Figure::new(cost.wal_bytes, ""),
        );
    }
}

/// A figure with its note.
struct Figure {
    value: f64,
    note: String,
}

impl Figure {
    fn new(value: f64, note: impl Into<String>) -> Figure {
        let note = note.into();
        Figure { value, note }
    }
}

/// The figures every measured run reports, under `key_prefix` and `label_prefix`: its rate, and
/// PostgreSQL's CPU and WAL per row.
fn add_run(
    figures: &mut Figures,
    (key_prefix, label_prefix): (&str, &str),
    rate: Figure,
    cpu_us: Figure,
    wal_bytes: Figure,
) {
    for (what, label, figure, unit) in [
        ("rows_per_s", "rate", rate, "rows/s"),
        (
            "postgres_cpu_us_per_row",
            "PostgreSQL CPU per row",
            cpu_us,
            "µs",
        ),
        ("wal_bytes_per_row", "WAL per row", wal_bytes, "B"),
    ] {
        figures.add(
            &format!("{key_prefix}_{what}"),
            &format!("{label_prefix}: {label}"),
            figure.value,
            unit,
            &figure.note,
        );
    }
}
