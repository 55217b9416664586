//! The session every consumer connection runs under, set by the consumer itself: a database's or
//! role's own defaults (`ALTER DATABASE ... SET`, a managed service's presets) must not decide
//! whether a migration finishes or how a timestamp reads.

use sqlx::PgConnection;

/// Set on every connection, before anything else runs on it.
const SESSION: &str = "
    -- A migration over a large table takes minutes and a COPY of a batch seconds: a short preset
    -- (managed services ship 30 s) would cancel them over and over.
    SET statement_timeout = 0;
    SET idle_in_transaction_session_timeout = 0;
    -- What the statements are written for: a preset serializable isolation only adds retries.
    SET default_transaction_isolation = 'read committed';
    -- Timestamps in and out in UTC and ISO form, whatever the server's locale.
    SET TimeZone = 'UTC';
    SET DateStyle = 'ISO, MDY';
    SET IntervalStyle = 'postgres';
";

/// Around the migrations only: a schema change waits for the locks it needs rather than giving up
/// after a preset `lock_timeout` (writes keep the operator's, and treat running out as a wait).
const MIGRATING: &str = "SET lock_timeout = 0";
const MIGRATED: &str = "RESET lock_timeout";

pub async fn apply(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SESSION).execute(connection).await.map(drop)
}

pub async fn begin_migrations(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(MIGRATING).execute(connection).await.map(drop)
}

pub async fn end_migrations(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(MIGRATED).execute(connection).await.map(drop)
}
