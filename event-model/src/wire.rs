//! The message on the topic: one CSV row, its raw values and where it came from.
//!
//! The bridge does not judge values; it only maps the header and notices rows that cannot be read
//! as the header says (wrong field count, invalid UTF-8). Those travel as a [`Defect`] with the
//! row's bytes, so the consumer can quarantine them losslessly.

use crate::event::COLUMNS;
use serde::{Deserialize, Serialize};

/// Bumped when the format changes incompatibly; the consumer quarantines versions it does not know.
pub const WIRE_VERSION: u32 = 1;

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

impl RawRow {
    pub fn value(&self, column: crate::Column) -> Option<&str> {
        self.values[column.index()].as_deref()
    }

    /// The row as one CSV line of the six canonical values (missing ones empty), for quarantine.
    pub fn canonical_csv(&self) -> Vec<u8> {
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        let fields = COLUMNS.map(|column| self.value(column).unwrap_or(""));
        // Writing to a Vec cannot fail.
        let _ = writer.write_record(fields);
        let mut bytes = writer.into_inner().unwrap_or_default();
        bytes.pop();
        bytes
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a RawRow always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<RawRow, serde_json::Error> {
        serde_json::from_slice(bytes)
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
pub enum PipelineMessage {
    Row(RawRow),
    FileEnd(FileEnd),
}

/// Decodes a message the bridge wrote, or says why `bytes` is not one: not JSON, not either
/// shape, a version this build does not know, or a position no file can have. Whoever produced
/// it, the consumer can then quarantine it by its Kafka identity. Rows, nearly every message,
/// are tried first.
pub fn decode_pipeline_message(bytes: &[u8]) -> Result<PipelineMessage, String> {
    let row_error = match RawRow::decode(bytes) {
        Ok(row) => {
            supported_version(row.v)?;
            if row.file.is_empty() || row.line == 0 || row.line > i64::MAX as u64 {
                return Err(format!(
                    "message names no valid source (file {:?}, line {})",
                    row.file.chars().take(80).collect::<String>(),
                    row.line
                ));
            }
            return Ok(PipelineMessage::Row(row));
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

    #[test]
    fn raw_row_round_trips_through_json() {
        let row = RawRow {
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
        };
        assert_eq!(RawRow::decode(&row.encode()).unwrap(), row);
        assert_eq!(row.canonical_csv(), b"\"e,1\",,,,,\"\"\"q\"\"\"".to_vec());
        assert_eq!(
            decode_pipeline_message(&row.encode()),
            Ok(PipelineMessage::Row(row))
        );
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
    }
}
