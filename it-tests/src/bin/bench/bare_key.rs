//! The bound the primary key alone puts on the curve. Event ids are random, so every new row
//! lands on a random leaf of the key's index, and the first change to a leaf after a checkpoint
//! writes the whole page into the WAL: at 50 million keys a run of a million rows touches nearly
//! every leaf. This measures a table holding nothing but that key (a `uuid`, as `event_key`),
//! grown to the curve's size, taking the same number of rows in transactions of 5,000 (a 10,000-row
//! batch over the consumer's two writers): once right after a `CHECKPOINT`, as each curve run
//! starts, and once more straight after, its leaves already written whole since that checkpoint.

use super::{postgres_cpu_seconds, series_ranges};
use sqlx::PgPool;
use std::time::Instant;

const ROWS_PER_TRANSACTION: usize = 5_000;

/// Disk a key takes, heap and index, with room to spare (44 and about 30 bytes).
pub const BYTES_PER_KEY: u64 = 100;

/// What inserting the keys of one run cost.
#[derive(Debug, Clone, Copy)]
pub struct KeyRun {
    pub rows_per_s: f64,
    pub cpu_us: f64,
    pub wal_bytes: f64,
}

/// The same rows after a checkpoint and in the middle of a checkpoint cycle.
#[derive(Debug, Clone, Copy)]
pub struct KeyRuns {
    pub after_checkpoint: KeyRun,
    pub mid_cycle: KeyRun,
}

/// A key-only table of `stored` random keys, its index built about as full as random inserts
/// leave one (fillfactor 70, near their ln 2), then two runs of `rows` new keys; dropped after.
pub async fn measure(pool: &PgPool, stored: usize, rows: usize) -> anyhow::Result<KeyRuns> {
    for statement in [
        "DROP TABLE IF EXISTS bench_bare_key",
        "CREATE TABLE bench_bare_key (key uuid NOT NULL)",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    for (first, last) in series_ranges(0, stored, 1_000_000) {
        sqlx::query(
            "INSERT INTO bench_bare_key SELECT md5(g::text)::uuid FROM generate_series($1::int8, $2::int8) g",
        )
        .bind(first)
        .bind(last)
        .execute(pool)
        .await?;
    }
    for statement in [
        "ALTER TABLE bench_bare_key ADD CONSTRAINT bench_bare_key_pkey PRIMARY KEY (key)
             WITH (fillfactor = 70)",
        "VACUUM ANALYZE bench_bare_key",
        "CHECKPOINT",
    ] {
        sqlx::query(statement).execute(pool).await?;
    }
    let after_checkpoint = insert_run(pool, "after", rows).await?;
    let mid_cycle = insert_run(pool, "mid", rows).await?;
    sqlx::query("DROP TABLE bench_bare_key")
        .execute(pool)
        .await?;
    Ok(KeyRuns {
        after_checkpoint,
        mid_cycle,
    })
}

/// `rows` keys new to the table (digests of `run` and a counter), a transaction per 5,000.
async fn insert_run(pool: &PgPool, run: &str, rows: usize) -> anyhow::Result<KeyRun> {
    let wal_lsn = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8";
    let wal_before: i64 = sqlx::query_scalar(wal_lsn).fetch_one(pool).await?;
    let (cpu_before, started) = (postgres_cpu_seconds(), Instant::now());
    for (first, last) in series_ranges(0, rows, ROWS_PER_TRANSACTION) {
        sqlx::query(
            "INSERT INTO bench_bare_key
             SELECT md5($1 || g)::uuid FROM generate_series($2::int8, $3::int8) g",
        )
        .bind(run)
        .bind(first)
        .bind(last)
        .execute(pool)
        .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = postgres_cpu_seconds() - cpu_before;
    let wal_after: i64 = sqlx::query_scalar(wal_lsn).fetch_one(pool).await?;
    let rows = rows.max(1) as f64;
    Ok(KeyRun {
        rows_per_s: rows / seconds,
        cpu_us: cpu * 1e6 / rows,
        wal_bytes: (wal_after - wal_before) as f64 / rows,
    })
}
