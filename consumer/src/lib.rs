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
pub mod kafka;
mod lag_watch;
pub mod log_check;
pub mod metrics;
pub mod partition;
pub mod sink;
pub mod storable;

pub use config::{redact_url, Config, LatePolicy};

use anyhow::Context;
use batch::{classify, Incoming, MessageBuffer, Rules, WriteBatch};
use chrono::TimeDelta;
use kafka::{RebalanceWatch, CONSUMER_DEFAULTS};
use log_check::{LogCheck, LogEventKind, LogProbe};
use metrics::ConsumerMetrics;
use partition::PartitionState;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sink::{Sink, SinkError, StoredCheckpoint};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Between attempts to reach the database (migrations, a batch).
const RETRY: process::Backoff =
    process::Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(mut consumer) = GroupConsumer::start(&config, shutdown).await? {
        consumer.run().await;
        consumer.leave().await;
    }
    Ok(())
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

/// The running consumer: its group membership, the writer of its batches, and the offsets it
/// committed to PostgreSQL. The same shape as the bridge: `start`, `run`, `leave`.
struct GroupConsumer<'a> {
    consumer: StreamConsumer<RebalanceWatch>,
    writer: Writer<'a>,
    /// Per partition still held, the offset PostgreSQL has: what is committed to Kafka on leaving.
    committed: BTreeMap<i32, i64>,
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

impl<'a> GroupConsumer<'a> {
    /// Health, the database and its migrations, then the group: set-up in the order it must
    /// happen. `None` when the mode ends here (the dashboard, the migrations) or shutdown came.
    async fn start(
        config: &'a Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<GroupConsumer<'a>>> {
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
        if !config.skip_migrations && !prepare_database(config, &mut sink, &shutdown).await? {
            return Ok(None);
        }
        if config.mode() == Mode::MigrateOnly {
            tracing::info!("migrations applied");
            return Ok(None);
        }
        let Some((consumer, kafka)) = join_group(config, &metrics, &shutdown).await? else {
            return Ok(None);
        };
        let probe = LogProbe::new(&kafka, &config.kafka.topic)
            .context("failed to create the Kafka log probe")?;
        let shared = Shared {
            config,
            metrics,
            probe: Arc::new(probe),
            rules: rules_of(config),
            shutdown,
            partitions_held: 1,
            rewinds: Default::default(),
        };
        let writer = Writer::new(shared, sink);
        Ok(Some(GroupConsumer {
            consumer,
            writer,
            committed: BTreeMap::new(),
        }))
    }

    /// Receives, writes and commits batches until shutdown.
    async fn run(&mut self) {
        let (consumer, writer) = (&self.consumer, &mut self.writer);
        let committed = &mut self.committed;
        let (config, shutdown) = (writer.shared.config, writer.shared.shutdown.clone());
        let mut messages = next_batch(consumer, config, &shutdown).await;
        while !shutdown.is_cancelled() {
            if consumer.context().take_moved() {
                // Partitions may have changed hands: trust only Postgres for where each one
                // stands, and start reading each exactly there.
                writer.states.clear();
                if !writer.position_assigned(consumer, &mut messages).await {
                    break;
                }
            }
            if messages.is_empty() {
                messages = next_batch(consumer, config, &shutdown).await;
                continue;
            }
            // Messages arrived: the broker is demonstrably there (statistics come every 5 s).
            writer
                .shared
                .metrics
                .readiness
                .set(telemetry::Check::Broker, Ok(()));
            // This batch is written while the next one is received: the broker and the
            // database work at the same time. Batches are still classified and committed
            // strictly in order.
            let in_hand = std::mem::take(&mut messages);
            // A batch that was not written stops the receiving too: after a move back nothing
            // more may be read before every partition is positioned again.
            let receiving = shutdown.child_token();
            let write = async {
                let written = writer.write_until_done(in_hand).await;
                if written.is_err() {
                    receiving.cancel();
                }
                let offsets = written?;
                process::failpoint::hit(process::failpoint::Failpoint::ConsumerAfterDbCommit);
                commit_offsets(consumer, &config.kafka.topic, &offsets, CommitMode::Async);
                Ok(offsets)
            };
            let (written, next) = tokio::join!(write, next_batch(consumer, config, &receiving));
            messages = next;
            match written {
                Ok(offsets) => {
                    committed.extend(&offsets);
                    forget_revoked(consumer, committed);
                }
                Err(Interrupted::Stopped) => break,
                // PostgreSQL is behind what was read: every partition starts again exactly at
                // its checkpoint, as after a rebalance.
                Err(Interrupted::MovedBack) => {
                    writer.states.clear();
                    if !writer.position_assigned(consumer, &mut messages).await {
                        break;
                    }
                }
            }
        }
    }

    /// Leaves cleanly: makes Kafka's committed offsets match Postgres for the partitions still
    /// held, then leaves the group. Each step is bounded, since a broker that is down would hold
    /// us forever; Postgres has the checkpoint regardless.
    async fn leave(mut self) {
        forget_revoked(&self.consumer, &mut self.committed);
        let consumer = Arc::new(self.consumer);
        let committer = consumer.clone();
        let topic = self.writer.shared.config.kafka.topic.clone();
        let committed = self.committed;
        let commit = tokio::task::spawn_blocking(move || {
            commit_offsets(&committer, &topic, &committed, CommitMode::Sync);
        });
        if tokio::time::timeout(LEAVE_TIMEOUT, commit).await.is_err() {
            tracing::warn!("the broker did not confirm the final offset commit; exiting anyway");
        }
        consumer.unsubscribe();
        // The revoke that unsubscribing triggers is served through the consumer's queue: keep
        // polling until it has run, so closing does not wait on it.
        let _ = consumer.context().take_moved();
        let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
        while !consumer.context().take_moved() && tokio::time::Instant::now() < deadline {
            let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        }
        let close = tokio::task::spawn_blocking(move || drop(consumer));
        if tokio::time::timeout(LEAVE_TIMEOUT, close).await.is_err() {
            tracing::warn!("the broker did not answer while leaving the group; exiting anyway");
        }
        tracing::info!("consumer stopped");
    }
}

/// Revoked partitions are not committed on leaving: another member may own them now.
fn forget_revoked(consumer: &StreamConsumer<RebalanceWatch>, committed: &mut BTreeMap<i32, i64>) {
    for partition in consumer.context().take_revoked() {
        committed.remove(&partition);
    }
}

/// Applies the migrations, waiting for a database that is not up yet (or full); a broken
/// migration is fatal. False when shutdown came first.
async fn prepare_database(
    config: &Config,
    sink: &mut Sink,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut backoff = RETRY;
    loop {
        match sink.migrate().await {
            Ok(()) => return Ok(true),
            Err(SinkError::Database(error)) => {
                tracing::error!(%error, "database not reachable; will retry");
                sink.reset();
                if !backoff.wait(shutdown).await {
                    return Ok(false);
                }
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!(
                        "failed to prepare the database at {}",
                        redact_url(&config.database_url)
                    )
                })
            }
        }
    }
}

/// The group's consumer, subscribed; and the client settings it was made with.
/// Waits for a broker that does not answer yet, as for a database that does not (the two start
/// in any order under Compose, systemd or Kubernetes), with readiness saying why; exits only on
/// what a retry cannot mend (credentials, authorisation, configuration). `None` when shutdown
/// came first.
async fn join_group(
    config: &Config,
    metrics: &ConsumerMetrics,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(StreamConsumer<RebalanceWatch>, ClientConfig)>> {
    let mut kafka = config
        .kafka
        .client_config(&config.component_name(), CONSUMER_DEFAULTS)?;
    kafka.set("group.id", &config.group);
    if let Some(instance) = &config.instance_id {
        kafka.set("group.instance.id", instance);
    }
    let mut backoff = RETRY;
    loop {
        match config.kafka.ensure_topic(&kafka).await {
            Ok(()) => break,
            Err(error) if error.is_transient() => {
                let error = process::causes(&anyhow::Error::new(error));
                tracing::error!(%error, "Kafka not reachable; will retry");
                metrics.readiness.set(
                    telemetry::Check::Broker,
                    Err(format!("Kafka not reachable: {error}")),
                );
                if !backoff.wait(shutdown).await {
                    return Ok(None);
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    // The topic's metadata came back: a working broker connection, whatever the statistics
    // (every few seconds) will say later.
    metrics.readiness.set(telemetry::Check::Broker, Ok(()));
    let consumer: StreamConsumer<RebalanceWatch> = kafka
        .create_with_context(RebalanceWatch::new(metrics.clone()))
        .context("failed to create the Kafka consumer")?;
    consumer
        .subscribe(&[&config.kafka.topic])
        .context("failed to subscribe")?;
    Ok(Some((consumer, kafka)))
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

/// Collects up to `batch_size` messages, returning early `batch_timeout` after the first one.
async fn next_batch(
    consumer: &StreamConsumer<RebalanceWatch>,
    config: &Config,
    shutdown: &CancellationToken,
) -> Vec<Incoming> {
    let mut messages = Vec::with_capacity(config.batch_size.min(MAX_PREALLOCATED_BATCH));
    let mut buffer = MessageBuffer::default();
    // One timer for the whole batch, moved once when the first message arrives: a timer made
    // per message cost more than the rest of receiving it.
    let wait = tokio::time::sleep(IDLE_WAKEUP);
    tokio::pin!(wait);
    let mut started = false;
    while messages.len() < config.batch_size {
        // recv() takes a message off the queue only in the poll that returns it, so dropping
        // it on a timeout loses nothing.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(message) => {
                    messages.push(Incoming {
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(|key| buffer.keep(key)),
                        payload: message.payload().map(|payload| buffer.keep(payload)),
                        fixes: kafka::fixes_of(&message),
                    });
                    if !started {
                        started = true;
                        wait.as_mut().reset(tokio::time::Instant::now() + config.batch_timeout);
                    }
                }
                Err(error) => tracing::warn!(%error, "kafka error"),
            },
            // Partitions moved: the caller positions them before anything is read.
            _ = consumer.context().moved(), if !started => break,
            _ = &mut wait => {
                if started {
                    break;
                }
                wait.as_mut().reset(tokio::time::Instant::now() + IDLE_WAKEUP);
            }
        }
    }
    messages
}

/// How often an idle receive loop wakes (to notice nothing in particular: shutdown has its own
/// wakeup); and the most messages a batch reserves room for before any arrive.
const IDLE_WAKEUP: Duration = Duration::from_secs(1);
const MAX_PREALLOCATED_BATCH: usize = 16_384;

/// What every writer of a batch shares: the settings, the rules, the metrics, the broker probe.
struct Shared<'a> {
    config: &'a Config,
    metrics: ConsumerMetrics,
    probe: Arc<LogProbe>,
    rules: Rules,
    shutdown: CancellationToken,
    /// How many partitions the last assignment gave this consumer: they share the dedup budget.
    partitions_held: usize,
    /// Per partition, the checkpoint the last move back read again from.
    rewinds: std::sync::Mutex<HashMap<i32, i64>>,
}

/// Why a batch was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Interrupted {
    /// PostgreSQL's checkpoint is behind what was read: position every partition again.
    MovedBack,
    /// Shutdown came first; what was not committed is replayed.
    Stopped,
}

/// Whether the messages in hand go on from PostgreSQL's checkpoints.
enum Continuity {
    Continues,
    MovedBack,
}

/// Turns batches of messages into committed transactions; owns the connections and what it
/// knows of each partition.
struct Writer<'a> {
    shared: Shared<'a>,
    /// One connection per writer (`--writers`). PostgreSQL's work on a batch runs on one core
    /// per connection, so a batch's partitions are shared among them and written at once.
    sinks: Vec<Sink>,
    states: HashMap<i32, PartitionState>,
}

/// One writer's part of a batch: its connection and the states of the partitions it writes. A
/// partition is in one part only, so the parts' transactions never fence each other.
struct Lane<'w, 'a> {
    shared: &'w Shared<'a>,
    sink: &'w mut Sink,
    states: HashMap<i32, PartitionState>,
}

impl<'a> Writer<'a> {
    fn new(shared: Shared<'a>, sink: Sink) -> Writer<'a> {
        let writers = usize::from(shared.config.writers.max(1));
        let others: Vec<Sink> = (1..writers).map(|_| sink.another()).collect();
        let sinks = std::iter::once(sink).chain(others).collect();
        Writer {
            shared,
            sinks,
            states: HashMap::new(),
        }
    }

    /// The first writer's connection, for what is not part of a batch (checkpoints, findings).
    fn lane(&mut self, states: HashMap<i32, PartitionState>) -> Lane<'_, 'a> {
        Lane {
            shared: &self.shared,
            sink: &mut self.sinks[0],
            states,
        }
    }

    /// Writes the messages, each writer its share of the partitions, until all of it is in
    /// Postgres; the offsets to commit to Kafka. Interrupted when shutdown came first (what was
    /// not committed is replayed) or PostgreSQL was found behind what was read.
    async fn write_until_done(
        &mut self,
        messages: Vec<Incoming>,
    ) -> Result<BTreeMap<i32, i64>, Interrupted> {
        let shares = shares_by_partition(messages, self.sinks.len());
        let (shared, states) = (&self.shared, &mut self.states);
        let writes = self
            .sinks
            .iter_mut()
            .zip(shares)
            .filter(|(_, share)| !share.is_empty());
        let writes = writes.map(|(sink, share)| {
            let partitions = partitions_of(&share);
            let mut lane = Lane {
                shared,
                sink,
                states: partitions
                    .iter()
                    .filter_map(|p| states.remove_entry(p))
                    .collect(),
            };
            async move {
                let written = lane.write_until_done(&share, &partitions).await;
                (lane.states, written)
            }
        });
        let mut offsets = BTreeMap::new();
        let mut interrupted = None;
        for (lane_states, written) in futures_util::future::join_all(writes).await {
            states.extend(lane_states);
            match written {
                Ok(batch) => offsets.extend(batch.commit_offsets),
                // Stopping outranks moving back: a stopping consumer repositions nothing.
                Err(why) => interrupted = interrupted.max(Some(why)),
            }
        }
        match interrupted {
            Some(why) => Err(why),
            None => Ok(offsets),
        }
    }

    /// Starts every assigned partition exactly at PostgreSQL's checkpoint (checked against the
    /// log), or at the log's start where PostgreSQL has none, whatever Kafka's committed offset
    /// says: a database restored from an older backup is behind Kafka, and trusting Kafka would
    /// skip what the backup lost. A rewind is recorded, logged and counted. Messages in hand for
    /// a partition that moves are dropped (they are read again from its new position). False when
    /// shutdown came first.
    async fn position_assigned(
        &mut self,
        consumer: &StreamConsumer<RebalanceWatch>,
        in_hand: &mut Vec<Incoming>,
    ) -> bool {
        let topic = self.shared.config.kafka.topic.clone();
        let Ok(assignment) = consumer.assignment() else {
            return true;
        };
        let partitions: Vec<i32> = assignment
            .elements_for_topic(&topic)
            .iter()
            .map(|element| element.partition())
            .collect();
        if partitions.is_empty() {
            return true;
        }
        self.shared.partitions_held = partitions.len();
        if !self.load_all_states(&partitions).await {
            return false;
        }
        let committed = committed_offsets(consumer, &assignment);
        let mut moved = Vec::new();
        for partition in partitions {
            let checkpoint = self.states.get(&partition).and_then(|s| s.next_offset);
            let start = match checkpoint {
                Some(offset) => offset,
                None => match self.shared.log_start(partition).await {
                    Some(offset) => offset,
                    None => continue,
                },
            };
            let first_in_hand = in_hand
                .iter()
                .find(|m| m.partition == partition)
                .map(|m| m.offset);
            if let Some(&ahead) = committed.get(&partition).filter(|&&c| c > start) {
                self.record_rewind(partition, ahead, start).await;
            }
            if first_in_hand == Some(start) {
                continue;
            }
            if !self.shared.seek(consumer, partition, start).await {
                return false;
            }
            moved.push(partition);
        }
        in_hand.retain(|m| !moved.contains(&m.partition));
        true
    }

    /// The checkpoints of every assigned partition, retried until readable. False when shutdown
    /// came first.
    async fn load_all_states(&mut self, partitions: &[i32]) -> bool {
        let states = std::mem::take(&mut self.states);
        let mut lane = self.lane(states);
        let mut backoff = RETRY;
        let mut loaded = true;
        while let Err(error) = lane.load_states(partitions).await {
            tracing::error!(%error, "checkpoints not readable; will retry before reading");
            lane.sink.reset();
            if !backoff.wait(&lane.shared.shutdown).await {
                loaded = false;
                break;
            }
        }
        self.states = lane.states;
        loaded
    }

    async fn record_rewind(&mut self, partition: i32, committed: i64, checkpoint: i64) {
        tracing::error!(partition, committed, checkpoint, "Kafka's committed offset is ahead of PostgreSQL's checkpoint (a restored database?); reading again from the checkpoint");
        self.shared
            .metrics
            .log_event(partition, LogEventKind::Rewound);
        if let Err(error) = self.sinks[0]
            .record_rewind(partition, committed, checkpoint)
            .await
        {
            tracing::warn!(partition, %error, "rewind not recorded");
        }
    }
}

impl Shared<'_> {
    /// Without the seek, reading would go on from Kafka's position: never trust it. False when
    /// shutdown came first.
    async fn seek(
        &self,
        consumer: &StreamConsumer<RebalanceWatch>,
        partition: i32,
        start: i64,
    ) -> bool {
        let topic = &self.config.kafka.topic;
        let mut backoff = SEEK_RETRY;
        while let Err(error) = consumer.seek(topic, partition, Offset::Offset(start), SEEK_TIMEOUT)
        {
            tracing::warn!(partition, start, %error, "could not move to the checkpoint yet; will retry");
            if !backoff.wait(&self.shutdown).await {
                return false;
            }
        }
        true
    }

    fn rewound(&self, partition: i32, checkpoint: i64) {
        self.rewinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(partition, checkpoint);
    }

    fn rewound_to(&self, partition: i32) -> Option<i64> {
        self.rewinds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&partition)
            .copied()
    }

    /// Where the partition's log starts now, asked of the broker.
    async fn log_start(&self, partition: i32) -> Option<i64> {
        let probe = self.probe.clone();
        match tokio::task::spawn_blocking(move || probe.log_start(partition)).await {
            Ok(Ok(offset)) => Some(offset),
            Ok(Err(error)) => {
                tracing::warn!(partition, %error, "could not ask where the log starts; reading from the group's position");
                None
            }
            Err(_) => None,
        }
    }

    /// Each held partition's share of the one dedup budget: memory stays bounded however many
    /// partitions this consumer takes over (the states are made again on every rebalance).
    fn dedup_capacity_per_partition(&self) -> usize {
        (self.config.dedup_capacity / self.partitions_held.max(1)).max(1)
    }

    /// A watermark more than a year beyond --max-future was left by a version without that rule (one event dated
    /// 9999 would keep every later event late for good): forgotten; the next events build it.
    fn sane_watermark(
        &self,
        partition: i32,
        max_event_time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        // Far beyond any clock skew: a consumer whose clock is hours behind must not forget a
        // watermark its peers keep (classification depends on the log alone).
        let horizon = clock::now()
            .checked_add_signed(self.rules.max_future)?
            .checked_add_signed(TimeDelta::days(365))?;
        match max_event_time {
            Some(max) if max > horizon => {
                tracing::warn!(partition, max_event_time = %max, "checkpointed event time is beyond --max-future; watermark reset");
                None
            }
            other => other,
        }
    }
}

impl Lane<'_, '_> {
    /// Writes the share, retrying through database outages and fencing, until it is in Postgres.
    /// Returns `None` when shutdown came first (nothing committed, nothing lost: it is replayed).
    /// A share that takes longer than `--stuck-after` (failing, or blocked on a lock) marks its
    /// partitions stuck until it is written: nothing waits silently.
    async fn write_until_done(
        &mut self,
        messages: &[Incoming],
        partitions: &[i32],
    ) -> Result<WriteBatch, Interrupted> {
        let (metrics, stuck_after) = (self.shared.metrics.clone(), self.shared.config.stuck_after);
        let write = self.write_with_retry(messages, partitions);
        tokio::pin!(write);
        tokio::select! {
            written = &mut write => return written,
            _ = tokio::time::sleep(stuck_after) => {}
        }
        tracing::error!(
            ?partitions,
            stuck_after_s = stuck_after.as_secs(),
            "partitions cannot advance: their batch is not written yet"
        );
        metrics.stuck(partitions, true);
        let written = write.await;
        metrics.stuck(partitions, false);
        if written.is_ok() {
            tracing::info!(?partitions, "partitions moving again");
        }
        written
    }

    async fn write_with_retry(
        &mut self,
        messages: &[Incoming],
        partitions: &[i32],
    ) -> Result<WriteBatch, Interrupted> {
        let started = Instant::now();
        let shared = self.shared;
        let mut backoff = RETRY;
        loop {
            let fresh: Vec<i32> = partitions
                .iter()
                .copied()
                .filter(|p| !self.states.contains_key(p))
                .collect();
            let loaded = match self.load_states(partitions).await {
                Ok(()) => self.check_continuity(messages, partitions, &fresh).await,
                Err(error) => Err(error),
            };
            let result = match loaded {
                Ok(Continuity::MovedBack) => return Err(Interrupted::MovedBack),
                Ok(Continuity::Continues) => {
                    let now = clock::now();
                    let topic = &shared.config.kafka.topic;
                    let batch = classify(messages, &mut self.states, &shared.rules, topic, now);
                    self.sink
                        .write(&batch)
                        .await
                        .map(|outcome| (batch, outcome))
                }
                Err(error) => Err(error),
            };
            match result {
                Ok((batch, outcome)) => {
                    let lateness = shared.rules.lateness;
                    shared
                        .metrics
                        .batch_committed(&batch, &outcome, started.elapsed(), lateness);
                    return Ok(batch);
                }
                Err(SinkError::Fenced { partition }) => {
                    tracing::warn!(
                        partition,
                        "partition was written by another consumer; reloading its checkpoint"
                    );
                }
                Err(error) => {
                    tracing::error!(%error, fault = ?error.fault(), "batch not written; will retry");
                    self.sink.reset();
                    if !backoff.wait(&shared.shutdown).await {
                        return Err(Interrupted::Stopped);
                    }
                }
            }
            // The failed attempt moved the in-memory states as if it had committed: start over
            // from Postgres.
            for partition in partitions {
                self.states.remove(partition);
            }
        }
    }

    /// Whether the messages in hand go on where PostgreSQL's checkpoint says each partition
    /// stands. They start further on when the database moved back under this consumer (a
    /// failover to a replica that missed commits, a restore: nothing reports it but the
    /// checkpoint) or the log lost what lay between (retention, recorded as a gap by the log
    /// check); earlier, under a partition this consumer holds, when the log started again (a
    /// topic made again: the log check records the restart). A partition that disagrees with
    /// what this consumer holds is read again from PostgreSQL and its log checked first; still
    /// behind what was read, with the messages still in the log, it is a move back: recorded,
    /// and every partition is positioned again.
    async fn check_continuity(
        &mut self,
        messages: &[Incoming],
        partitions: &[i32],
        fresh: &[i32],
    ) -> Result<Continuity, SinkError> {
        for &partition in partitions {
            let Some(first) = messages
                .iter()
                .find(|m| m.partition == partition)
                .map(|m| m.offset)
            else {
                continue;
            };
            let expected = self.states.get(&partition).and_then(|s| s.next_offset);
            match expected {
                Some(next) if first == next => continue,
                // Offsets already stored: a replay, right after the checkpoint was read (a
                // restart, a rebalance, a retry). Where this consumer holds the partition, it is
                // the log starting again under it (a topic made again, reset to its start).
                Some(next) if first < next && fresh.contains(&partition) => continue,
                _ => {}
            }
            if expected.is_some() {
                // Read it again: the database may have moved since it was loaded.
                self.states.remove(&partition);
                self.load_states(&[partition]).await?;
            }
            let checkpoint = self.states.get(&partition).and_then(|s| s.next_offset);
            let log_start = self.shared.log_start(partition).await;
            let resume = match (checkpoint, log_start) {
                (Some(next), Some(start)) => next.max(start),
                (Some(next), None) => next,
                (None, Some(start)) => start,
                // Never written and the broker cannot say where the log starts: as before.
                (None, None) => continue,
            };
            if first <= resume || self.shared.rewound_to(partition) == Some(resume) {
                // The log has nothing between (a gap the log check recorded), or this is where
                // the last move back already read from (offsets the log never had).
                continue;
            }
            tracing::error!(
                partition,
                read_from = first,
                checkpoint = resume,
                "PostgreSQL's checkpoint is behind what this consumer read (the database moved back: a failover or a restore); reading again from the checkpoint"
            );
            self.shared
                .metrics
                .log_event(partition, LogEventKind::Rewound);
            self.sink
                .record_moved_back(partition, first, resume)
                .await?;
            self.shared.rewound(partition, resume);
            return Ok(Continuity::MovedBack);
        }
        Ok(Continuity::Continues)
    }

    /// Loads the checkpoint of each partition not known yet, and checks that the partition's log
    /// is still the one it describes.
    async fn load_states(&mut self, partitions: &[i32]) -> Result<(), SinkError> {
        let missing: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.states.contains_key(p))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let stored = self.sink.load_checkpoints(&missing).await?;
        for partition in missing {
            let (next_offset, max_event_time) = match stored.get(&partition) {
                Some(checkpoint) => (
                    Some(self.check_log(partition, checkpoint).await?),
                    self.shared
                        .sane_watermark(partition, checkpoint.max_event_time),
                ),
                None => (None, None),
            };
            let capacity = self.shared.dedup_capacity_per_partition();
            self.states.insert(
                partition,
                PartitionState::new(next_offset, max_event_time, capacity),
            );
        }
        Ok(())
    }

    /// Where reading the partition may resume: the checkpoint, or the start of a log that
    /// restarted (whose checkpoint is moved back, and the restart recorded).
    async fn check_log(
        &mut self,
        partition: i32,
        checkpoint: &StoredCheckpoint,
    ) -> Result<i64, SinkError> {
        let probe = self.shared.probe.clone();
        let metrics = &self.shared.metrics;
        let (next, last) = (checkpoint.next_offset, checkpoint.last_message.clone());
        let checked =
            tokio::task::spawn_blocking(move || probe.check(partition, next, last.as_deref()))
                .await;
        match checked {
            Ok(Ok(LogCheck::Continues)) => Ok(next),
            Ok(Ok(LogCheck::Gap { from, to })) => {
                tracing::error!(
                    partition,
                    from,
                    to,
                    "messages were removed from the log before they were read"
                );
                metrics.log_event(partition, LogEventKind::Gap);
                self.sink.record_gap(partition, from, to).await?;
                Ok(next)
            }
            Ok(Ok(LogCheck::Restarted { start, reason })) => {
                tracing::error!(partition, checkpoint = next, start, %reason, "the partition's log restarted; reading it again from its start");
                self.sink
                    .restart_checkpoint(partition, next, start, &reason)
                    .await?;
                metrics.log_event(partition, LogEventKind::Restarted);
                Ok(start)
            }
            // The broker cannot be asked now: keep the checkpoint; the next assignment asks again.
            Ok(Err(error)) => {
                tracing::warn!(partition, %error, "could not check the partition's log; trusting the checkpoint");
                Ok(next)
            }
            Err(error) => {
                tracing::warn!(partition, %error, "log check did not finish; trusting the checkpoint");
                Ok(next)
            }
        }
    }
}

/// The messages split among `writers` by partition, balancing rows: each partition whole, its
/// order kept. The partitions with the most rows are placed first, each with the least loaded.
fn shares_by_partition(messages: Vec<Incoming>, writers: usize) -> Vec<Vec<Incoming>> {
    let mut rows: HashMap<i32, usize> = HashMap::new();
    for message in &messages {
        *rows.entry(message.partition).or_default() += 1;
    }
    if writers <= 1 || rows.len() <= 1 {
        return vec![messages];
    }
    let mut by_rows: Vec<(i32, usize)> = rows.into_iter().collect();
    by_rows.sort_unstable_by_key(|&(partition, rows)| (std::cmp::Reverse(rows), partition));
    let mut load = vec![0usize; writers];
    let mut writer_of: HashMap<i32, usize> = HashMap::new();
    for (partition, rows) in by_rows {
        let least = (0..writers).min_by_key(|&w| load[w]).unwrap_or(0);
        load[least] += rows;
        writer_of.insert(partition, least);
    }
    let mut shares: Vec<Vec<Incoming>> = load.iter().map(|&n| Vec::with_capacity(n)).collect();
    for message in messages {
        shares[writer_of[&message.partition]].push(message);
    }
    shares
}

fn partitions_of(messages: &[Incoming]) -> Vec<i32> {
    let mut partitions: Vec<i32> = messages.iter().map(|m| m.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
const SEEK_RETRY: process::Backoff =
    process::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Kafka's committed offset of each assigned partition that has one (for the record only).
fn committed_offsets(
    consumer: &StreamConsumer<RebalanceWatch>,
    assignment: &TopicPartitionList,
) -> BTreeMap<i32, i64> {
    match consumer.committed_offsets(assignment.clone(), Duration::from_secs(5)) {
        Ok(list) => list
            .elements()
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some((element.partition(), offset)),
                _ => None,
            })
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "could not read Kafka's committed offsets");
            BTreeMap::new()
        }
    }
}

fn commit_offsets(
    consumer: &StreamConsumer<RebalanceWatch>,
    topic: &str,
    offsets: &BTreeMap<i32, i64>,
    mode: CommitMode,
) {
    if offsets.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in offsets {
        // Cannot fail for a fresh list and a valid offset.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    // A partition no longer assigned refuses the commit; another consumer redoes it from the
    // Postgres checkpoint, so this is not an error.
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::debug!(%error, "offset commit refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(partitions: &[(i32, usize)]) -> Vec<Incoming> {
        let mut messages = Vec::new();
        // Interleaved, as a batch arrives: one of each partition in turn.
        let longest = partitions.iter().map(|&(_, n)| n).max().unwrap_or(0);
        for offset in 0..longest {
            for &(partition, rows) in partitions {
                if offset < rows {
                    messages.push(Incoming {
                        partition,
                        offset: offset as i64,
                        key: None,
                        payload: None,
                        fixes: None,
                    });
                }
            }
        }
        messages
    }

    fn layout(shares: &[Vec<Incoming>]) -> Vec<Vec<(i32, usize)>> {
        shares
            .iter()
            .map(|share| {
                let mut rows: BTreeMap<i32, usize> = BTreeMap::new();
                for message in share {
                    *rows.entry(message.partition).or_default() += 1;
                }
                rows.into_iter().collect()
            })
            .collect()
    }

    #[test]
    fn each_partition_goes_whole_and_in_order_to_the_least_loaded_writer() {
        let shares = shares_by_partition(messages(&[(0, 50), (1, 30), (2, 25), (3, 10)]), 2);
        assert_eq!(
            layout(&shares),
            vec![vec![(0, 50), (3, 10)], vec![(1, 30), (2, 25)]]
        );
        for share in &shares {
            for partition in partitions_of(share) {
                let offsets: Vec<i64> = share
                    .iter()
                    .filter(|m| m.partition == partition)
                    .map(|m| m.offset)
                    .collect();
                assert!(offsets.windows(2).all(|pair| pair[0] + 1 == pair[1]));
            }
        }
    }

    #[test]
    fn one_writer_or_one_partition_takes_the_batch_as_it_is() {
        assert_eq!(
            layout(&shares_by_partition(messages(&[(0, 5), (1, 5)]), 1)),
            vec![vec![(0, 5), (1, 5)]]
        );
        assert_eq!(
            layout(&shares_by_partition(messages(&[(4, 7)]), 3)),
            vec![vec![(4, 7)]]
        );
        let shares = shares_by_partition(messages(&[(0, 3), (1, 3)]), 4);
        assert_eq!(shares.iter().filter(|share| !share.is_empty()).count(), 2);
    }
}
