//! Streams a CSV file into [`RawRow`]s: header mapping, field counts and UTF-8, in bounded memory.
//!
//! The rules it applies (the contract's structural half): RFC 4180 quoting, LF or CRLF, an optional
//! UTF-8 BOM, blank lines ignored, a header naming the six columns in any order (case-insensitive,
//! surrounding spaces ignored, extra columns ignored). Values are passed on untouched; judging them
//! is [`crate::validate`]'s job.

mod splitter;

use splitter::RecordSplitter;

use crate::event::{Column, COLUMNS};
use crate::reason::RejectCode;
use crate::wire::{to_hex, Defect, RawRow, RowRef};
use std::borrow::Cow;
use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("failed to read {file} near line {line}: {source}")]
    Io {
        file: String,
        line: u64,
        #[source]
        source: std::io::Error,
    },
}

/// Caps that keep one hostile row from exhausting memory or the broker's message size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A record with more bytes of field data is rejected (`row_too_large`) and only its first
    /// `max_row_bytes` bytes are kept; reading it costs no more memory than that.
    pub max_row_bytes: usize,
    /// A field longer than this rejects its row (`field_too_large`).
    pub max_field_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_row_bytes: 256 * 1024,
            max_field_bytes: 64 * 1024,
        }
    }
}

/// The column of an exported quarantine that names the reject a row fixes.
pub const REJECT_ID_COLUMN: &str = "reject_id";

/// One row ready to publish: its message key and its payload.
#[derive(Debug, Clone)]
pub struct KeyedRow {
    /// The trimmed event_id, or `file:line` when the row has none to offer.
    pub key: String,
    pub row: RawRow,
    /// Where the row's bytes are in the file (its line end excluded).
    pub bytes: std::ops::Range<u64>,
    /// The reject this row fixes (see [`RowView::fixes`]).
    pub fixes: Option<i64>,
}

/// One row borrowed from the reader: valid until the next read.
#[derive(Debug, Clone)]
pub struct RowView<'r> {
    /// The trimmed event_id, or `file:line` when the row has none to offer.
    pub key: Cow<'r, str>,
    pub row: RowRef<'r>,
    /// Where the row's bytes are in the file (its line end excluded).
    pub bytes: std::ops::Range<u64>,
    /// The quarantined row this one fixes: its `reject_id`, from a file `quarantine export`
    /// wrote (the column of that name), so a fix resolves a reject that had no event_id.
    pub fixes: Option<i64>,
}

impl RowView<'_> {
    pub fn into_owned(self) -> KeyedRow {
        KeyedRow {
            key: self.key.into_owned(),
            row: self.row.to_raw_row(),
            bytes: self.bytes,
            fixes: self.fixes,
        }
    }
}

pub struct RowReader<R: Read> {
    records: RecordSplitter<R>,
    limits: Limits,
    file: String,
    file_id: String,
    landed_ms: i64,
    /// Where each canonical column sits in a record; `None` when the header lacks it.
    positions: [Option<usize>; 6],
    /// Where the `reject_id` column of an exported quarantine sits, if the header has one.
    reject_id_position: Option<usize>,
    header: Vec<String>,
    header_read: bool,
    /// The first line names none of the columns: it is data, and every line is rejected.
    headerless: bool,
    /// The record read as a header turned out to be a row, still to be handed out.
    first_is_a_row: bool,
    line: u64,
}

impl<R: Read> RowReader<R> {
    pub fn new(input: R, file: &str, file_id: &str, landed_ms: i64) -> Self {
        Self::with_limits(input, file, file_id, landed_ms, Limits::default())
    }

    pub fn with_limits(
        input: R,
        file: &str,
        file_id: &str,
        landed_ms: i64,
        limits: Limits,
    ) -> Self {
        RowReader {
            records: RecordSplitter::new(input, limits.max_row_bytes),
            limits,
            file: file.to_owned(),
            file_id: file_id.to_owned(),
            landed_ms,
            positions: [None; 6],
            reject_id_position: None,
            header: Vec::new(),
            header_read: false,
            headerless: false,
            first_is_a_row: false,
            line: 0,
        }
    }

    /// Columns of the contract the header does not name (known once the first row was read).
    pub fn missing_columns(&self) -> Vec<Column> {
        COLUMNS
            .into_iter()
            .filter(|column| self.positions[column.index()].is_none())
            .collect()
    }

    /// Reads the next record that is not blank; whitespace-only lines count as blank.
    fn read_record(&mut self) -> Result<bool, ReadError> {
        loop {
            let line = self.records.next_record().map_err(|source| ReadError::Io {
                file: self.file.clone(),
                line: self.line,
                source,
            })?;
            let Some(line) = line else {
                return Ok(false);
            };
            self.line = line;
            let blank = self.records.len() == 1
                && self
                    .records
                    .field(0)
                    .is_some_and(|f| f.trim_ascii().is_empty());
            if !blank {
                return Ok(true);
            }
        }
    }

    fn read_header(&mut self) -> Result<bool, ReadError> {
        self.header_read = true;
        if !self.read_record()? {
            return Ok(false);
        }
        for (index, cell) in self.records.iter().enumerate() {
            // A BOM split across the first reads reaches us here rather than in the splitter.
            let cell = String::from_utf8_lossy(cell)
                .trim_start_matches('\u{feff}')
                .to_owned();
            if let Some(column) = Column::from_header(&cell) {
                // The first column of a name wins; a repeated name is just an extra column.
                self.positions[column.index()].get_or_insert(index);
            } else if cell.trim().eq_ignore_ascii_case(REJECT_ID_COLUMN) {
                self.reject_id_position.get_or_insert(index);
            }
            self.header.push(cell.trim().to_owned());
        }
        // A header names at least one column; a first line that names none is a row of a file
        // written without one, accounted for like every other line.
        if self.positions.iter().all(Option::is_none) {
            self.headerless = true;
            self.first_is_a_row = true;
        }
        Ok(true)
    }

    /// Whether the file has no header (its first line names none of the columns).
    pub fn is_headerless(&self) -> bool {
        self.headerless
    }

    /// The next data row, or `None` at the end of the file.
    pub fn next_row(&mut self) -> Result<Option<KeyedRow>, ReadError> {
        Ok(self.next_view()?.map(RowView::into_owned))
    }

    /// The next data row borrowed from the reader's buffer (no copy of its values), or `None` at
    /// the end of the file.
    pub fn next_view(&mut self) -> Result<Option<RowView<'_>>, ReadError> {
        if !self.header_read && !self.read_header()? {
            return Ok(None);
        }
        if std::mem::take(&mut self.first_is_a_row) {
            // The record in the splitter is the first line, read as a header and found a row.
        } else if !self.read_record()? {
            return Ok(None);
        }
        let line = self.line;
        let defect = self.defect();
        // An oversized row travels as its defect alone, so the message stays small.
        let values = match &defect {
            Some(d) if d.code.is_size_cap() => [None; 6],
            _ => COLUMNS.map(|column| {
                self.positions[column.index()]
                    .and_then(|index| self.records.field(index))
                    .and_then(|bytes| std::str::from_utf8(bytes).ok())
            }),
        };
        let key = match values[Column::EventId.index()].map(str::trim) {
            Some(id) if !id.is_empty() => Cow::Borrowed(id),
            _ => Cow::Owned(format!("{}:{line}", self.file)),
        };
        let row = RowRef {
            file: &self.file,
            file_id: &self.file_id,
            line,
            landed_ms: self.landed_ms,
            values,
            defect,
        };
        let fixes = self
            .reject_id_position
            .and_then(|index| self.records.field(index))
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .and_then(|text| text.trim().parse::<i64>().ok())
            .filter(|id| *id > 0);
        Ok(Some(RowView {
            key,
            row,
            bytes: self.records.record_range.clone(),
            fixes,
        }))
    }

    fn defect(&self) -> Option<Defect> {
        if self.records.oversized {
            return Some(self.oversized_defect());
        }
        let (code, reason) = self.shape_problem()?;
        Some(Defect {
            code,
            reason,
            raw_hex: to_hex(&self.record_as_csv()),
        })
    }

    /// Only a prefix of an oversized record was kept: that prefix is its raw.
    fn oversized_defect(&self) -> Defect {
        Defect {
            code: RejectCode::RowTooLarge,
            reason: format!(
                "row has {} bytes of fields, the limit is {}; raw keeps the first {} bytes of field data",
                self.records.record_bytes,
                self.limits.max_row_bytes,
                self.records.kept_prefix().len()
            ),
            raw_hex: to_hex(self.records.kept_prefix()),
        }
    }

    /// The first thing wrong with the record's shape or bytes, in the order the contract checks.
    fn shape_problem(&self) -> Option<(RejectCode, String)> {
        let problem = if self.headerless {
            (
                RejectCode::MissingHeader,
                format!(
                    "the file has no header: its first line names none of the columns {}; every line is rejected",
                    COLUMNS.map(Column::name).join(", ")
                ),
            )
        } else if self.records.len() != self.header.len() {
            (
                RejectCode::FieldCount,
                format!(
                    "row has {} fields, header has {}",
                    self.records.len(),
                    self.header.len()
                ),
            )
        } else if let Some((index, field)) = self
            .records
            .iter()
            .enumerate()
            .find(|(_, field)| field.len() > self.limits.max_field_bytes)
        {
            (
                RejectCode::FieldTooLarge,
                format!(
                    "field `{}`: {} bytes, the limit is {}",
                    self.header[index],
                    field.len(),
                    self.limits.max_field_bytes
                ),
            )
        } else {
            let bad = self
                .records
                .iter()
                .position(|field| std::str::from_utf8(field).is_err())?;
            (
                RejectCode::InvalidUtf8,
                format!("field `{}`: invalid UTF-8", self.header[bad]),
            )
        };
        Some(problem)
    }

    /// The current record written back as one CSV line (no line end): a rejected row's `raw`.
    fn record_as_csv(&self) -> Vec<u8> {
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::Any(b'\n'))
            .from_writer(Vec::new());
        // Writing to a Vec cannot fail.
        let _ = writer.write_record(self.records.iter());
        let mut raw = writer.into_inner().unwrap_or_default();
        raw.pop();
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::splitter::SCRATCH_BYTES;
    use super::*;
    use crate::wire::from_hex;

    fn rows(input: &[u8]) -> Vec<KeyedRow> {
        let mut reader = RowReader::new(input, "f.csv", "id", 0);
        let mut rows = Vec::new();
        while let Some(row) = reader.next_row().unwrap() {
            rows.push(row);
        }
        rows
    }

    const HEADER: &str = "event_id,user_id,event_type,product_id,price,event_time";

    #[test]
    fn maps_header_in_any_order_case_and_spaces_with_extra_columns() {
        let input = b" Price ,EXTRA,event_time, EVENT_ID,user_id,Event_Type,product_id\n1.50,x,2026-01-01T00:00:00Z,e1,7,view,9\n";
        let rows = rows(input);
        assert_eq!(rows.len(), 1);
        let row = &rows[0].row;
        assert_eq!(rows[0].key, "e1");
        assert_eq!(row.value(Column::EventId), Some("e1"));
        assert_eq!(row.value(Column::Price), Some("1.50"));
        assert_eq!(row.value(Column::EventTime), Some("2026-01-01T00:00:00Z"));
        assert_eq!(row.value(Column::ProductId), Some("9"));
        assert_eq!(row.line, 2);
        assert!(row.defect.is_none());
    }

    #[test]
    fn accepts_bom_crlf_quotes_and_skips_blank_lines() {
        let input = format!(
            "\u{feff}{HEADER}\r\n\r\n\"e,1\",1,view,2,3.00,\"2026-01-01 00:00:00\"\r\n   \r\n\"multi\nline\",1,view,2,3,2026-01-01T00:00:00Z"
        );
        let rows = rows(input.as_bytes());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key, "e,1");
        assert_eq!(rows[0].row.line, 3);
        assert_eq!(rows[1].key, "multi\nline");
        assert_eq!(rows[1].row.line, 5);
        assert!(rows.iter().all(|r| r.row.defect.is_none()));
    }

    /// Hands out one byte per read, so every record straddles buffer refills.
    struct OneByteAtATime<'a>(&'a [u8]);

    impl Read for OneByteAtATime<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            out[0] = *first;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn line_numbers_survive_refills_and_multiline_fields() {
        let input =
            format!("\u{feff}{HEADER}\r\n\r\n\"a\r\nb\",1,view,2,3,x\r\n\n\nlast,1,view,2,3,y");
        let mut reader = RowReader::new(OneByteAtATime(input.as_bytes()), "f.csv", "id", 0);
        let first = reader.next_row().unwrap().unwrap();
        let second = reader.next_row().unwrap().unwrap();
        assert!(reader.next_row().unwrap().is_none());
        assert_eq!((first.key.as_str(), first.row.line), ("a\r\nb", 3));
        assert_eq!((second.key.as_str(), second.row.line), ("last", 7));
        assert_eq!(second.row.value(Column::EventTime), Some("y"));
    }

    #[test]
    fn lone_cr_and_mixed_line_endings_give_every_row_its_own_line() {
        let input = format!(
            "{HEADER}\ra,1,view,2,3,x\rb,1,view,2,3,x\r\rc,1,view,2,3,x\r\nd,1,view,2,3,x\n\re,1,view,2,3,x\r"
        );
        for whole in [true, false] {
            let lines: Vec<(String, u64)> = if whole {
                rows(input.as_bytes())
                    .into_iter()
                    .map(|r| (r.key, r.row.line))
                    .collect()
            } else {
                let mut reader = RowReader::new(OneByteAtATime(input.as_bytes()), "f.csv", "id", 0);
                std::iter::from_fn(|| reader.next_row().unwrap())
                    .map(|r| (r.key, r.row.line))
                    .collect()
            };
            let expected =
                [("a", 2), ("b", 3), ("c", 5), ("d", 6), ("e", 8)].map(|(k, l)| (k.to_owned(), l));
            assert_eq!(lines, expected, "one buffer: {whole}");
        }
    }

    #[test]
    fn byte_ranges_point_at_each_row_in_the_file() {
        let input = format!(
            "\u{feff}{HEADER}\r\n\na,1,view,2,3,x\r\n\"b\nb\",1,view,2,3,x\nlast,1,view,2,3,y"
        );
        let bytes = input.as_bytes();
        let slices: Vec<&str> = rows(bytes)
            .iter()
            .map(|row| {
                std::str::from_utf8(&bytes[row.bytes.start as usize..row.bytes.end as usize])
                    .unwrap()
            })
            .collect();
        assert_eq!(
            slices,
            [
                "a,1,view,2,3,x",
                "\"b\nb\",1,view,2,3,x",
                "last,1,view,2,3,y"
            ]
        );
    }

    #[test]
    fn missing_column_is_reported_and_left_empty() {
        let input = b"event_id,user_id,event_type,product_id,event_time\ne1,1,view,2,2026-01-01T00:00:00Z\n";
        let mut reader = RowReader::new(&input[..], "f.csv", "id", 0);
        let row = reader.next_row().unwrap().unwrap();
        assert_eq!(reader.missing_columns(), vec![Column::Price]);
        assert_eq!(row.row.value(Column::Price), None);
    }

    #[test]
    fn wrong_field_count_is_a_defect_with_the_raw_row() {
        let input = format!("{HEADER}\ne1,1,view,2\n");
        let rows = rows(input.as_bytes());
        let defect = rows[0].row.defect.as_ref().unwrap();
        assert_eq!(defect.code, RejectCode::FieldCount);
        assert_eq!(defect.reason, "row has 4 fields, header has 6");
        assert_eq!(from_hex(&defect.raw_hex).unwrap(), b"e1,1,view,2");
    }

    #[test]
    fn invalid_utf8_keeps_every_byte() {
        let mut input = format!("{HEADER}\ne1,1,view,2,").into_bytes();
        input.extend_from_slice(b"9\xff\x00,2026-01-01T00:00:00Z\n");
        let rows = rows(&input);
        let defect = rows[0].row.defect.as_ref().unwrap();
        assert_eq!(defect.code, RejectCode::InvalidUtf8);
        assert_eq!(defect.reason, "field `price`: invalid UTF-8");
        assert_eq!(
            from_hex(&defect.raw_hex).unwrap(),
            b"e1,1,view,2,9\xff\x00,2026-01-01T00:00:00Z".to_vec()
        );
        assert_eq!(rows[0].row.value(Column::Price), None);
    }

    #[test]
    fn oversized_rows_and_fields_are_defects_and_memory_stays_capped() {
        let limits = Limits {
            max_row_bytes: 1_000,
            max_field_bytes: 100,
        };
        // An unbalanced quote swallows the rest of a 5 MB file into one field.
        let mut input = format!("{HEADER}\ne1,1,view,2,3,\"").into_bytes();
        input.extend(std::iter::repeat_n(b'x', 5_000_000));
        let mut reader = RowReader::with_limits(&input[..], "f.csv", "id", 0, limits);
        let row = reader.next_row().unwrap().unwrap();
        let defect = row.row.defect.unwrap();
        assert_eq!(defect.code, RejectCode::RowTooLarge);
        assert!(
            defect.reason.contains("the limit is 1000"),
            "{}",
            defect.reason
        );
        assert_eq!(from_hex(&defect.raw_hex).unwrap().len(), 1_000);
        assert!(row.row.values.iter().all(Option::is_none));
        assert_eq!(row.key, "f.csv:2");
        assert!(reader.records.fields.len() <= 1_000 + SCRATCH_BYTES);
        assert!(reader.next_row().unwrap().is_none());

        let input = format!(
            "{HEADER}\ne1,1,view,2,{},2026-01-01T00:00:00Z\ne2,1,view,2,3,2026-01-01T00:00:00Z\n",
            "9".repeat(500)
        );
        let mut reader = RowReader::with_limits(input.as_bytes(), "f.csv", "id", 0, limits);
        let big = reader.next_row().unwrap().unwrap().row.defect.unwrap();
        assert_eq!(big.code, RejectCode::FieldTooLarge);
        assert_eq!(big.reason, "field `price`: 500 bytes, the limit is 100");
        let next = reader.next_row().unwrap().unwrap();
        assert!(next.row.defect.is_none());
        assert_eq!(next.row.line, 3, "reading goes on after an oversized row");
    }

    #[test]
    fn empty_and_header_only_files_have_no_rows() {
        assert!(rows(b"").is_empty());
        assert!(rows(HEADER.as_bytes()).is_empty());
    }

    #[test]
    fn row_without_event_id_is_keyed_by_file_and_line() {
        let input = format!("{HEADER}\n ,1,view,2,3,2026-01-01T00:00:00Z");
        assert_eq!(rows(input.as_bytes())[0].key, "f.csv:2");
    }

    #[test]
    fn a_file_without_a_header_has_every_line_rejected_the_first_included() {
        let three = rows(b"e1,1,view,2,3.00,2026-01-01T00:00:00Z\ne2,1,view,2,3.00,2026-01-01T00:00:00Z\ne3,1,view,2,3.00,2026-01-01T00:00:00Z\n");
        assert_eq!(three.len(), 3);
        assert_eq!(
            three.iter().map(|r| r.row.line).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for row in &three {
            let defect = row.row.defect.as_ref().expect("rejected");
            assert_eq!(defect.code, RejectCode::MissingHeader);
            assert!(defect.reason.contains("no header"), "{}", defect.reason);
            assert_eq!(row.key, format!("f.csv:{}", row.row.line));
        }
        assert_eq!(
            from_hex(&three[0].row.defect.as_ref().unwrap().raw_hex).unwrap(),
            b"e1,1,view,2,3.00,2026-01-01T00:00:00Z"
        );
        let one = rows(b"e1,1,view,2,3.00,2026-01-01T00:00:00Z");
        assert_eq!(
            one.len(),
            1,
            "a one-line headerless file is one rejected row"
        );
        // A header naming only some columns is still a header: its rows lack columns.
        assert!(rows(b"event_id,whatever\ne1,x\n")[0].row.defect.is_none());
    }

    #[test]
    fn a_reject_id_column_names_the_reject_a_row_fixes() {
        let csv = "event_id,user_id,event_type,product_id,price,event_time,Reject_ID\n\
                   a,1,view,1,1.00,2026-01-01T00:00:00Z,42\n\
                   b,1,view,1,1.00,2026-01-01T00:00:00Z,\n\
                   c,1,view,1,1.00,2026-01-01T00:00:00Z,x\n";
        let mut reader = RowReader::new(csv.as_bytes(), "f.csv", "id", 0);
        let fixes: Vec<Option<i64>> = std::iter::from_fn(|| reader.next_row().unwrap())
            .map(|row| row.fixes)
            .collect();
        assert_eq!(fixes, [Some(42), None, None]);
    }
}
