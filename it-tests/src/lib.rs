//! Test harness: real services from the environment, a fresh database, topic and group per test,
//! and the three binaries run as real processes (so they can be killed with SIGKILL).
//!
//! - `KAFKA_BROKERS` (default `127.0.0.1:9092`): a Kafka-protocol broker (Apache Kafka here,
//!   Redpanda in Docker, see the `docker` feature). Tests that disturb a broker start their own
//!   ([`broker::PrivateBroker`], [`broker::KafkaCluster`]; PostgreSQL: [`database::PrivatePostgres`]).
//! - `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`): a server where the
//!   tests may create databases.
//! - `PIPELINE_BIN_DIR` (default `target/debug`): where `cargo build --bins` put the binaries.

pub mod broker;
pub mod chaos;
#[cfg(feature = "docker")]
pub mod containers;
pub mod database;
pub mod ports;
pub mod tls;

pub use process::failpoint::Failpoint;
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn brokers() -> String {
    #[cfg(feature = "docker")]
    return containers::services().brokers.clone();
    #[cfg(not(feature = "docker"))]
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn server_url() -> String {
    #[cfg(feature = "docker")]
    return containers::services().database_url.clone();
    #[cfg(not(feature = "docker"))]
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    let suffix: u32 = rand::rng().random();
    format!("{prefix}_{}_{suffix:08x}", std::process::id())
}

/// `server` (a PostgreSQL URL, perhaps with `?sslmode=...`) with its database replaced.
pub fn database_url(server: &str, database: &str) -> String {
    let (address, query) = server.split_once('?').unwrap_or((server, ""));
    let Some((base, _)) = address.rsplit_once('/') else {
        panic!("TEST_DATABASE_URL has no database name: {server}");
    };
    if query.is_empty() {
        format!("{base}/{database}")
    } else {
        format!("{base}/{database}?{query}")
    }
}

/// One test's world: its own database, topic, group and folders.
pub struct World {
    pub brokers: String,
    pub database_url: String,
    pub pool: PgPool,
    pub topic: String,
    pub group: String,
    pub dir: tempfile::TempDir,
    /// The server and the database's name, to drop the database when the test ends.
    server: String,
    database: String,
}

/// How many files of the ledger have every row accounted for.
pub const RECONCILED_FILES: &str =
    "SELECT count(*) FROM ingest_files WHERE reconciled_at IS NOT NULL";

/// A message as another producer might send it: key and value, either possibly absent.
pub type RawMessage = (Option<Vec<u8>>, Option<Vec<u8>>);

/// How long a test waits for what must happen; only a failing test waits this long.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The same, for tests that kill, restart or fail brokers over (elections, session timeouts).
pub const BROKER_FAULT_PATIENCE: Duration = Duration::from_secs(180);

/// How many events are stored.
pub const EVENTS: &str = "SELECT count(*) FROM ecommerce_events";

/// The contract's header, as the fixtures write it.
pub const HEADER: &str = "event_id,user_id,event_type,product_id,price,event_time\n";

impl Drop for World {
    /// Drops the test's database (its connections included); a server that is gone is left be.
    fn drop(&mut self) {
        let (server, database) = (self.server.clone(), self.database.clone());
        let dropped = std::thread::spawn(move || -> Result<(), sqlx::Error> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(&server)
                    .await?;
                sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                ))
                .execute(&admin)
                .await?;
                admin.close().await;
                Ok(())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("test database {} not dropped: {error}", self.database);
        }
    }
}

impl World {
    pub async fn new(name: &str) -> World {
        World::on(name, &brokers(), &server_url()).await
    }

    /// A world on a given broker and PostgreSQL server (private ones, for restart tests).
    pub async fn on(name: &str, brokers: &str, server: &str) -> World {
        let database = unique(&format!("it_{name}"));
        let server = server.to_owned();
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&server)
            .await
            .expect("TEST_DATABASE_URL must point at a running PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let database_url = database_url(&server, &database);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&database_url)
            .await
            .expect("connect to test database");
        World {
            brokers: brokers.to_owned(),
            database_url,
            pool,
            topic: unique(&format!("it-{name}")),
            group: unique(&format!("it-{name}")),
            dir: tempfile::tempdir().expect("temp dir"),
            server,
            database,
        }
    }

    /// A fresh pool, after the server restarted.
    pub async fn reconnect(&mut self) -> Result<(), sqlx::Error> {
        self.pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await?;
        Ok(())
    }

    pub fn input_dir(&self) -> PathBuf {
        self.dir.path().join("input")
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.dir.path().join("archive")
    }

    /// Sends `messages` to this world's topic as another producer would (the topic made first).
    pub async fn produce(&self, messages: Vec<RawMessage>) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let config = pipeline_kafka::client_config(&self.brokers, &[], &[]);
        pipeline_kafka::ensure_topic(&config, &self.topic, 3, 1)
            .await
            .expect("create the topic");
        let producer: FutureProducer = config.create().expect("a producer");
        for (key, value) in messages {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.topic);
            if let Some(key) = &key {
                record = record.key(key);
            }
            if let Some(value) = &value {
                record = record.payload(value);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(error, _)| error)
                .expect("a delivered message");
        }
    }

    /// Writes a CSV file of `rows` under the contract's header into the input folder, atomically.
    pub fn drop_csv(&self, name: &str, rows: &str) {
        self.drop_file(name, format!("{HEADER}{rows}").as_bytes());
    }

    /// Writes a file into the input folder atomically (as any well-behaved producer should).
    pub fn drop_file(&self, name: &str, body: &[u8]) {
        let input = self.input_dir();
        std::fs::create_dir_all(&input).expect("input dir");
        let temporary = input.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, body).expect("write input file");
        std::fs::rename(&temporary, input.join(name)).expect("rename input file");
    }

    pub fn generator(&self, args: &[&str]) -> ExitStatus {
        let input = self.input_dir();
        let mut all = vec![
            "--output-dir",
            input.to_str().expect("utf-8 path"),
            "--interval",
            "0s",
        ];
        all.extend_from_slice(args);
        self.spawn("generator", &all)
            .wait_for_exit(Duration::from_secs(120))
    }

    pub fn bridge(&self, extra: &[&str]) -> Proc {
        self.bridge_with_env(extra, &[])
    }

    /// A bridge with extra environment, e.g. an armed failpoint.
    pub fn bridge_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let args = self.bridge_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn_with_env("file-bridge", &args, env)
    }

    /// What every bridge of this world is given (its folders, the broker and topic, quick
    /// rescans and retries), then `extra`.
    pub fn bridge_args(&self, extra: &[&str]) -> Vec<String> {
        let (input, archive) = (self.input_dir(), self.archive_dir());
        let mut args: Vec<String> = [
            "--input-dir",
            input.to_str().expect("utf-8 path"),
            "--archive-dir",
            archive.to_str().expect("utf-8 path"),
            "--brokers",
            &self.brokers,
            "--topic",
            &self.topic,
            "--rescan-interval",
            "200ms",
            "--retry-interval",
            "500ms",
        ]
        .map(String::from)
        .into();
        args.extend(extra.iter().map(|arg| arg.to_string()));
        args
    }

    /// Publishes what is in the input folder and waits for the bridge to exit successfully.
    pub fn bridge_once(&self, extra: &[&str]) {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        let status = self.bridge(&args).wait_for_exit(Duration::from_secs(300));
        assert!(status.success(), "file-bridge --once failed: {status}");
    }

    pub fn consumer(&self, extra: &[&str]) -> Proc {
        self.consumer_with_env(extra, &[])
    }

    /// A bridge that aborts (like kill -9) the `n`-th time it reaches `point`.
    pub fn bridge_failing_at(&self, extra: &[&str], point: Failpoint, n: u64) -> Proc {
        let (key, value) = point.armed_at(n);
        self.bridge_with_env(extra, &[(key, &value)])
    }

    /// A consumer that aborts (like kill -9) the `n`-th time it reaches `point`.
    pub fn consumer_failing_at(&self, extra: &[&str], point: Failpoint, n: u64) -> Proc {
        let (key, value) = point.armed_at(n);
        self.consumer_with_env(extra, &[(key, &value)])
    }

    /// A consumer with extra environment, e.g. an armed failpoint.
    pub fn consumer_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        self.spawn_consumer(&self.database_url, extra, env)
    }

    /// A consumer of this world's topic in another group (a replay of the whole topic).
    pub fn consumer_in_group(&self, group: &str, extra: &[&str]) -> Proc {
        let mut args = vec![
            "--brokers",
            &self.brokers,
            "--topic",
            &self.topic,
            "--group",
            group,
            "--database-url",
            &self.database_url,
        ];
        args.extend_from_slice(extra);
        self.spawn("consumer", &args)
    }

    /// A consumer of this world's topic and group writing through another URL (another role).
    pub fn consumer_on(&self, database_url: &str, extra: &[&str]) -> Proc {
        self.spawn_consumer(database_url, extra, &[])
    }

    fn spawn_consumer(&self, database_url: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut args = self.topic_args().to_vec();
        args.extend_from_slice(&["--database-url", database_url]);
        args.extend_from_slice(extra);
        Proc::spawn(binary_path("consumer"), &args, env, self.dir.path())
    }

    /// `--brokers`, `--topic` and `--group`: what every reader of this world's topic is given.
    pub fn topic_args(&self) -> [&str; 6] {
        [
            "--brokers",
            &self.brokers,
            "--topic",
            &self.topic,
            "--group",
            &self.group,
        ]
    }

    /// The claimed files of every bridge (`.claimed/<owner>/`) and those an older version left
    /// directly in `.claimed/`.
    pub fn claimed_files(&self) -> Vec<PathBuf> {
        let root = self.input_dir().join(".claimed");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(
                    std::fs::read_dir(&path)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
            } else if path.extension().is_some_and(|e| e != "lock") {
                files.push(path);
            }
        }
        files
    }

    /// How many files are not archived yet: visible entries of the input folder, and files a
    /// bridge claimed (moved into its private `.claimed` folder) but has not archived.
    pub fn files_waiting(&self) -> usize {
        let visible = std::fs::read_dir(self.input_dir())
            .expect("read the input folder")
            .filter(|entry| {
                !entry
                    .as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with('.'))
            })
            .count();
        visible + self.claimed_files().len()
    }

    pub fn spawn(&self, binary: &str, args: &[&str]) -> Proc {
        Proc::spawn(binary_path(binary), args, &[], self.dir.path())
    }

    pub fn spawn_with_env(&self, binary: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn(binary_path(binary), args, env, self.dir.path())
    }

    /// The count `sql` returns.
    pub async fn try_count(&self, sql: &str) -> Result<i64, sqlx::Error> {
        sqlx::query(sql)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
    }

    /// The count `sql` returns; the test fails on a query error.
    pub async fn count(&self, sql: &str) -> i64 {
        self.try_count(sql)
            .await
            .unwrap_or_else(|error| panic!("`{sql}` failed: {error}"))
    }

    /// Waits until every file in the input folder was archived, failing after `timeout`.
    pub async fn wait_until_archived(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.files_waiting() > 0 {
            assert!(Instant::now() < deadline, "not all archived");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A backfill of `archive` into this world's topic (`extra` after the folder, e.g. a rate);
    /// its exit status and log.
    pub fn backfill(&self, archive: &Path, extra: &[&str]) -> (ExitStatus, String) {
        let input = self.input_dir();
        let mut args = vec!["--backfill", archive.to_str().expect("utf-8 path")];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--brokers", &self.brokers, "--topic", &self.topic]);
        args.extend_from_slice(&["--input-dir", input.to_str().expect("utf-8 path")]);
        self.spawn("file-bridge", &args).wait_with_log(PATIENCE)
    }

    /// Every row accounted for, the shared ending of a test whose events all came from files:
    /// every file of the ledger reconciled (rows read = inserted + duplicates + rejected), and
    /// the stored events and quarantined rows those the ledger counts (inserted rows retention
    /// dropped since are not stored).
    pub async fn assert_every_row_accounted(&self) {
        // Under a session of its own: a test may preset the database's timeouts to hostile values.
        let mut db = self.pool.begin().await.expect("a transaction");
        sqlx::raw_sql("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
            .execute(&mut *db)
            .await
            .expect("the assertion's own timeouts");
        let open: Vec<(String, Option<i64>, i64, i64, i64)> = sqlx::query_as(
            "SELECT file_name, rows_read, rows_inserted, rows_duplicate, rows_rejected
             FROM ingest_files WHERE reconciled_at IS NULL ORDER BY 1",
        )
        .fetch_all(&mut *db)
        .await
        .expect("the ledger");
        assert!(open.is_empty(), "files not reconciled: {open:?}");
        let (events, counted): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ecommerce_events),
                    (SELECT coalesce(sum(rows_inserted - rows_expired), 0)::int8 FROM ingest_files)",
        )
        .fetch_one(&mut *db)
        .await
        .expect("events");
        assert_eq!(
            events, counted,
            "stored events against the ledger's inserted rows"
        );
        let (rejects, counted): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ecommerce_events_rejected WHERE reason_code <> 'undecodable'),
                    (SELECT coalesce(sum(rows_rejected), 0)::int8 FROM ingest_files)",
        )
        .fetch_one(&mut *db)
        .await
        .expect("rejects");
        assert_eq!(
            rejects, counted,
            "quarantined rows against the ledger's rejected rows"
        );
    }

    /// The live aggregates count every stored event and equal a full scan of the tables.
    pub async fn assert_aggregates_exact(&self) {
        let mut db = self.pool.acquire().await.expect("a connection");
        let (coverage, differences) = operator_tools::aggregates::check(&mut db)
            .await
            .expect("aggregates check");
        assert_eq!(
            coverage,
            operator_tools::aggregates::Coverage::Complete,
            "a rebuild is under way"
        );
        assert!(differences.is_empty(), "{differences:#?}");
    }

    pub async fn event_ids(&self) -> BTreeSet<String> {
        sqlx::query_scalar::<_, String>("SELECT event_id FROM ecommerce_events")
            .fetch_all(&self.pool)
            .await
            .expect("read event ids")
            .into_iter()
            .collect()
    }

    /// Waits until `sql` (a count) reaches `expected`, failing after `timeout`.
    pub async fn wait_for_count(&self, sql: &str, expected: i64, timeout: Duration) {
        self.wait_for_count_showing(sql, expected, timeout, String::new)
            .await;
    }

    /// [`World::wait_for_count`], with what `log` returns (a component's log) in the failure.
    pub async fn wait_for_count_showing(
        &self,
        sql: &str,
        expected: i64,
        timeout: Duration,
        log: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + timeout;
        // Errors while the database restarts are waited out; the last one is reported.
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            match self.try_count(sql).await {
                Ok(count) if count == expected => return,
                Ok(count) => last = count.to_string(),
                Err(error) => last = format!("an error ({error})"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "`{sql}` stayed at {last}, expected {expected} within {timeout:?}\n{}",
            log()
        );
    }

    /// Waits until `sql` (a count) is at least `at_least`.
    pub async fn wait_for_at_least(&self, sql: &str, at_least: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .try_count(sql)
                .await
                .is_ok_and(|count| count >= at_least)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("`{sql}` did not reach {at_least} within {timeout:?}");
    }
}

/// The event_ids of CSV files as written, read with the csv crate alone (not our reader), so the
/// expectation does not share code with what it checks. Files must be clean generator output.
pub fn event_ids_in(dir: &Path) -> (BTreeSet<String>, usize) {
    let mut ids = BTreeSet::new();
    let mut rows = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "csv"))
        .collect();
    paths.sort();
    for path in paths {
        let mut reader = csv::Reader::from_path(&path).expect("open csv");
        for record in reader.records() {
            let record = record.expect("clean csv");
            ids.insert(record[0].to_owned());
            rows += 1;
        }
    }
    (ids, rows)
}

/// A component running as a child process, its output in a log file beside the test's folders.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

/// Where `cargo build --bins` put one of our binaries.
pub fn binary_path(binary: &str) -> PathBuf {
    let bin_dir = std::env::var("PIPELINE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug"));
    let path = bin_dir.join(binary);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` first (or set PIPELINE_BIN_DIR)",
        path.display()
    );
    path
}

impl Proc {
    pub fn spawn(path: PathBuf, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Proc {
        let binary = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let seq: u32 = rand::rng().random();
        let log = dir.join(format!("{binary}-{seq:08x}.log"));
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(&path)
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to start {}: {error}", path.display()));
        Proc {
            name: binary,
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up, as in a crash or an OOM kill.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (STOP, CONT, TERM, ...).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.wait_for_exit_mut(timeout)
    }

    pub fn wait_for_exit(mut self, timeout: Duration) -> ExitStatus {
        self.wait_for_exit_mut(timeout)
    }

    /// Waits for the exit; the status and everything the process wrote.
    pub fn wait_with_log(mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = self.wait_for_exit_mut(timeout);
        (status, self.log_text())
    }

    fn wait_for_exit_mut(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident memory so far (VmHWM), in KiB; 0 where /proc does not tell.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()));
        status
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("VmHWM:"))
                    .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Waits for the process to exit, sampling its peak memory until then.
    /// CPU time (user + system) the process used so far, from its own accounting in `/proc`.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds_of(&self.pid().to_string())
    }

    pub fn wait_with_peak_rss(self, timeout: Duration) -> (ExitStatus, u64) {
        let (status, peak, _) = self.wait_with_usage(timeout);
        (status, peak)
    }

    /// Waits for the exit; the exit status, peak RSS in KiB and CPU seconds last seen.
    pub fn wait_with_usage(mut self, timeout: Duration) -> (ExitStatus, u64, f64) {
        let deadline = Instant::now() + timeout;
        let (mut peak, mut cpu) = (0, 0.0_f64);
        loop {
            peak = peak.max(self.peak_rss_kib());
            cpu = cpu.max(self.cpu_seconds());
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return (status, peak, cpu);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A failed test must not leave components running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) process `pid` (or `self`) used so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces, inside parentheses): utime and
    // stime are the 12th and 13th, in clock ticks of 1/100 s (Linux's USER_HZ).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}
