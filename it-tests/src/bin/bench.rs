//! `bench`: the pipeline measured against its physical limits, in one run, on one input.
//!
//! Ceilings: a raw `COPY` of the CSV files into a table like `ecommerce_events`, and the broker's
//! own round trip with bare rdkafka clients. Then each of our stages on the same input, with its
//! ratio to the ceiling it passes through, freshness at two rates, and peak memory per component.

#[path = "bench/bare_key.rs"]
mod bare_key;
#[path = "bench/curve.rs"]
mod curve;

use anyhow::Context;
use clap::Parser;
use consumer::batch::{Checkpoint, EventRow, Source, WriteBatch};
use consumer::sink::Sink;
use event_model::{validate, RowReader};
use it_tests::World;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Measures every stage of the pipeline against its ceiling; prints a table and writes JSON.
#[derive(Parser)]
struct Args {
    /// Events in the generated input.
    #[arg(long, env = "BENCH_EVENTS", default_value_t = 1_000_000)]
    events: usize,
    /// Events per generated file.
    #[arg(long, env = "BENCH_EVENTS_PER_FILE", default_value_t = 10_000)]
    events_per_file: usize,
    /// Seconds each freshness run lasts.
    #[arg(long, env = "BENCH_FRESHNESS_SECONDS", default_value_t = 30)]
    freshness_seconds: u64,
    /// Events in the backlog the consumer drains for its memory figure (0 skips that stage).
    #[arg(long, env = "BENCH_BACKLOG_EVENTS", default_value_t = 10_000_000)]
    backlog_events: usize,
    /// Partition counts of the topic one consumer drains for the memory-budget stage (none skips it).
    #[arg(
        long,
        env = "BENCH_PARTITION_COUNTS",
        value_delimiter = ',',
        default_value = "3,24,96"
    )]
    partition_counts: Vec<u32>,
    /// Events stored before the live-aggregates stage measures the dashboard and the cost of
    /// the aggregates on ingestion (0 skips that stage).
    #[arg(long, env = "BENCH_STORED_EVENTS", default_value_t = 10_000_000)]
    stored_events: usize,
    /// Table sizes (stored events) at which the curve stage measures a drain and an end-to-end
    /// run of the input; a size that would not fit in the free disk is skipped (none skips the
    /// stage).
    #[arg(
        long,
        env = "BENCH_CURVE_SIZES",
        value_delimiter = ',',
        default_value = "0,10000000,50000000"
    )]
    curve_sizes: Vec<usize>,
    /// Only generate the input and measure the curve.
    #[arg(long)]
    curve_only: bool,
    /// Where the figures go as JSON.
    #[arg(long, env = "BENCH_JSON", default_value = "target/bench/results.json")]
    json: PathBuf,
}

#[derive(Default)]
struct Figures {
    json: serde_json::Map<String, serde_json::Value>,
}

impl Figures {
    fn add(&mut self, key: &str, label: &str, value: f64, unit: &str, note: &str) {
        let shown = if unit == "rows/s" {
            format!("{value:>12.0} {unit}")
        } else {
            format!("{value:>12.1} {unit}")
        };
        println!("{label:<46} {shown:<22} {note}");
        self.json.insert(key.to_owned(), json!(value));
    }
}

fn rate(rows: usize, elapsed: Duration) -> f64 {
    rows as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn ratio(value: f64, ceiling: f64) -> String {
    format!(
        "{:.0}% of {:.0}",
        100.0 * value / ceiling.max(1e-9),
        ceiling
    )
}

const EVENTS_COUNT: &str = "SELECT count(*) FROM ecommerce_events";
const LONG: Duration = Duration::from_secs(1800);

/// The benchmark's stages in order, each printed as it ends: a script, read top to bottom.
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = args.events.div_ceil(args.events_per_file);
    let events = files * args.events_per_file;
    let mut figures = Figures::default();
    describe_machine(events, files, &mut figures);
    let input = Input::generate(&args, files, events).await?;
    println!("{:-<100}", "");
    if args.curve_only {
        curve_figures(&args, &input, events, files, &mut figures).await?;
        return write_figures(&args, &figures);
    }
    let ceilings = ceilings(&input, events, &mut figures).await?;
    let ours = our_stages(&input, events, &ceilings, &mut figures).await?;
    partition_figures(&args, &input.kept, events, &mut figures).await?;
    end_to_end(&input.kept, events, ceilings.bare_pipe_rate, &mut figures).await?;
    freshness_figures(&args, &mut figures).await?;
    cost_figures(&ceilings, &ours, events, &mut figures);
    generator_and_memory_figures(&input, &ours, &mut figures);
    if args.stored_events > 0 {
        let measured = aggregates_stage(&input.world, args.stored_events, events + files).await?;
        aggregates_figures(&measured, args.stored_events, &mut figures);
    }
    backlog_figures(&args, &ceilings, &mut figures).await?;
    curve_figures(&args, &input, events, files, &mut figures).await?;
    write_figures(&args, &figures)
}

async fn curve_figures(
    args: &Args,
    input: &Input,
    events: usize,
    files: usize,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    if args.curve_sizes.is_empty() {
        return Ok(());
    }
    let mut sizes = args.curve_sizes.clone();
    sizes.sort_unstable();
    let input = curve::CurveInput {
        kept: &input.kept,
        rows: events,
        messages: events + files,
    };
    curve::curve_stage(&input, &sizes, figures).await
}

fn write_figures(args: &Args, figures: &Figures) -> anyhow::Result<()> {
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&figures.json)?)?;
    println!("{:-<100}\nfigures written to {}", "", args.json.display());
    Ok(())
}

fn describe_machine(events: usize, files: usize, figures: &mut Figures) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    println!(
        "bench: {events} events in {files} files; machine: {cores} cores, {memory_gib:.0} GiB; broker {}",
        it_tests::brokers()
    );
    figures.json.insert("events".into(), json!(events));
    figures.json.insert("cores".into(), json!(cores));
    figures
        .json
        .insert("memory_gib".into(), json!(memory_gib.round()));
}

/// The input, made by our generator (its speed is a figure too), and a copy kept for the stages
/// that consume their files.
struct Input {
    world: World,
    files: Vec<PathBuf>,
    kept: PathBuf,
    generator_rate: f64,
    generator_rss_kib: u64,
}

impl Input {
    async fn generate(args: &Args, files: usize, events: usize) -> anyhow::Result<Input> {
        let world = World::new("bench").await;
        let started = Instant::now();
        let (status, generator_rss) = world
            .spawn(
                "generator",
                &[
                    "--output-dir",
                    world.input_dir().to_str().context("utf-8 path")?,
                    "--interval",
                    "0s",
                    "--files",
                    &files.to_string(),
                    "--events-per-file",
                    &args.events_per_file.to_string(),
                    "--seed",
                    "1",
                ],
            )
            .wait_with_peak_rss(Duration::from_secs(600));
        anyhow::ensure!(status.success(), "generator failed");
        let generator_rate = rate(events, started.elapsed());
        let input = sorted_files(&world.input_dir())?;
        let kept = world.dir.path().join("generated");
        std::fs::create_dir_all(&kept)?;
        for file in &input {
            std::fs::copy(file, kept.join(file.file_name().context("file name")?))?;
        }
        Ok(Input {
            world,
            files: input,
            kept,
            generator_rate,
            generator_rss_kib: generator_rss,
        })
    }
}

struct Ceilings {
    copy_rate: f64,
    broker: BrokerCeiling,
    bare_pipe_rate: f64,
}

async fn ceilings(input: &Input, events: usize, figures: &mut Figures) -> anyhow::Result<Ceilings> {
    let (world, input_files) = (&input.world, &input.files);
    let copy_rate = copy_ceiling(world, input_files, events).await?;
    figures.add(
        "copy_ceiling_rows_per_s",
        "ceiling (a): raw COPY into an identical table",
        copy_rate,
        "rows/s",
        "",
    );
    let broker = broker_ceiling(input_files, events).await?;
    figures.add(
        "bare_producer_rows_per_s",
        "ceiling (b): bare rdkafka producer",
        broker.produce_rate,
        "rows/s",
        "",
    );
    figures.add(
        "bare_consumer_rows_per_s",
        "ceiling (b): bare rdkafka consumer",
        broker.consume_rate,
        "rows/s",
        "",
    );
    figures.add(
        "pipe_ceiling_rows_per_s",
        "ceiling (c): bare producer while a bare group consumes",
        broker.pipe_rate,
        "rows/s",
        "",
    );

    let bare_pipe_rate = bare_pipe(world, input_files, events).await?;
    figures.add(
        "bare_pipe_ceiling_rows_per_s",
        "ceiling (d): bare producer -> bare consumer -> COPY",
        bare_pipe_rate,
        "rows/s",
        "ON CONFLICT DO NOTHING, offsets after each commit",
    );

    Ok(Ceilings {
        copy_rate,
        broker,
        bare_pipe_rate,
    })
}

struct Ours {
    bridge_rss_kib: u64,
    bridge_cpu: f64,
    drained: Drained,
    scaling: Vec<(usize, f64, f64)>,
}

/// Our sink alone, the bridge, the consumer on the pre-filled topic and 1 to 3 consumers.
async fn our_stages(
    input: &Input,
    events: usize,
    ceilings: &Ceilings,
    figures: &mut Figures,
) -> anyhow::Result<Ours> {
    let (world, input_files) = (&input.world, &input.files);
    let (copy_rate, produce_rate) = (ceilings.copy_rate, ceilings.broker.produce_rate);
    let consume_rate = ceilings.broker.consume_rate;
    let sink_rate = sink_alone(input_files, events).await?;
    figures.add(
        "sink_rows_per_s",
        "sink: our Postgres writer fed from memory",
        sink_rate,
        "rows/s",
        &ratio(sink_rate, copy_rate),
    );
    let started = Instant::now();
    // Six partitions, so one to three consumers can share the topic evenly below.
    let (status, bridge_rss, bridge_cpu) = world
        .bridge(&["--once", "--partitions", "6"])
        .wait_with_usage(Duration::from_secs(1200));
    anyhow::ensure!(status.success(), "file-bridge --once failed");
    let bridge_rate = rate(events, started.elapsed());

    let drained = drain(world, events, LONG).await;
    let consumer_rate = drained.rows_per_second;
    let mut scaling = vec![(1, consumer_rate, drained.cpu_seconds)];
    for consumers in [2, 3] {
        let (rate, cpu) = drain_with(world, consumers, events).await?;
        scaling.push((consumers, rate, cpu));
    }
    figures.add(
        "bridge_rows_per_s",
        "file-bridge: folder -> topic (--once)",
        bridge_rate,
        "rows/s",
        &ratio(bridge_rate, produce_rate),
    );
    figures.add(
        "consumer_rows_per_s",
        "consumer: pre-filled topic -> Postgres",
        consumer_rate,
        "rows/s",
        &ratio(consumer_rate, consume_rate.min(copy_rate)),
    );

    Ok(Ours {
        bridge_rss_kib: bridge_rss,
        bridge_cpu,
        drained,
        scaling,
    })
}

async fn partition_figures(
    args: &Args,
    kept: &Path,
    events: usize,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    // One memory budget whatever the partitions: the same input on topics of 3, 24 and 96
    // partitions, drained by one consumer.
    for partitions in &args.partition_counts {
        let (rate, rss) = partition_stage(kept, *partitions, events).await?;
        figures.add(
            &format!("partitions_{partitions}_consumer_peak_rss_mib"),
            &format!("peak RSS: one consumer holding {partitions} partitions"),
            rss as f64 / 1024.0,
            "MiB",
            &format!("target 64; {rate:.0} rows/s"),
        );
    }

    Ok(())
}

async fn end_to_end(
    kept: &Path,
    events: usize,
    bare_pipe_rate: f64,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    // End to end: files land in a watched folder; rows committed.
    let e2e = World::new("bench_e2e").await;
    // Moved from a copy: the kept input stays whole for the curve stage after this one.
    let staged = e2e.dir.path().join("staged");
    curve::copy_input(kept, &staged)?;
    std::fs::create_dir_all(e2e.input_dir())?;
    let consumer = e2e.consumer(&[]);
    let bridge = e2e.bridge(&[]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let started = Instant::now();
    curve::move_input(&staged, &e2e.input_dir())?;
    e2e.wait_for_count(EVENTS_COUNT, events as i64, LONG).await;
    let e2e_rate = rate(events, started.elapsed());
    figures.add(
        "end_to_end_rows_per_s",
        "end to end: files -> rows committed",
        e2e_rate,
        "rows/s",
        &format!("{}; target 90% of (d)", ratio(e2e_rate, bare_pipe_rate)),
    );
    drop((consumer, bridge));

    Ok(())
}

async fn freshness_figures(args: &Args, figures: &mut Figures) -> anyhow::Result<()> {
    for (key, label, per_file, interval) in [
        ("default", "freshness at 100 events / 5 s", "100", "5s"),
        ("10k_per_s", "freshness at 10,000 events/s", "1000", "100ms"),
    ] {
        let (p50, p99, max) = freshness(args.freshness_seconds, per_file, interval).await?;
        figures.add(
            &format!("freshness_{key}_p50_ms"),
            &format!("{label}: p50"),
            p50,
            "ms",
            "",
        );
        figures.add(
            &format!("freshness_{key}_p99_ms"),
            &format!("{label}: p99"),
            p99,
            "ms",
            "target 1000 at the default rate",
        );
        figures.add(
            &format!("freshness_{key}_max_ms"),
            &format!("{label}: max"),
            max,
            "ms",
            "",
        );
    }

    Ok(())
}

fn cost_figures(ceilings: &Ceilings, ours: &Ours, events: usize, figures: &mut Figures) {
    let (producer_cpu, bare_consumer_cpu) =
        (ceilings.broker.producer_cpu, ceilings.broker.consumer_cpu);
    let (bridge_cpu, drained) = (ours.bridge_cpu, &ours.drained);
    // Our own work per row, from each process's own accounting (user + system): what decides
    // cost on a broker that is not the bottleneck.
    let per_row = |cpu_seconds: f64| cpu_seconds * 1e6 / events as f64;
    figures.add(
        "bridge_cpu_us_per_row",
        "CPU per row: file-bridge",
        per_row(bridge_cpu),
        "µs",
        &format!("bare producer {:.2}", per_row(producer_cpu)),
    );
    figures.add(
        "consumer_cpu_us_per_row",
        "CPU per row: consumer (start-up included)",
        per_row(ours.drained.cpu_seconds),
        "µs",
        &format!("bare consumer {:.2}", per_row(bare_consumer_cpu)),
    );
    figures.add(
        "consumer_steady_cpu_us_per_row",
        "CPU per row: consumer after its first commit",
        drained.steady_cpu_us_per_row,
        "µs",
        "",
    );
    // The floor under our figures: librdkafka's own work per row, on raw CSV lines.
    figures.add(
        "bare_producer_cpu_us_per_row",
        "CPU per row: bare rdkafka producer",
        per_row(producer_cpu),
        "µs",
        "",
    );
    figures.add(
        "bare_consumer_cpu_us_per_row",
        "CPU per row: bare rdkafka consumer",
        per_row(bare_consumer_cpu),
        "µs",
        "",
    );
    for (consumers, rate, cpu) in &ours.scaling {
        figures.add(
            &format!("consumers_{consumers}_rows_per_s"),
            &format!("{consumers} consumer(s) sharing 6 partitions"),
            *rate,
            "rows/s",
            &format!("{:.2} CPU-µs per row, all consumers", per_row(*cpu)),
        );
    }
}

fn generator_and_memory_figures(input: &Input, ours: &Ours, figures: &mut Figures) {
    figures.add(
        "generator_rows_per_s",
        "generator",
        input.generator_rate,
        "rows/s",
        "target 1000000",
    );
    let mib = |kib: u64| kib as f64 / 1024.0;
    figures.add(
        "generator_peak_rss_mib",
        "peak RSS: generator",
        mib(input.generator_rss_kib),
        "MiB",
        "",
    );
    figures.add(
        "bridge_peak_rss_mib",
        "peak RSS: file-bridge",
        mib(ours.bridge_rss_kib),
        "MiB",
        "",
    );
    figures.add(
        "consumer_peak_rss_mib",
        "peak RSS: consumer (draining the whole backlog)",
        mib(ours.drained.peak_rss_kib),
        "MiB",
        "target < 256",
    );
}

fn aggregates_figures(measured: &AggregatesFigures, stored: usize, figures: &mut Figures) {
    {
        figures.add(
            "aggregates_rebuild_rows_per_s",
            &format!("aggregates rebuild over {} stored events", stored),
            measured.rebuild_rate,
            "rows/s",
            "",
        );
        figures.add(
            "dashboard_summary_p50_ms",
            "/api/summary over them: p50",
            measured.summary_p50_ms,
            "ms",
            "",
        );
        figures.add(
            "dashboard_summary_max_ms",
            "/api/summary over them: max of 50",
            measured.summary_max_ms,
            "ms",
            "target 50",
        );
        figures.add(
            "aggregates_check_seconds",
            "aggregates check (a full scan, for comparison)",
            measured.check_seconds,
            "s",
            "",
        );
        figures.add(
            "ingest_without_aggregates_rows_per_s",
            "consumer onto them, aggregate triggers disabled",
            measured.rate_without,
            "rows/s",
            "",
        );
        figures.add(
            "ingest_with_aggregates_rows_per_s",
            "consumer onto them, aggregates moved",
            measured.rate_with,
            "rows/s",
            &format!(
                "{}; target 95%; {:+.2} CPU-µs per row in PostgreSQL",
                ratio(measured.rate_with, measured.rate_without),
                measured.database_cpu_us_per_row_added
            ),
        );
    }
}

async fn backlog_figures(
    args: &Args,
    ceilings: &Ceilings,
    figures: &mut Figures,
) -> anyhow::Result<()> {
    let (consume_rate, copy_rate) = (ceilings.broker.consume_rate, ceilings.copy_rate);
    let mib = |kib: u64| kib as f64 / 1024.0;
    if args.backlog_events > 0 {
        let (rate, rss) = backlog(args.backlog_events, args.events_per_file).await?;
        figures.add(
            "backlog_consumer_rows_per_s",
            &format!("consumer draining a {}-event backlog", args.backlog_events),
            rate,
            "rows/s",
            &ratio(rate, consume_rate.min(copy_rate)),
        );
        figures.add(
            "backlog_consumer_peak_rss_mib",
            "peak RSS: consumer (that backlog)",
            mib(rss),
            "MiB",
            "target < 256",
        );
    }

    Ok(())
}

fn sorted_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "csv"));
    files.sort();
    Ok(files)
}

/// What [`drain`] measured.
struct Drained {
    rows_per_second: f64,
    peak_rss_kib: u64,
    /// All the consumer's CPU, start-up (migrations, joining the group) included.
    cpu_seconds: f64,
    /// CPU per row from its first committed row on: the steady state.
    steady_cpu_us_per_row: f64,
}

/// Starts a consumer on `world`'s pre-filled topic and waits until all `events` are in Postgres.
/// Timed from its first committed row, as the bare consumer is from its first message: joining
/// the group is not throughput.
async fn drain(world: &World, events: usize, timeout: Duration) -> Drained {
    let consumer = world.consumer(&[]);
    world.wait_for_at_least(EVENTS_COUNT, 1, LONG).await;
    let (started, first) = (Instant::now(), world.count(EVENTS_COUNT).await);
    let cpu_at_first = consumer.cpu_seconds();
    world
        .wait_for_count(EVENTS_COUNT, events as i64, timeout)
        .await;
    let rows = events - first as usize;
    let cpu_seconds = consumer.cpu_seconds();
    Drained {
        rows_per_second: rate(rows, started.elapsed()),
        peak_rss_kib: consumer.peak_rss_kib(),
        cpu_seconds,
        steady_cpu_us_per_row: (cpu_seconds - cpu_at_first) * 1e6 / rows.max(1) as f64,
    }
}

/// `consumers` consumers of a new group and a new database draining `world`'s pre-filled topic,
/// timed from the first committed row; rows/s and their CPU seconds together.
async fn drain_with(world: &World, consumers: usize, events: usize) -> anyhow::Result<(f64, f64)> {
    let mut scaled = World::new(&format!("bench_{consumers}_consumers")).await;
    scaled.topic = world.topic.clone();
    let running: Vec<_> = (0..consumers).map(|_| scaled.consumer(&[])).collect();
    scaled.wait_for_at_least(EVENTS_COUNT, 1, LONG).await;
    let (started, first) = (Instant::now(), scaled.count(EVENTS_COUNT).await);
    scaled
        .wait_for_count(EVENTS_COUNT, events as i64, LONG)
        .await;
    let rate = rate(events - first as usize, started.elapsed());
    let cpu = running.iter().map(|c| c.cpu_seconds()).sum();
    Ok((rate, cpu))
}

/// The input in `kept`, published to a new topic of `partitions` partitions and drained by one
/// consumer: its rate and peak RSS.
async fn partition_stage(
    kept: &Path,
    partitions: u32,
    events: usize,
) -> anyhow::Result<(f64, u64)> {
    let world = World::new(&format!("bench_{partitions}_partitions")).await;
    curve::copy_input(kept, &world.input_dir())?;
    let (status, _) = world
        .bridge(&["--once", "--partitions", &partitions.to_string()])
        .wait_with_peak_rss(Duration::from_secs(1200));
    anyhow::ensure!(status.success(), "file-bridge --once failed");
    let drained = drain(&world, events, LONG).await;
    world.pool.close().await;
    Ok((drained.rows_per_second, drained.peak_rss_kib))
}

struct AggregatesFigures {
    rebuild_rate: f64,
    summary_p50_ms: f64,
    summary_max_ms: f64,
    check_seconds: f64,
    rate_without: f64,
    rate_with: f64,
    database_cpu_us_per_row_added: f64,
}

/// The live aggregates at scale: `stored` events already in the table (counted by a timed
/// rebuild), the dashboard's summary polled over them, then `world`'s pre-filled topic drained on
/// top by a new group twice, first with the aggregate triggers disabled, then with them.
async fn aggregates_stage(
    world: &World,
    stored: usize,
    messages: usize,
) -> anyhow::Result<AggregatesFigures> {
    println!("storing {stored} events for the aggregates stage...");
    let mut stage = World::new("bench_aggregates").await;
    stage.topic = world.topic.clone();
    let mut sink = Sink::new(&stage.database_url, "bench", "bench");
    sink.migrate().await?;
    seed_events(&stage, stored).await?;
    let started = Instant::now();
    run_aggregates(&stage, &["rebuild", "--resume"])?;
    let rebuild_rate = rate(stored, started.elapsed());
    let (summary_p50_ms, summary_max_ms) = poll_summary(&stage).await?;
    let started = Instant::now();
    run_aggregates(&stage, &["check"])?;
    let check_seconds = started.elapsed().as_secs_f64();
    let (rate_without, cpu_without) = drain_on_top(&mut stage, messages, Triggers::Off).await?;
    let (rate_with, cpu_with) = drain_on_top(&mut stage, messages, Triggers::On).await?;
    let rows = messages as f64;
    stage.pool.close().await;
    Ok(AggregatesFigures {
        rebuild_rate,
        summary_p50_ms,
        summary_max_ms,
        check_seconds,
        rate_without,
        rate_with,
        database_cpu_us_per_row_added: (cpu_with - cpu_without) * 1e6 / rows,
    })
}

/// `aggregates` with `arguments` on the stage's database; fails with its log unless it exits 0.
fn run_aggregates(stage: &World, arguments: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["--database-url", &stage.database_url];
    all.extend_from_slice(arguments);
    let (status, log) = stage
        .spawn("aggregates", &all)
        .wait_with_log(Duration::from_secs(3600));
    anyhow::ensure!(status.success(), "aggregates {arguments:?} failed: {log}");
    Ok(())
}

/// Whether the aggregate triggers move the aggregates in a drain.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Triggers {
    Off,
    On,
}

/// The stage's topic drained by a new group onto the stored events; its rate from the first
/// commit and PostgreSQL's CPU seconds meanwhile. The rows written go again afterwards, so the
/// next drain writes the same rows onto a table of the same size.
async fn drain_on_top(
    stage: &mut World,
    messages: usize,
    triggers: Triggers,
) -> anyhow::Result<(f64, f64)> {
    let switch = if triggers == Triggers::On {
        "ENABLE"
    } else {
        "DISABLE"
    };
    for (table, trigger) in [
        ("ecommerce_events", "agg_events_inserted"),
        ("ecommerce_events_rejected", "agg_rejects_inserted"),
    ] {
        sqlx::query(&format!("ALTER TABLE {table} {switch} TRIGGER {trigger}"))
            .execute(&stage.pool)
            .await?;
    }
    stage.group = it_tests::unique("bench_aggregates");
    let database_cpu = postgres_cpu_seconds();
    let consumer = stage.consumer(&[]);
    let done = format!(
        "SELECT coalesce(sum(next_offset), 0)::int8 FROM ingest_checkpoints
         WHERE consumer_group = '{}'",
        stage.group
    );
    stage.wait_for_at_least(&done, 1, LONG).await;
    let (started, first) = (Instant::now(), stage.count(&done).await);
    stage.wait_for_count(&done, messages as i64, LONG).await;
    let rate = rate(messages - first as usize, started.elapsed());
    // Before the consumer's sessions end and take their CPU time with them.
    let database_cpu = postgres_cpu_seconds() - database_cpu;
    drop(consumer);
    if triggers == Triggers::On {
        // The run measured what it says: every row it wrote was counted.
        let mut db = stage.pool.acquire().await?;
        let (_, differences) = operator_tools::aggregates::check(&mut db).await?;
        anyhow::ensure!(differences.is_empty(), "aggregates differ: {differences:?}");
    }
    // (Uncounted: the aggregates are not looked at after this stage.)
    for statement in [
        "ALTER TABLE ecommerce_events DISABLE TRIGGER agg_events_deleted",
        "DELETE FROM ecommerce_events WHERE source_file <> 'stored'",
        "ALTER TABLE ecommerce_events ENABLE TRIGGER agg_events_deleted",
        "VACUUM ANALYZE ecommerce_events",
    ] {
        sqlx::query(statement).execute(&stage.pool).await?;
    }
    Ok((rate, database_cpu))
}

/// `stored` events written straight into the table, uncounted (the state migration 0013 leaves on
/// a table with rows): users, products and 30 days of event times like the generator's.
async fn seed_events(world: &World, stored: usize) -> anyhow::Result<()> {
    sqlx::query("ALTER TABLE ecommerce_events DISABLE TRIGGER agg_events_inserted")
        .execute(&world.pool)
        .await?;
    curve::grow(world, 0, stored).await?;
    for statement in [
        "ALTER TABLE ecommerce_events ENABLE TRIGGER agg_events_inserted",
        "UPDATE agg_state SET counted_up_to = ''",
        "VACUUM ANALYZE ecommerce_events",
    ] {
        sqlx::query(statement).execute(&world.pool).await?;
    }
    Ok(())
}

/// The dashboard's summary, asked 50 times of a `--dashboard-only` consumer: p50 and max in ms.
async fn poll_summary(world: &World) -> anyhow::Result<(f64, f64)> {
    let address = format!("127.0.0.1:{}", it_tests::ports::free_port());
    let _dashboard = world.consumer(&["--dashboard-only", "--dashboard-addr", &address]);
    let url = format!("http://{address}/api/summary");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(
        telemetry::http_get(&url, Duration::from_secs(5)).await,
        Ok((200, _))
    ) {
        anyhow::ensure!(Instant::now() < deadline, "the dashboard never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut times = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let (status, _) = telemetry::http_get(&url, Duration::from_secs(30)).await?;
        anyhow::ensure!(status == 200, "/api/summary answered {status}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[times.len() - 1]))
}

/// `from + 1 ..= to` in consecutive inclusive ranges of at most `step`, as the bounds of
/// `generate_series`.
fn series_ranges(from: usize, to: usize, step: usize) -> impl Iterator<Item = (i64, i64)> {
    (from..to)
        .step_by(step)
        .map(move |start| (start as i64 + 1, (start + step).min(to) as i64))
}

/// CPU seconds of every PostgreSQL process on the host (the bench's server is the local one).
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            (comm.trim() == "postgres").then(|| it_tests::cpu_seconds_of(&pid))
        })
        .sum()
}

/// A backlog of `events` (generated, published by the bridge) drained by one consumer.
async fn backlog(events: usize, per_file: usize) -> anyhow::Result<(f64, u64)> {
    let files = events.div_ceil(per_file);
    println!("filling a backlog of {} events...", files * per_file);
    let world = World::new("bench_backlog").await;
    let status = world.generator(&[
        "--files",
        &files.to_string(),
        "--events-per-file",
        &per_file.to_string(),
        "--seed",
        "2",
    ]);
    anyhow::ensure!(status.success(), "generator failed");
    let (status, _) = world
        .bridge(&["--once"])
        .wait_with_peak_rss(Duration::from_secs(7200));
    anyhow::ensure!(status.success(), "file-bridge --once failed");
    let drained = drain(&world, files * per_file, Duration::from_secs(4 * 3600)).await;
    let (rate, rss) = (drained.rows_per_second, drained.peak_rss_kib);
    // Gigabytes of rows nobody needs after this: dropping the world drops its database.
    world.pool.close().await;
    drop(world);
    Ok((rate, rss))
}

/// Ceiling (a): the CSV files, as they are, through `COPY` into a table identical to
/// `ecommerce_events` (same columns, primary key and indexes; the ingestion metadata defaulted).
async fn copy_ceiling(world: &World, input: &[PathBuf], events: usize) -> anyhow::Result<f64> {
    Sink::new(&world.database_url, "bench", "bench")
        .migrate()
        .await?;
    let mut connection = world.pool.acquire().await?;
    for statement in [
        "CREATE TABLE copy_ceiling (LIKE ecommerce_events INCLUDING ALL)",
        "ALTER TABLE copy_ceiling ALTER source_file SET DEFAULT 'bench.csv',
             ALTER source_line SET DEFAULT 0, ALTER landed_at SET DEFAULT now()",
    ] {
        sqlx::query(statement).execute(&mut *connection).await?;
    }
    let started = Instant::now();
    for file in input {
        let bytes = std::fs::read(file)?;
        let mut copy = connection
            .copy_in_raw(
                "COPY copy_ceiling (event_id, user_id, event_type, product_id, price, event_time)
             FROM STDIN (FORMAT csv, HEADER true)",
            )
            .await?;
        copy.send(bytes).await?;
        copy.finish().await?;
    }
    Ok(rate(events, started.elapsed()))
}

/// Ceiling (b): one message per CSV line through the broker and back, with our producer settings.
/// The broker's ceilings in rows/s, and the CPU seconds the bare clients used for all rows.
struct BrokerCeiling {
    produce_rate: f64,
    consume_rate: f64,
    pipe_rate: f64,
    producer_cpu: f64,
    consumer_cpu: f64,
}

async fn broker_ceiling(input: &[PathBuf], events: usize) -> anyhow::Result<BrokerCeiling> {
    let topic = it_tests::unique("bench-raw");
    let piped = it_tests::unique("bench-pipe");
    let config = pipeline_kafka::client_config(
        &it_tests::brokers(),
        file_bridge::publisher::PRODUCER_DEFAULTS,
        &[],
    );
    pipeline_kafka::ensure_topic(&config, &topic, 3, 1).await?;
    pipeline_kafka::ensure_topic(&config, &piped, 3, 1).await?;
    let lines = input_lines(input)?;
    let brokers = it_tests::brokers();
    tokio::task::spawn_blocking(move || -> anyhow::Result<BrokerCeiling> {
        // This process does nothing else meanwhile: its CPU time is the client's.
        let cpu = || it_tests::cpu_seconds_of("self");
        let producer: ThreadedProducer<_> = config.create()?;
        let (started, cpu_before) = (Instant::now(), cpu());
        produce_all(&producer, &topic, &lines)?;
        let produce = rate(events, started.elapsed());
        let producer_cpu = cpu() - cpu_before;

        let consumer = bare_consumer(&brokers, &topic)?;
        let cpu_before = cpu();
        let first = read_all(&consumer, events, Duration::from_millis(500))?;
        // Timed from the first message: joining the group is not throughput.
        let consume = rate(events, first.elapsed());
        let consumer_cpu = cpu() - cpu_before;

        let consumer = bare_consumer(&brokers, &piped)?;
        let pipe = pipe_rate(&producer, consumer, &piped, &lines)?;
        Ok(BrokerCeiling {
            produce_rate: produce,
            consume_rate: consume,
            pipe_rate: pipe,
            producer_cpu,
            consumer_cpu,
        })
    })
    .await?
}

/// Reads `events` messages (failing after 15 minutes); when the first one came.
fn read_all(consumer: &BaseConsumer, events: usize, poll: Duration) -> anyhow::Result<Instant> {
    let (mut seen, mut first) = (0, None);
    let deadline = Instant::now() + Duration::from_secs(900);
    while seen < events && Instant::now() < deadline {
        if let Some(message) = consumer.poll(poll) {
            message?;
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    anyhow::ensure!(seen == events, "bare consumer read {seen} of {events}");
    Ok(first.unwrap_or_else(Instant::now))
}

/// Ceiling (c): a group joined first, then the rows produced while it reads them; timed from the
/// first send to the last row read, as the pipeline end to end is.
fn pipe_rate(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    consumer: BaseConsumer,
    topic: &str,
    lines: &[Vec<u8>],
) -> anyhow::Result<f64> {
    wait_for_assignment(&consumer)?;
    let events = lines.len();
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        read_all(&consumer, events, Duration::from_millis(100)).map(drop)
    });
    produce_all(producer, topic, lines)?;
    reader
        .join()
        .map_err(|_| anyhow::anyhow!("the pipe's reader panicked"))??;
    Ok(rate(events, started.elapsed()))
}

/// Polls until the group gave the consumer its partitions.
fn wait_for_assignment(consumer: &BaseConsumer) -> anyhow::Result<()> {
    while consumer.assignment()?.count() == 0 {
        consumer.poll(Duration::from_millis(100)).transpose()?;
    }
    Ok(())
}

/// Ceiling (d), the least work any Kafka-to-PostgreSQL pipeline must do here: a bare producer
/// publishes the input (one message per row, keyed by event_id) while a bare consumer copies what
/// it reads, 10,000 rows a transaction, into a table identical to `ecommerce_events` with
/// `ON CONFLICT DO NOTHING`, committing its offsets after each commit. No validation, no ledger.
async fn bare_pipe(world: &World, input: &[PathBuf], events: usize) -> anyhow::Result<f64> {
    let mut connection = world.pool.acquire().await?;
    for statement in [
        "CREATE TABLE bare_pipe (LIKE ecommerce_events INCLUDING ALL)",
        "ALTER TABLE bare_pipe ALTER source_file SET DEFAULT 'bench.csv',
             ALTER source_line SET DEFAULT 0, ALTER landed_at SET DEFAULT now()",
        "CREATE TEMP TABLE bare_stage (event_id TEXT, user_id INT, event_type TEXT,
             product_id INT, price NUMERIC(10, 2), event_time TIMESTAMPTZ)",
    ] {
        sqlx::query(statement).execute(&mut *connection).await?;
    }
    let lines = input_lines(input)?;
    let topic = it_tests::unique("bench-bare-pipe");
    let config = pipeline_kafka::client_config(
        &it_tests::brokers(),
        file_bridge::publisher::PRODUCER_DEFAULTS,
        &[],
    );
    pipeline_kafka::ensure_topic(&config, &topic, 3, 1).await?;
    let consumer = bare_consumer(&it_tests::brokers(), &topic)?;
    tokio::task::block_in_place(|| wait_for_assignment(&consumer))?;
    let started = Instant::now();
    let producer_topic = topic.clone();
    let producer = std::thread::spawn(move || -> anyhow::Result<()> {
        let producer: ThreadedProducer<_> = config.create()?;
        produce_all(&producer, &producer_topic, &lines)
    });
    let (mut seen, deadline) = (0, Instant::now() + Duration::from_secs(900));
    while seen < events && Instant::now() < deadline {
        let (csv, batch) = bare_batch(&consumer)?;
        if batch == 0 {
            continue;
        }
        bare_copy(&mut connection, csv).await?;
        consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Async)?;
        seen += batch;
    }
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("the bare pipe's producer panicked"))??;
    anyhow::ensure!(seen == events, "the bare pipe read {seen} of {events}");
    Ok(rate(events, started.elapsed()))
}

/// Up to 10,000 payloads as CSV lines, and how many; fewer when none came for 100 ms.
fn bare_batch(consumer: &BaseConsumer) -> anyhow::Result<(Vec<u8>, usize)> {
    let mut csv = Vec::with_capacity(1 << 20);
    let mut batch = 0;
    while batch < 10_000 {
        let Some(message) =
            tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(100)))
        else {
            break;
        };
        csv.extend_from_slice(rdkafka::Message::payload(&message?).unwrap_or_default());
        csv.push(b'\n');
        batch += 1;
    }
    Ok((csv, batch))
}

/// One transaction of the bare pipe: text `COPY` into a staging table, then `INSERT ... ON
/// CONFLICT DO NOTHING` into the events' twin.
async fn bare_copy(connection: &mut sqlx::PgConnection, csv: Vec<u8>) -> anyhow::Result<()> {
    let mut tx = sqlx::Connection::begin(connection).await?;
    let mut copy = tx
        .copy_in_raw("COPY bare_stage FROM STDIN (FORMAT csv)")
        .await?;
    copy.send(csv).await?;
    copy.finish().await?;
    sqlx::query(
        "INSERT INTO bare_pipe (event_id, user_id, event_type, product_id, price, event_time)
         SELECT * FROM bare_stage ON CONFLICT DO NOTHING",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query("TRUNCATE bare_stage").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Every data line of the input files (headers left out).
fn input_lines(input: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut lines = Vec::new();
    for file in input {
        let bytes = std::fs::read(file)?;
        lines.extend(
            bytes
                .split(|b| *b == b'\n')
                .skip(1)
                .filter(|line| !line.is_empty())
                .map(<[u8]>::to_vec),
        );
    }
    Ok(lines)
}

/// Sends every line keyed by its first field, waiting for room when the queue is full; flushes.
fn produce_all(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    lines: &[Vec<u8>],
) -> anyhow::Result<()> {
    for line in lines {
        let key = line.split(|b| *b == b',').next().unwrap_or_default();
        let mut record = BaseRecord::<[u8], [u8]>::to(topic)
            .key(key)
            .payload(line.as_slice());
        while let Err((_, returned)) = producer.send(record) {
            // Queue full: let the background thread drain it.
            record = returned;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    producer.flush(Timeout::After(Duration::from_secs(600)))?;
    Ok(())
}

/// A bare consumer of `topic` in a group of its own, reading from the start.
fn bare_consumer(brokers: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let mut config = pipeline_kafka::client_config(brokers, &[], &[]);
    config
        .set("group.id", it_tests::unique("bench-raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Our sink alone: rows parsed and validated beforehand, written in batches of 10,000.
async fn sink_alone(input: &[PathBuf], events: usize) -> anyhow::Result<f64> {
    let world = World::new("bench_sink").await;
    let mut rows = Vec::with_capacity(events);
    for file in input {
        let mut reader = RowReader::new(std::fs::File::open(file)?, "f.csv", "id", 0);
        while let Some(keyed) = reader.next_row()? {
            let event = validate(&keyed.row).map_err(|r| anyhow::anyhow!("{r}"))?;
            rows.push(EventRow {
                event,
                late: false,
                source: Source {
                    file: keyed.row.file.into(),
                    file_id: keyed.row.file_id.into(),
                    line: keyed.row.line as i64,
                    partition: 0,
                    offset: 0,
                },
                landed_ms: 0,
                fixes: None,
            });
        }
    }
    let mut sink = Sink::new(&world.database_url, "bench", "bench");
    sink.migrate().await?;
    let batch_size = 10_000;
    let batches: Vec<WriteBatch> = rows
        .chunks(batch_size)
        .enumerate()
        .map(|(index, chunk)| WriteBatch {
            events: chunk.to_vec(),
            checkpoints: vec![Checkpoint {
                partition: 0,
                expected: (index > 0).then(|| (index * batch_size) as i64),
                next_offset: ((index + 1) * batch_size) as i64,
                max_event_time: None,
                last_message: String::new(),
            }],
            ..WriteBatch::default()
        })
        .collect();
    let started = Instant::now();
    for batch in &batches {
        sink.write(batch).await?;
    }
    Ok(rate(events, started.elapsed()))
}

/// File landed (its mtime) -> row committed, with the generator running at a given rate.
async fn freshness(
    seconds: u64,
    per_file: &str,
    interval: &str,
) -> anyhow::Result<(f64, f64, f64)> {
    let world = World::new("bench_fresh").await;
    std::fs::create_dir_all(world.input_dir())?;
    let consumer = world.consumer(&[]);
    let bridge = world.bridge(&[]);
    // Warm up: the first file also pays for the group join and topic discovery. Steady-state
    // freshness is measured on what follows.
    world.drop_file(
        "warmup.csv",
        b"event_id,user_id,event_type,product_id,price,event_time\nwarmup,1,view,1,1.00,2026-01-01T00:00:00Z\n",
    );
    world
        .wait_for_count("SELECT count(*) FROM ecommerce_events", 1, LONG)
        .await;
    let input = world.input_dir();
    let generator = world.spawn(
        "generator",
        &[
            "--output-dir",
            input.to_str().context("utf-8 path")?,
            "--events-per-file",
            per_file,
            "--interval",
            interval,
        ],
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    drop(generator);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p50, p99, max): (f64, f64, f64) = sqlx::query_as(
        "WITH f AS (SELECT extract(epoch FROM ingested_at - landed_at) * 1000 AS ms
                    FROM ecommerce_events WHERE source_file <> 'warmup.csv')
         SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::float8,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::float8,
                max(ms)::float8 FROM f",
    )
    .fetch_one(&world.pool)
    .await?;
    drop((consumer, bridge));
    Ok((p50, p99, max))
}
