//! The consumer: topic in, Postgres out, exactly once.
//!
//! Guarantee: a row is in Postgres once, whatever is killed when. A batch's partitions are shared
//! among the writers; each share is one transaction holding its events, its quarantined rows and
//! each of its partitions' checkpoint (next offset and highest event_time). Kafka offsets are
//! committed only after every share's transaction; where Kafka's
//! committed offset trails the checkpoint (a crash between the two commits), the replayed messages
//! are recognised by the checkpoint and skipped. A consumer that lost a partition to another
//! finds the checkpoint moved and writes nothing (fencing).

pub mod batch;
mod clock;
mod config;
mod group;
pub mod kafka;
mod lag_watch;
pub mod log_check;
pub mod metrics;
pub mod partition;
pub mod sink;
pub mod storable;
mod writer;

pub use config::{redact_url, Config, LatePolicy};

use anyhow::Context;
use batch::Rules;
use chrono::TimeDelta;
use group::GroupConsumer;
use kafka::{GroupEvents, RebalanceWatch, CONSUMER_DEFAULTS};
use log_check::LogProbe;
use metrics::ConsumerMetrics;
use process::{Attempt, Stopped};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sink::{Sink, SinkError};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use writer::{ConsumerSettings, Shared, Writers};

/// Between attempts to reach the database (migrations, a batch).
pub(crate) const RETRY: process::Backoff =
    process::Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
pub(crate) const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    match start(&config, shutdown).await {
        Ok(Some(mut consumer)) => {
            consumer.run().await;
            consumer.leave().await;
            Ok(())
        }
        Ok(None) | Err(Stopped::Shutdown) => Ok(()),
        Err(Stopped::Failed(error)) => Err(error),
    }
}

/// What a consumer process does, by its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Join the group and write its partitions into PostgreSQL (the default).
    Consume,
    /// Serve the dashboard, which reads PostgreSQL only: no broker, no group.
    DashboardOnly,
    /// Apply the migrations and exit.
    MigrateOnly,
}

fn log_start(config: &Config) {
    tracing::info!(
        database = %redact_url(&config.database_url),
        brokers = %config.kafka.brokers,
        topic = %config.kafka.topic,
        group = %config.group,
        late_policy = ?config.late_policy,
        mode = ?config.mode(),
        "consumer starting"
    );
}

fn rules_of(config: &Config) -> Rules {
    Rules {
        lateness: TimeDelta::from_std(config.allowed_lateness).unwrap_or(TimeDelta::MAX),
        late_policy: config.late_policy,
        max_future: TimeDelta::from_std(config.max_future).unwrap_or(TimeDelta::MAX),
    }
}

/// Health, the database and its migrations, then the group: set-up in the order it must
/// happen. `None` when the mode ends here (the dashboard, the migrations).
async fn start(
    config: &Config,
    shutdown: CancellationToken,
) -> Result<Option<GroupConsumer>, Stopped<anyhow::Error>> {
    log_start(config);
    let application_name = format!(
        "{}@{}",
        config.component_name(),
        pipeline_kafka::host_name()
    );
    let mut sink = Sink::new(&config.database_url, &config.group, &config.kafka.topic)
        .named(&application_name);
    let metrics = ConsumerMetrics::new();
    // Health and readiness answer from the start, while the database or the broker is awaited.
    if config.mode() != Mode::MigrateOnly {
        serve_http(config, &metrics, &shutdown).await?;
        watch_database(config, &application_name, &metrics, &shutdown)?;
    }
    if config.mode() == Mode::DashboardOnly {
        metrics.readiness.set(telemetry::Check::Broker, Ok(()));
        watch_lag(config, &metrics, &shutdown)?;
        shutdown.cancelled().await;
        return Ok(None);
    }
    if !config.skip_migrations {
        prepare_database(config, &mut sink, &shutdown).await?;
    }
    if config.mode() == Mode::MigrateOnly {
        tracing::info!("migrations applied");
        return Ok(None);
    }
    let Joined {
        consumer,
        events,
        kafka,
    } = join_group(config, &metrics, &shutdown).await?;
    let probe = LogProbe::new(&kafka, &config.kafka.topic)
        .context("failed to create the Kafka log probe")?;
    let shared = Shared {
        settings: ConsumerSettings::of(config),
        metrics,
        probe: Arc::new(probe),
        rules: rules_of(config),
        shutdown,
        partitions_held: 1,
        rewinds: Default::default(),
        restarts: Default::default(),
    };
    let writers = Writers::new(shared, sink);
    Ok(Some(GroupConsumer::new(consumer, events, writers)))
}

/// Applies the migrations, waiting for a database that is not up yet (or full); a broken
/// migration is fatal.
async fn prepare_database(
    config: &Config,
    sink: &mut Sink,
    shutdown: &CancellationToken,
) -> Result<(), Stopped<anyhow::Error>> {
    let migrated = process::retry(RETRY, shutdown, async || match sink.migrate().await {
        Ok(()) => Ok(()),
        Err(SinkError::Database(error)) => {
            tracing::error!(%error, "database not reachable; will retry");
            sink.reset();
            Err(Attempt::Retry(SinkError::Database(error)))
        }
        Err(error) => Err(Attempt::Fail(error)),
    })
    .await;
    migrated.map_err(|stopped| match stopped {
        Stopped::Shutdown => Stopped::Shutdown,
        Stopped::Failed(error) => Stopped::Failed(anyhow::Error::new(error).context(format!(
            "failed to prepare the database at {}",
            redact_url(&config.database_url)
        ))),
    })
}

/// The group's consumer, subscribed, with its rebalances and the client settings it was made with.
struct Joined {
    consumer: StreamConsumer<RebalanceWatch>,
    events: GroupEvents,
    kafka: ClientConfig,
}

/// Joins the group. Waits for a broker that does not answer yet, as for a database that does
/// not (the two start in any order under Compose, systemd or Kubernetes), with readiness saying
/// why; exits only on what a retry cannot mend (credentials, authorisation, configuration).
async fn join_group(
    config: &Config,
    metrics: &ConsumerMetrics,
    shutdown: &CancellationToken,
) -> Result<Joined, Stopped<anyhow::Error>> {
    let mut kafka = config
        .kafka
        .client_config(&config.component_name(), CONSUMER_DEFAULTS)
        .map_err(anyhow::Error::new)?;
    kafka.set("group.id", &config.group);
    if let Some(instance) = &config.instance_id {
        kafka.set("group.instance.id", instance);
    }
    let ensured = process::retry(RETRY, shutdown, async || {
        match config.kafka.ensure_topic(&kafka).await {
            Ok(()) => Ok(()),
            Err(error) if error.is_transient() => {
                let error = anyhow::Error::new(error);
                let shown = process::causes(&error);
                tracing::error!(error = %shown, "Kafka not reachable; will retry");
                metrics.readiness.set(
                    telemetry::Check::Broker,
                    Err(format!("Kafka not reachable: {shown}")),
                );
                Err(Attempt::Retry(error))
            }
            Err(error) => Err(Attempt::Fail(anyhow::Error::new(error))),
        }
    })
    .await;
    ensured?;
    // The topic's metadata came back: a working broker connection, whatever the statistics
    // (every few seconds) will say later.
    metrics.readiness.set(telemetry::Check::Broker, Ok(()));
    let (watch, events) = RebalanceWatch::new(metrics.clone());
    let consumer: StreamConsumer<RebalanceWatch> = kafka
        .create_with_context(watch)
        .context("failed to create the Kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.topic])
        .context("failed to subscribe")?;
    Ok(Joined {
        consumer,
        events,
        kafka,
    })
}

/// Starts the metrics endpoint and the dashboard, where asked for.
async fn serve_http(
    config: &Config,
    metrics: &ConsumerMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    telemetry::serve_metrics(
        config.metrics_addr,
        metrics.registry.clone(),
        metrics.readiness.clone(),
        shutdown.clone(),
    )
    .await?;
    if let Some(addr) = config.dashboard_addr {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_lazy(&config.database_url)
            .context("invalid DATABASE_URL")?;
        let handler = operator_tools::dashboard::handler(Arc::new(metrics.clone()), pool);
        let bound = telemetry::serve(addr, handler, shutdown.clone())
            .await
            .with_context(|| format!("failed to listen on {addr} for the dashboard"))?;
        tracing::info!(url = %format!("http://{bound}/"), "serving the dashboard");
    }
    Ok(())
}

/// Measures the whole group's lag for a dashboard that consumes nothing.
fn watch_lag(
    config: &Config,
    metrics: &ConsumerMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut kafka = config
        .kafka
        .client_config(&config.component_name(), CONSUMER_DEFAULTS)?;
    kafka.set("group.id", &config.group);
    let probe = LogProbe::new(&kafka, &config.kafka.topic)
        .context("failed to create the Kafka log probe")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(DATABASE_CHECK_TIMEOUT)
        .connect_lazy(&config.database_url)
        .context("invalid DATABASE_URL")?;
    let watch = lag_watch::LagWatch::new(
        probe,
        pool,
        &config.group,
        &config.kafka.topic,
        metrics.clone(),
    );
    tokio::spawn(watch.run(shutdown.clone()));
    Ok(())
}

/// Asks the database for `SELECT 1` every few seconds, for readiness: a consumer retrying a dead
/// database is alive but not ready, and an idle one must notice too.
fn watch_database(
    config: &Config,
    application_name: &str,
    metrics: &ConsumerMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let options: sqlx::postgres::PgConnectOptions = config
        .database_url
        .parse()
        .context("invalid DATABASE_URL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(DATABASE_CHECK_TIMEOUT)
        .connect_lazy_with(options.application_name(&format!("{application_name}/health")));
    let (readiness, shutdown) = (metrics.readiness.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let answer = tokio::time::timeout(
                DATABASE_CHECK_TIMEOUT,
                sqlx::query("SELECT 1").execute(&pool),
            )
            .await;
            let state = match answer {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("database not reachable: {error}")),
                Err(_) => Err("database did not answer in time".to_owned()),
            };
            readiness.set(telemetry::Check::Database, state);
            tokio::select! {
                _ = tokio::time::sleep(DATABASE_CHECK_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok(())
}

const DATABASE_CHECK_EVERY: Duration = Duration::from_secs(2);
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
