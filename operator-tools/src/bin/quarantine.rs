//! `quarantine export`: quarantined rows as a CSV in the input contract, with the reason beside
//! each row, to fix and drop into the input folder. The bridge maps columns by name and ignores
//! the extra ones; each reject whose event_id then lands as a valid event is marked resolved.

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use event_model::{RejectCode, COLUMNS};
use std::io::Write;

/// Exports quarantined rows for repair.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    database: operator_tools::DatabaseArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Writes unresolved quarantined rows as CSV (to stdout, or --output).
    Export(Export),
}

#[derive(clap::Args)]
struct Export {
    /// Only rows quarantined for these reasons (repeatable). Messages that were not file rows
    /// (`undecodable`) are exported only when asked for by name.
    #[arg(long = "reason", value_parser = parse_reason)]
    reasons: Vec<RejectCode>,
    /// Only rows of this file (its name as it landed).
    #[arg(long)]
    file: Option<String>,
    /// Only rows quarantined at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only rows quarantined before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Resolved rows too.
    #[arg(long)]
    include_resolved: bool,
    /// Write here instead of stdout; name it `*.csv` and move it into the input folder once fixed
    /// (write it elsewhere first: the bridge takes complete files only by rename or after the
    /// settle time).
    #[arg(long)]
    output: Option<std::path::PathBuf>,
}

fn parse_reason(text: &str) -> Result<RejectCode, String> {
    RejectCode::ALL
        .iter()
        .copied()
        .find(|code| code.as_str() == text)
        .ok_or_else(|| {
            let known: Vec<&str> = RejectCode::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown reason {text:?}; one of {}", known.join(", "))
        })
}

#[derive(sqlx::FromRow)]
struct Quarantined {
    id: i64,
    reason_code: String,
    reason: String,
    raw: Vec<u8>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    process::exit(match &args.command {
        Command::Export(export) => run_export(&args.database, export).await,
    })
}

async fn run_export(
    database: &operator_tools::DatabaseArgs,
    export: &Export,
) -> anyhow::Result<()> {
    let mut db = database.connect().await?;
    let reasons: Vec<&str> = export.reasons.iter().map(|c| c.as_str()).collect();
    let rows: Vec<Quarantined> = sqlx::query_as(
        "SELECT id, reason_code, reason, raw FROM ecommerce_events_rejected
         WHERE (cardinality($1::text[]) = 0 AND reason_code <> 'undecodable'
                OR reason_code = ANY($1))
           AND ($2::text IS NULL OR source_file = $2)
           AND ($3::timestamptz IS NULL OR rejected_at >= $3)
           AND ($4::timestamptz IS NULL OR rejected_at < $4)
           AND ($5 OR resolved_at IS NULL)
         ORDER BY source_file, source_line, id",
    )
    .bind(&reasons)
    .bind(&export.file)
    .bind(export.since)
    .bind(export.until)
    .bind(export.include_resolved)
    .fetch_all(&mut db)
    .await?;
    let out: Box<dyn Write> = match &export.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|error| anyhow::anyhow!("failed to create {}: {error}", path.display()))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let written = write_csv(out, &rows)?;
    eprintln!("exported {written} quarantined row(s)");
    Ok(())
}

/// The contract's six columns, then the reason, the reject's id, and the original row where it
/// does not split into the six (a wrong field count, say), to rebuild by hand.
fn write_csv(out: impl Write, rows: &[Quarantined]) -> anyhow::Result<usize> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out);
    let mut header: Vec<&str> = COLUMNS.iter().map(|c| c.name()).collect();
    header.extend(["reject_reason", "reject_id", "original_row"]);
    writer.write_record(&header)?;
    for row in rows {
        let fields = split_row(&row.raw);
        let reason = format!("{}: {}", row.reason_code, row.reason);
        let mut record = csv::ByteRecord::new();
        match &fields {
            Some(fields) => fields.iter().for_each(|f| record.push_field(f)),
            None => (0..COLUMNS.len()).for_each(|_| record.push_field(b"")),
        }
        record.push_field(reason.as_bytes());
        record.push_field(row.id.to_string().as_bytes());
        record.push_field(if fields.is_some() { b"" } else { &row.raw });
        writer.write_byte_record(&record)?;
    }
    writer.flush()?;
    Ok(rows.len())
}

/// The stored row's fields, when it is one CSV record of exactly the contract's six.
fn split_row(raw: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(raw);
    let mut records = reader.byte_records();
    let record = records.next()?.ok()?;
    if records.next().is_some() || record.len() != COLUMNS.len() {
        return None;
    }
    Some(record.iter().map(<[u8]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_six_fields_split_and_others_are_kept_whole() {
        assert_eq!(
            split_row(b"e1,1,view,2,\"1,5\",t").map(|f| f.len()),
            Some(6)
        );
        assert_eq!(split_row(b"e1,1,view"), None);
        assert_eq!(split_row(b"a,b,c,d,e,f\ng,h,i,j,k,l"), None);
    }

    #[test]
    fn the_export_has_the_contract_header_and_the_reason() {
        let rows = [
            Quarantined {
                id: 7,
                reason_code: "invalid_field".into(),
                reason: "field `price`: bad".into(),
                raw: b"e1,1,view,2,x,2026-11-25T12:00:00Z".to_vec(),
            },
            Quarantined {
                id: 8,
                reason_code: "field_count".into(),
                reason: "3 fields".into(),
                raw: b"e2,1,view".to_vec(),
            },
        ];
        let mut out = Vec::new();
        write_csv(&mut out, &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "event_id,user_id,event_type,product_id,price,event_time,reject_reason,reject_id,original_row"
        );
        assert_eq!(
            lines[1],
            "e1,1,view,2,x,2026-11-25T12:00:00Z,invalid_field: field `price`: bad,7,"
        );
        assert_eq!(lines[2], ",,,,,,field_count: 3 fields,8,\"e2,1,view\"");
    }
}
