//! What operators look at and do, apart from the services that do the work: the live dashboard
//! (served by a consumer, or by `consumer --dashboard-only`), the `status`, `explain` and
//! `quarantine` commands, and `retention`. They read what the consumer writes to PostgreSQL; the
//! dashboard also shows the figures of the consumer serving it.

pub mod aggregates;
pub mod dashboard;
pub mod retention;

/// The pipeline's database, as every operator command is told it.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    pub database_url: String,
}

impl DatabaseArgs {
    /// A connection; the error names the URL with its password hidden.
    pub async fn connect(&self) -> anyhow::Result<sqlx::PgConnection> {
        use anyhow::Context;
        use sqlx::Connection;
        let url = &self.database_url;
        sqlx::PgConnection::connect(url)
            .await
            .with_context(|| format!("failed to connect to {}", process::redact_url(url)))
    }
}
