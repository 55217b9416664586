//! What operators look at, apart from the services that do the work: the live dashboard (served
//! by a consumer, or by `consumer --dashboard-only`) and the `status` command. Both read what the
//! consumer writes to PostgreSQL; the dashboard also shows the figures of the consumer serving it.

pub mod dashboard;

/// A connection to the pipeline's database; the error names the URL with its password hidden.
pub async fn connect(database_url: &str) -> anyhow::Result<sqlx::PgConnection> {
    use anyhow::Context;
    use sqlx::Connection;
    sqlx::PgConnection::connect(database_url)
        .await
        .with_context(|| format!("failed to connect to {}", process::redact_url(database_url)))
}
