//! Why a row or message did not become an event: one type from the reader's defects, through the
//! wire and the consumer's rules, to `reason_code` in `ecommerce_events_rejected`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The file's first line names none of the six columns: the file has no header.
    MissingHeader,
    /// The header lacks one of the six columns.
    MissingColumn,
    /// The row has more or fewer fields than the header.
    FieldCount,
    /// A field is not UTF-8.
    InvalidUtf8,
    /// The row is larger than `--max-row-bytes`.
    RowTooLarge,
    /// A field is larger than `--max-field-bytes`.
    FieldTooLarge,
    /// The row's message would be larger than the broker takes; quarantined by reference.
    TooLarge,
    /// A compressed file's stream does not decode (truncated, corrupt, or not in the format its
    /// name says): the whole file is this one reject, and none of its rows is published.
    UndecodableFile,
    /// A value breaks the contract's rules.
    InvalidField,
    /// Older than its partition's watermark, under `--late-policy quarantine`.
    Late,
    /// Dated further ahead of the consumer's clock than `--max-future` allows.
    Future,
    /// A message that is not a row written by the bridge.
    Undecodable,
    /// Valid by the contract, refused by the database (a constraint an operator added, say).
    Database,
    /// Dated before the retention horizon: events of that time were dropped by retention.
    Expired,
}

impl RejectCode {
    /// Every code, in the order the migrations list them.
    pub const ALL: [RejectCode; 14] = [
        RejectCode::MissingColumn,
        RejectCode::FieldCount,
        RejectCode::InvalidUtf8,
        RejectCode::RowTooLarge,
        RejectCode::FieldTooLarge,
        RejectCode::TooLarge,
        RejectCode::InvalidField,
        RejectCode::Late,
        RejectCode::Future,
        RejectCode::Undecodable,
        RejectCode::Database,
        RejectCode::MissingHeader,
        RejectCode::UndecodableFile,
        RejectCode::Expired,
    ];

    /// The code as stored in `reason_code` and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::MissingHeader => "missing_header",
            RejectCode::MissingColumn => "missing_column",
            RejectCode::FieldCount => "field_count",
            RejectCode::InvalidUtf8 => "invalid_utf8",
            RejectCode::RowTooLarge => "row_too_large",
            RejectCode::FieldTooLarge => "field_too_large",
            RejectCode::TooLarge => "too_large",
            RejectCode::UndecodableFile => "undecodable_file",
            RejectCode::InvalidField => "invalid_field",
            RejectCode::Late => "late",
            RejectCode::Future => "future",
            RejectCode::Undecodable => "undecodable",
            RejectCode::Database => "database",
            RejectCode::Expired => "expired",
        }
    }

    /// Whether a reader finds this defect in a file, so a row on the wire may carry it. The
    /// others (`late`, `future`, `database`, ...) are the consumer's own findings: a message that
    /// claims one is not a bridge's, and must not decide any row's fate.
    pub fn is_found_by_reader(self) -> bool {
        matches!(
            self,
            RejectCode::MissingHeader
                | RejectCode::FieldCount
                | RejectCode::InvalidUtf8
                | RejectCode::RowTooLarge
                | RejectCode::FieldTooLarge
                | RejectCode::TooLarge
                | RejectCode::UndecodableFile
        )
    }

    /// The code stored as `text`, if it is one of ours.
    pub fn from_stored(text: &str) -> Option<RejectCode> {
        RejectCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }

    /// A row over a size cap travels as its defect alone, so its message stays small.
    pub fn is_size_cap(self) -> bool {
        matches!(self, RejectCode::RowTooLarge | RejectCode::FieldTooLarge)
    }
}

/// A code read back from `reason_code`.
impl TryFrom<String> for RejectCode {
    type Error = String;

    fn try_from(text: String) -> Result<RejectCode, String> {
        RejectCode::from_stored(&text).ok_or_else(|| format!("unknown reason code {text:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_names_are_the_stored_codes() {
        for code in RejectCode::ALL {
            assert_eq!(RejectCode::from_stored(code.as_str()), Some(code));
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    /// The newest comment on `reason_code` in the migrations lists exactly these codes, so the
    /// table documents what it can hold.
    #[test]
    fn the_migrations_list_exactly_these_codes() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        let marker = "COMMENT ON COLUMN ecommerce_events_rejected.reason_code IS";
        let comment = files
            .iter()
            .rev()
            .find_map(|file| {
                let sql = std::fs::read_to_string(file).unwrap();
                let at = sql.rfind(marker)?;
                let text = &sql[at + marker.len()..];
                Some(text[..text.find(';')?].to_owned())
            })
            .expect("a migration comments reason_code");
        // Adjacent SQL string literals concatenate: join them, then split the list.
        let listed: Vec<String> = comment
            .split('\'')
            .skip(1)
            .step_by(2)
            .collect::<String>()
            .split(',')
            .map(|code| code.trim().to_owned())
            .collect();
        let known: Vec<String> = RejectCode::ALL.map(|c| c.as_str().to_owned()).into();
        assert_eq!(listed, known);
    }
}
