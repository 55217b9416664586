//! The report on one screen, or as one JSON document.

use super::{Args, Report};

/// One screen, printed top to bottom.
pub(super) fn text(args: &Args, report: &Report) {
    println!(
        "pipeline status at {}",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "topic {} · group {} · brokers {}",
        args.kafka.topic, args.group, args.kafka.brokers
    );
    print_partitions(report);
    print_rows(report);
    print_files(report);
    for event in &report.log_events {
        println!(
            "log {} on partition {} ({} -> {}): {}",
            event.kind.as_str(),
            event.kafka_partition,
            event.from_offset,
            event.to_offset,
            event.detail
        );
    }
    if let Some(folder) = report.input_folder {
        println!(
            "input folder: {} file(s) waiting to be complete, {} name(s) ignored (the bridge's log says which and why)",
            folder.files_waiting, folder.files_ignored
        );
    }
    println!("\ncomponents:");
    for component in &report.components {
        let state = match &component.ready {
            None => "down".to_owned(),
            Some(Ok(())) => "ready".to_owned(),
            Some(Err(why)) => format!("not ready: {why}"),
        };
        println!("  {:<12} {:<40} {state}", component.name, component.url);
    }
}

/// Each partition's offsets (the log's end, Kafka's commit, PostgreSQL's checkpoint) and lag.
fn print_partitions(report: &Report) {
    println!("\n  partition  end offset  committed (kafka)  checkpoint (postgres)  lag");
    let Some(error) = &report.kafka_error else {
        let show = |value: Option<i64>| value.map_or("-".to_owned(), |v| v.to_string());
        for p in &report.partitions {
            println!(
                "  {:<9}  {:<10}  {:<17}  {:<21}  {}",
                p.partition,
                p.end_offset,
                show(p.committed_offset),
                show(p.checkpoint),
                p.lag
            );
        }
        println!("  total lag: {}", report.total_lag());
        return;
    };
    println!("  kafka unavailable: {error}");
}

/// The last batch, the rows stored, the quarantine by reason and the conflicting duplicates.
fn print_rows(report: &Report) {
    match report.last_batch {
        Some(at) => println!(
            "\nlast batch: {} ({} s ago)",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            (chrono::Utc::now() - at).num_seconds()
        ),
        None => println!("\nlast batch: none yet"),
    }
    println!(
        "rows today: {} · rows total: {}",
        report.rows_today, report.rows_total
    );
    let rejected: Vec<String> = report
        .rejected
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    println!(
        "rejected by reason: {}",
        if rejected.is_empty() {
            "none".to_owned()
        } else {
            rejected.join(", ")
        }
    );
    for r in &report.resolution {
        println!(
            "  {}: {} unresolved, {} resolved",
            r.reason_code, r.unresolved, r.resolved
        );
    }
    if let Some(retention) = &report.retention {
        let state = match retention.completed_at {
            Some(_) => "dropped",
            None => "still dropping",
        };
        println!(
            "retention: events dated before {} {state} (set {}); arrivals dated before it are quarantined `expired`",
            retention.horizon.format("%Y-%m-%d %H:%M:%S UTC"),
            retention.set_at.format("%Y-%m-%d %H:%M:%S UTC"),
        );
    }
    if report.conflicting.rows > 0 {
        println!(
            "duplicates with other values than the stored event: {} in {} file(s) (explain EVENT_ID shows the fields)",
            report.conflicting.rows, report.conflicting.files
        );
    }
}

/// The files of the ledger not reconciled yet.
fn print_files(report: &Report) {
    match report.unreconciled.len() {
        0 => println!("files: every file reconciled"),
        n => println!("files not reconciled yet: {n}"),
    }
    for file in &report.unreconciled {
        let read = file
            .rows_read
            .map_or("? (end not arrived)".to_owned(), |n| n.to_string());
        println!(
            "  {}{} ({}): read {read}, inserted {}, duplicate {}, rejected {}, since {}",
            if file.overdue { "OVERDUE " } else { "" },
            file.file_name,
            file.content_id,
            file.rows_inserted,
            file.rows_duplicate,
            file.rows_rejected,
            file.first_seen_at.format("%Y-%m-%d %H:%M:%S UTC"),
        );
    }
}

/// The report as one JSON document.
pub(super) fn as_json(args: &Args, report: &Report) -> serde_json::Value {
    serde_json::json!({
        "at": chrono::Utc::now().to_rfc3339(),
        "topic": args.kafka.topic,
        "group": args.group,
        "healthy": report.healthy(),
        "kafka_error": report.kafka_error,
        "partitions": report.partitions,
        "total_lag": report.total_lag(),
        "last_batch_at": report.last_batch.map(|at| at.to_rfc3339()),
        "rows_today": report.rows_today,
        "rows_total": report.rows_total,
        "rejected_by_reason": report.rejected.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
        "quarantine": report.resolution,
        "unreconciled_files": report.unreconciled,
        "conflicting_duplicates": report.conflicting,
        "log_events": report.log_events,
        "input_folder": report.input_folder,
        "retention": report.retention,
        "components": report.components.iter().map(|c| serde_json::json!({
            "name": c.name,
            "url": c.url,
            "state": match &c.ready { None => "down", Some(Ok(())) => "ready", Some(Err(_)) => "not ready" },
            "why": c.ready.as_ref().and_then(|r| r.as_ref().err()),
        })).collect::<Vec<_>>(),
    })
}
