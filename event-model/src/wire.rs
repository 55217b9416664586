//! The message on the topic: one CSV row, its raw values and where it came from.
//!
//! The bridge does not judge values; it only maps the header and notices rows that cannot be read
//! as the header says (wrong field count, invalid UTF-8). Those travel as a [`Defect`] with the
//! row's bytes, so the consumer can quarantine them losslessly.
//!
//! Two encodings of a row are read: version 1, JSON (`{"v":1,...}`), and version 2, the prefix
//! [`BINARY_ROW_PREFIX`] and the row in postcard's compact binary form, which the consumer reads
//! without copying a value (a profile put a third of its time in per-row allocation and JSON).
//! End-of-file messages are JSON in both: one per file, their cost does not matter.

use crate::event::{Column, COLUMNS};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The JSON encoding's version; the consumer quarantines versions it does not know.
pub const WIRE_VERSION: u32 = 1;

/// Starts every version 2 (binary) row: no JSON message can start so, and a foreign message that
/// does must still decode as a whole row to be taken for one.
pub const BINARY_ROW_PREFIX: &[u8; 4] = b"EPW\x02";

/// The Kafka header of a row that fixes a quarantined row: the reject's id, in decimal. A
/// header, not a field of the row, so every encoding and every consumer version reads the row
/// as before.
pub const FIXES_HEADER: &str = "pipeline-fixes-reject";

/// How the bridge encodes rows. Consumers read both, so a rollout upgrades consumers first and
/// then bridges; bridges stay on `json` while a consumer older than version 2 still runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WireFormat {
    /// Version 1: JSON, readable by every consumer.
    Json,
    /// Version 2: compact binary, about half the bytes and read without per-value allocations.
    #[default]
    Binary,
}

impl FromStr for WireFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "json" | "1" => Ok(WireFormat::Json),
            "binary" | "2" => Ok(WireFormat::Binary),
            other => Err(format!("unknown wire format {other:?}: json or binary")),
        }
    }
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireFormat::Json => "json",
            WireFormat::Binary => "binary",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawRow {
    pub v: u32,
    /// File name (not path) the row came from.
    pub file: String,
    /// Identity of the file's content (size and modification time), so a file republished after a
    /// crash is recognised as the same file and a new file under an old name is not.
    pub file_id: String,
    /// 1-based line where the row starts in the file.
    pub line: u64,
    /// When the bridge picked the file up, milliseconds since the Unix epoch (for freshness).
    pub landed_ms: i64,
    /// The six values in canonical column order; `None` where the header lacks the column.
    pub values: [Option<String>; 6],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defect: Option<Defect>,
}

/// A row the bridge could not map onto the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defect {
    /// `field_count`, `invalid_utf8`, `row_too_large`, `field_too_large` or `too_large`.
    pub code: crate::reason::RejectCode,
    pub reason: String,
    /// The record's fields re-encoded as one RFC 4180 CSV line, hex-encoded: every byte kept.
    pub raw_hex: String,
}

/// A row borrowed from where it is held: a version 2 message as received, or a [`RawRow`]. What
/// the rules read; also the version 2 encoding itself (after [`BINARY_ROW_PREFIX`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRef<'a> {
    pub file: &'a str,
    pub file_id: &'a str,
    pub line: u64,
    pub landed_ms: i64,
    #[serde(borrow)]
    pub values: [Option<&'a str>; 6],
    pub defect: Option<Defect>,
}

impl RowRef<'_> {
    pub fn value(&self, column: Column) -> Option<&str> {
        self.values[column.index()]
    }

    /// The row as one CSV line of the six canonical values (missing ones empty), for quarantine.
    pub fn canonical_csv(&self) -> Vec<u8> {
        canonical_csv(COLUMNS.map(|column| self.value(column).unwrap_or("")))
    }

    pub fn to_raw_row(&self) -> RawRow {
        RawRow {
            v: WIRE_VERSION,
            file: self.file.to_owned(),
            file_id: self.file_id.to_owned(),
            line: self.line,
            landed_ms: self.landed_ms,
            values: self.values.map(|value| value.map(str::to_owned)),
            defect: self.defect.clone(),
        }
    }

    pub fn encode(&self, format: WireFormat) -> Vec<u8> {
        match format {
            WireFormat::Json => self.to_raw_row().encode(WireFormat::Json),
            WireFormat::Binary => self.encode_binary(),
        }
    }

    fn encode_binary(&self) -> Vec<u8> {
        let size = self.file.len() + self.file_id.len() + 64;
        let size = self
            .values
            .iter()
            .flatten()
            .fold(size, |n, v| n + v.len() + 2);
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(BINARY_ROW_PREFIX);
        postcard::to_extend(self, out).expect("a row always serializes to a Vec")
    }
}

/// Six values as one RFC 4180 CSV line without its line end.
pub fn canonical_csv(fields: [&str; 6]) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    let _ = writer.write_record(fields);
    let mut bytes = writer.into_inner().unwrap_or_default();
    bytes.pop();
    bytes
}

impl RawRow {
    pub fn value(&self, column: Column) -> Option<&str> {
        self.values[column.index()].as_deref()
    }

    pub fn as_row_ref(&self) -> RowRef<'_> {
        RowRef {
            file: &self.file,
            file_id: &self.file_id,
            line: self.line,
            landed_ms: self.landed_ms,
            values: [0, 1, 2, 3, 4, 5].map(|index| self.values[index].as_deref()),
            defect: self.defect.clone(),
        }
    }

    /// The row as one CSV line of the six canonical values (missing ones empty), for quarantine.
    pub fn canonical_csv(&self) -> Vec<u8> {
        canonical_csv(COLUMNS.map(|column| self.value(column).unwrap_or("")))
    }

    pub fn encode(&self, format: WireFormat) -> Vec<u8> {
        match format {
            WireFormat::Json => serde_json::to_vec(self).expect("a RawRow always serializes"),
            WireFormat::Binary => self.as_row_ref().encode_binary(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<RawRow, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A decoded row: owned when it came as JSON (whose strings may hold escapes), borrowed from the
/// message when it came in version 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodedRow<'a> {
    Json(RawRow),
    Binary(RowRef<'a>),
}

impl DecodedRow<'_> {
    pub fn view(&self) -> RowRef<'_> {
        match self {
            DecodedRow::Json(row) => row.as_row_ref(),
            DecodedRow::Binary(row) => row.clone(),
        }
    }
}

/// The bridge's last message for a file, sent once every row of it was enqueued and the file was
/// found unchanged: how many rows it read, so the consumer can reconcile the file's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEnd {
    pub file: String,
    /// The identity every row of the file carries (the first 128 bits of `content_sha256`).
    pub file_id: String,
    pub content_sha256: String,
    pub size_bytes: u64,
    pub landed_ms: i64,
    /// Data rows read, each published as exactly one message.
    pub rows_read: u64,
    /// Published again by `file-bridge --backfill`, not taken from the input folder.
    #[serde(default)]
    pub backfill: bool,
    /// The file changed while it was read: `rows_read` counts the rows sent before that was
    /// found, and the file is read again as the version it became.
    #[serde(default)]
    pub changed_while_read: bool,
}

#[derive(Serialize, Deserialize)]
struct FileEndEnvelope {
    v: u32,
    file_end: FileEnd,
}

impl FileEnd {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&FileEndEnvelope {
            v: WIRE_VERSION,
            file_end: self.clone(),
        })
        .expect("a FileEnd always serializes")
    }
}

/// What the bridge publishes: a row of a file, or the end of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PipelineMessage<'a> {
    Row(DecodedRow<'a>),
    FileEnd(FileEnd),
}

/// Decodes a message the bridge wrote, or says why `bytes` is not one: not a row in either
/// version nor an end of file, a version this build does not know, or a position no file can
/// have. Whoever produced it, the consumer can then quarantine it by its Kafka identity. Rows,
/// nearly every message, are tried first.
pub fn decode_pipeline_message(bytes: &[u8]) -> Result<PipelineMessage<'_>, String> {
    if let Some(body) = bytes.strip_prefix(BINARY_ROW_PREFIX) {
        let (row, rest): (RowRef, _) = postcard::take_from_bytes(body)
            .map_err(|error| format!("message is not a version 2 row: {error}"))?;
        if !rest.is_empty() {
            return Err(format!(
                "message is not a version 2 row: {} bytes after the row",
                rest.len()
            ));
        }
        valid_source(row.file, row.line)?;
        return Ok(PipelineMessage::Row(DecodedRow::Binary(row)));
    }
    let row_error = match RawRow::decode(bytes) {
        Ok(row) => {
            supported_version(row.v)?;
            valid_source(&row.file, row.line)?;
            return Ok(PipelineMessage::Row(DecodedRow::Json(row)));
        }
        Err(error) => error,
    };
    let Ok(envelope) = serde_json::from_slice::<FileEndEnvelope>(bytes) else {
        return Err(format!(
            "message is not a row published by file-bridge: {row_error}"
        ));
    };
    supported_version(envelope.v)?;
    let end = envelope.file_end;
    if end.file.is_empty() || end.file_id.is_empty() || end.rows_read > i64::MAX as u64 {
        return Err(format!(
            "end-of-file message names no valid file (file {:?}, id {:?}, rows {})",
            end.file.chars().take(80).collect::<String>(),
            end.file_id.chars().take(80).collect::<String>(),
            end.rows_read
        ));
    }
    Ok(PipelineMessage::FileEnd(end))
}

fn valid_source(file: &str, line: u64) -> Result<(), String> {
    if file.is_empty() || line == 0 || line > i64::MAX as u64 {
        return Err(format!(
            "message names no valid source (file {:?}, line {line})",
            file.chars().take(80).collect::<String>(),
        ));
    }
    Ok(())
}

fn supported_version(version: u32) -> Result<(), String> {
    if version == WIRE_VERSION {
        Ok(())
    } else {
        Err(format!(
            "message format version {version} is not supported (this consumer reads version {WIRE_VERSION})"
        ))
    }
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    out
}

pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_every_byte() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
    }

    fn sample_row() -> RawRow {
        RawRow {
            v: WIRE_VERSION,
            file: "a.csv".into(),
            file_id: "10-20".into(),
            line: 3,
            landed_ms: 5,
            values: [
                Some("e,1".into()),
                None,
                None,
                None,
                None,
                Some("\"q\"".into()),
            ],
            defect: None,
        }
    }

    #[test]
    fn raw_row_round_trips_through_json() {
        let row = sample_row();
        let json = row.encode(WireFormat::Json);
        assert_eq!(RawRow::decode(&json).unwrap(), row);
        assert_eq!(row.canonical_csv(), b"\"e,1\",,,,,\"\"\"q\"\"\"".to_vec());
        assert_eq!(
            decode_pipeline_message(&json),
            Ok(PipelineMessage::Row(DecodedRow::Json(row)))
        );
    }

    #[test]
    fn a_binary_row_round_trips_borrowing_its_values_from_the_message() {
        let mut row = sample_row();
        // Values no JSON string holds as they are: they must arrive byte for byte.
        row.values[1] = Some("a\0b\n\r\"\\\u{feff}é".into());
        row.values[2] = Some("x".repeat(1 << 20));
        let binary = row.encode(WireFormat::Binary);
        assert!(binary.starts_with(BINARY_ROW_PREFIX));
        let Ok(PipelineMessage::Row(DecodedRow::Binary(decoded))) =
            decode_pipeline_message(&binary)
        else {
            panic!("not a binary row");
        };
        assert_eq!(decoded, row.as_row_ref());
        let within = |value: &str| binary.as_ptr_range().contains(&value.as_ptr());
        assert!(decoded.values.iter().flatten().all(|value| within(value)));
        assert!(within(decoded.file));
        let usual = RawRow {
            values: ["e", "1", "view", "2", "3.50", "2026-11-25T13:00:00Z"].map(|v| Some(v.into())),
            ..sample_row()
        };
        let (json, binary) = (
            usual.encode(WireFormat::Json),
            usual.encode(WireFormat::Binary),
        );
        assert!(
            binary.len() * 3 < json.len() * 2,
            "{} vs {}",
            binary.len(),
            json.len()
        );
    }

    #[test]
    fn a_defect_travels_in_a_binary_row() {
        let row = RawRow {
            values: [const { None }; 6],
            defect: Some(Defect {
                code: crate::reason::RejectCode::InvalidUtf8,
                reason: "field `price`: invalid UTF-8".into(),
                raw_hex: "ff00".into(),
            }),
            ..sample_row()
        };
        let binary = row.encode(WireFormat::Binary);
        let decoded = decode_pipeline_message(&binary).unwrap();
        assert_eq!(
            decoded,
            PipelineMessage::Row(DecodedRow::Binary(row.as_row_ref()))
        );
    }

    /// The worst forms of a message that claims to be a version 2 row: cut anywhere, padded,
    /// with a length no message has, with bytes that are not UTF-8, or naming no position.
    #[test]
    fn a_broken_binary_row_is_refused_with_a_reason_never_a_panic() {
        let binary = sample_row().encode(WireFormat::Binary);
        for cut in BINARY_ROW_PREFIX.len()..binary.len() {
            let error = decode_pipeline_message(&binary[..cut]).unwrap_err();
            assert!(
                error.starts_with("message is not a version 2 row"),
                "{cut}: {error}"
            );
        }
        let mut padded = binary.clone();
        padded.push(0);
        assert!(decode_pipeline_message(&padded)
            .unwrap_err()
            .contains("1 bytes after the row"));
        // The file name's length as a varint claiming 2^63 bytes.
        let mut huge = BINARY_ROW_PREFIX.to_vec();
        huge.extend_from_slice(&[0xff; 9]);
        huge.push(0x7f);
        assert!(decode_pipeline_message(&huge).is_err());
        // "a.csv" with an invalid UTF-8 byte in place of its dot.
        let mut not_utf8 = binary.clone();
        let dot = not_utf8.iter().position(|b| *b == b'.').unwrap();
        not_utf8[dot] = 0xff;
        assert!(decode_pipeline_message(&not_utf8).is_err());
        for (file, line) in [("", 3), ("a.csv", 0), ("a.csv", u64::MAX)] {
            let row = RawRow {
                file: file.into(),
                line,
                ..sample_row()
            };
            let error = decode_pipeline_message(&row.encode(WireFormat::Binary)).unwrap_err();
            assert!(error.contains("names no valid source"), "{error}");
        }
        assert!(decode_pipeline_message(BINARY_ROW_PREFIX).is_err());
    }

    #[test]
    fn wire_formats_parse_by_name_or_version() {
        assert_eq!("json".parse(), Ok(WireFormat::Json));
        assert_eq!("2".parse(), Ok(WireFormat::Binary));
        assert!("xml".parse::<WireFormat>().is_err());
        assert_eq!(WireFormat::default().to_string(), "binary");
    }

    #[test]
    fn a_file_end_is_told_apart_from_rows_and_checked() {
        let end = FileEnd {
            file: "a.csv".into(),
            file_id: "ab".into(),
            content_sha256: "ab00".into(),
            size_bytes: 10,
            landed_ms: 1,
            rows_read: 3,
            backfill: false,
            changed_while_read: false,
        };
        assert_eq!(
            decode_pipeline_message(&end.encode()),
            Ok(PipelineMessage::FileEnd(end.clone()))
        );
        let nameless = FileEnd {
            file: String::new(),
            ..end
        };
        assert!(decode_pipeline_message(&nameless.encode())
            .unwrap_err()
            .contains("names no valid file"));
        let unknown = br#"{"v":1,"other":{}}"#;
        assert!(decode_pipeline_message(unknown)
            .unwrap_err()
            .starts_with("message is not a row published by file-bridge"));
        let mut versioned = serde_json::to_value(sample_row()).unwrap();
        versioned["v"] = 3.into();
        let error = decode_pipeline_message(&serde_json::to_vec(&versioned).unwrap()).unwrap_err();
        assert!(error.contains("version 3 is not supported"), "{error}");
    }
}
