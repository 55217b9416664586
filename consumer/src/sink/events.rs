//! The events table as the sink writes it: one column list drives the staging table, the `COPY`
//! statements, the insert from staging and the binary encoder; and the one rule that keeps a late
//! event quarantined earlier out of the table.

use crate::batch::EventRow;
use crate::storable;
use std::collections::HashSet;
use std::sync::LazyLock;

/// The columns of `ecommerce_events` the sink fills, in the order the encoder writes them, with
/// their types for the staging table.
const COLUMNS: [(&str, &str); 13] = [
    ("event_id", "TEXT"),
    ("user_id", "INT"),
    ("event_type", "TEXT"),
    ("product_id", "INT"),
    ("price", "NUMERIC(10, 2)"),
    ("event_time", "TIMESTAMPTZ"),
    ("is_late", "BOOLEAN"),
    ("source_file", "TEXT"),
    ("source_line", "BIGINT"),
    ("landed_at", "TIMESTAMPTZ"),
    ("source_file_id", "TEXT"),
    ("kafka_partition", "INT"),
    ("kafka_offset", "BIGINT"),
];

fn names(prefix: &str) -> String {
    COLUMNS
        .iter()
        .map(|(name, _)| format!("{prefix}{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The per-connection staging table, emptied at every commit.
pub static CREATE_STAGING: LazyLock<String> = LazyLock::new(|| {
    let columns: Vec<String> = COLUMNS
        .iter()
        .map(|(name, kind)| format!("{name} {kind}"))
        .collect();
    format!(
        "CREATE TEMP TABLE IF NOT EXISTS ingest_staging ({}) ON COMMIT DELETE ROWS",
        columns.join(", ")
    )
});

/// `COPY` straight into the table.
pub static COPY_DIRECT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY ecommerce_events ({}) FROM STDIN (FORMAT binary)",
        names("")
    )
});

/// `COPY` into the staging table.
pub static COPY_STAGING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY ingest_staging ({}) FROM STDIN (FORMAT binary)",
        names("")
    )
});

/// From staging into the table: rows already there are dropped by the primary key (a digest of
/// the id, `migrations/0018_compact_event_key.sql`), and a late
/// event quarantined earlier keeps its id (a later copy is a duplicate, not a new event).
pub static INSERT_FROM_STAGING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO ecommerce_events ({}) SELECT {} FROM ingest_staging s
         WHERE NOT EXISTS (SELECT 1 FROM ecommerce_events_rejected r
                           WHERE r.reason_code = 'late' AND r.event_id = s.event_id)
         ON CONFLICT (event_key) DO NOTHING
         RETURNING event_id::text, source_file, source_file_id, is_late",
        names(""),
        names("s.")
    )
});

/// The ids among a batch's events that were quarantined as late, for the direct `COPY` (which
/// cannot filter): the same rule as [`INSERT_FROM_STAGING`]'s, asked beforehand.
pub const LATE_QUARANTINED: &str = "SELECT event_id::text FROM ecommerce_events_rejected
    WHERE reason_code = 'late' AND event_id = ANY($1::text[])";

/// Whether any event was ever quarantined as late: one index probe, where the query above costs
/// a quarter of a 10,000-row `COPY`. Never true under the default `--late-policy accept`.
pub const ANY_LATE_QUARANTINED: &str =
    "SELECT EXISTS (SELECT 1 FROM ecommerce_events_rejected WHERE reason_code = 'late')";

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// The events in PostgreSQL's binary `COPY` format, leaving out the ids in `skip`. Binary rather
/// than text: PostgreSQL then parses no numbers or timestamps, which took about a tenth of its
/// time per row.
pub fn encode_events(events: &[EventRow], skip: &HashSet<String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(21 + events.len() * 140);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    // Flags, then the length of the header extension: none of either.
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    for row in events {
        if !skip.contains(&row.event.event_id) {
            encode_event(&mut out, row);
        }
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// One tuple, the columns in the order of [`COLUMNS`].
fn encode_event(out: &mut Vec<u8>, row: &EventRow) {
    let event = &row.event;
    out.extend_from_slice(&(COLUMNS.len() as i16).to_be_bytes());
    push_field(out, event.event_id.as_bytes());
    push_field(out, &event.user_id.to_be_bytes());
    push_field(out, event.event_type.as_str().as_bytes());
    push_field(out, &event.product_id.to_be_bytes());
    push_numeric_cents(out, event.price_cents);
    push_field(out, &postgres_micros(event.event_time.timestamp_micros()));
    push_field(out, &[u8::from(row.late)]);
    push_field(out, storable::text(&row.source.file).as_bytes());
    push_field(out, &row.source.line.to_be_bytes());
    push_field(out, &postgres_micros(row.landed_ms.saturating_mul(1000)));
    push_field(out, storable::key(&row.source.file_id).as_bytes());
    push_field(out, &row.source.partition.to_be_bytes());
    push_field(out, &row.source.offset.to_be_bytes());
}

fn postgres_micros(unix_micros: i64) -> [u8; 8] {
    unix_micros
        .saturating_sub(POSTGRES_EPOCH_MICROS)
        .to_be_bytes()
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are bounded by the row size limit, far below 2 GiB.
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// `cents / 100` as PostgreSQL's binary NUMERIC: base-10000 digits, most significant first, the
/// weight of the first one, sign, and a display scale of 2; no leading or trailing zero digits.
fn push_numeric_cents(out: &mut Vec<u8>, cents: i64) {
    let magnitude = cents.unsigned_abs();
    let (mut whole, fraction) = (magnitude / 100, (magnitude % 100) as i16 * 100);
    let mut digits: Vec<i16> = Vec::with_capacity(6);
    while whole > 0 {
        digits.push((whole % 10_000) as i16);
        whole /= 10_000;
    }
    digits.reverse();
    let mut weight = digits.len() as i16 - 1;
    digits.push(fraction);
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if cents < 0 { 0x4000 } else { 0 };
    let length = 8 + 2 * digits.len();
    out.extend_from_slice(&(length as i32).to_be_bytes());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&2u16.to_be_bytes());
    for digit in digits {
        out.extend_from_slice(&digit.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(cents: i64) -> Vec<i16> {
        let mut out = Vec::new();
        push_numeric_cents(&mut out, cents);
        out[4..]
            .chunks(2)
            .map(|pair| i16::from_be_bytes([pair[0], pair[1]]))
            .collect()
    }

    #[test]
    fn prices_become_base_10000_numerics() {
        // ndigits, weight, sign, dscale, digits...
        assert_eq!(numeric(0), [0, 0, 0, 2]);
        assert_eq!(numeric(1), [1, -1, 0, 2, 100]);
        assert_eq!(numeric(1999), [2, 0, 0, 2, 19, 9900]);
        assert_eq!(numeric(100), [1, 0, 0, 2, 1]);
        assert_eq!(numeric(1_000_000), [1, 1, 0, 2, 1]);
        assert_eq!(numeric(1_234_567_890), [3, 1, 0, 2, 1234, 5678, 9000]);
        assert_eq!(numeric(-250), [2, 0, 0x4000, 2, 2, 5000]);
    }

    #[test]
    fn every_tuple_has_one_field_per_column() {
        let row = EventRow {
            event: event_model::Event {
                event_id: "e".into(),
                user_id: 1,
                event_type: event_model::EventType::View,
                product_id: 2,
                price_cents: 300,
                event_time: chrono::Utc::now(),
            },
            late: false,
            source: crate::batch::Source {
                file: "f.csv".into(),
                file_id: "id".into(),
                line: 2,
                partition: 0,
                offset: 0,
            },
            landed_ms: 0,
            fixes: None,
        };
        let mut out = Vec::new();
        encode_event(&mut out, &row);
        let fields = i16::from_be_bytes([out[0], out[1]]) as usize;
        assert_eq!(fields, COLUMNS.len());
        // Walk the fields: their lengths must account for every byte written.
        let mut at = 2;
        for _ in 0..fields {
            let length = i32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
            at += 4 + length;
        }
        assert_eq!(at, out.len());
    }
}
