//! CSV bytes split into records, each with the line it starts on and its byte range, in
//! bounded memory.

use std::io::Read;

/// Fields per record beyond which a record counts as too large.
const MAX_FIELDS: usize = 4096;
/// Room past the cap where an oversized record's further bytes are written and overwritten.
pub(super) const SCRATCH_BYTES: usize = 64 * 1024;

/// Splits CSV bytes into records, knowing the line each record starts on.
///
/// Built on csv-core rather than `csv::Reader` because the latter reports positions from where it
/// started parsing, before skipped blank lines and CRLF tails, so its line numbers drift.
pub(super) struct RecordSplitter<R: Read> {
    input: R,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
    at_file_start: bool,
    core: csv_core::Reader,
    /// Line of the next unread byte, 1-based. Lines end at LF, CRLF or a lone CR, as csv-core's
    /// records do, so every record gets its own line number.
    line: u64,
    /// The last byte read was a CR: a line end, unless an LF follows (then the LF is the end).
    pending_cr: bool,
    /// File offset of `buffer[0]`.
    base: u64,
    /// Byte range of the last record in the file, its line end excluded.
    pub(super) record_range: std::ops::Range<u64>,
    pub(super) fields: Vec<u8>,
    ends: Vec<usize>,
    field_count: usize,
    max_bytes: usize,
    /// The current record went past `max_bytes` or `MAX_FIELDS`; only its prefix was kept.
    pub(super) oversized: bool,
    /// Field bytes of the current record, including those not kept.
    pub(super) record_bytes: usize,
    kept_bytes: usize,
}

impl<R: Read> RecordSplitter<R> {
    pub(super) fn new(input: R, max_bytes: usize) -> Self {
        RecordSplitter {
            input,
            buffer: vec![0; 64 * 1024].into_boxed_slice(),
            start: 0,
            end: 0,
            eof: false,
            at_file_start: true,
            core: csv_core::Reader::new(),
            line: 1,
            pending_cr: false,
            base: 0,
            record_range: 0..0,
            fields: vec![0; 1024],
            ends: vec![0; 16],
            field_count: 0,
            max_bytes,
            oversized: false,
            record_bytes: 0,
            kept_bytes: 0,
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        if self.start < self.end || self.eof {
            return Ok(());
        }
        self.base += self.end as u64;
        self.start = 0;
        self.end = loop {
            match self.input.read(&mut self.buffer) {
                Ok(read) => break read,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        };
        self.eof = self.end == 0;
        if self.at_file_start {
            self.at_file_start = false;
            if self.buffer[..self.end].starts_with(b"\xEF\xBB\xBF") {
                self.start = 3;
            }
        }
        Ok(())
    }

    /// Reads the next record; returns the line it starts on, or `None` at the end. One loop over
    /// csv-core's results: split up, the buffer and line invariants would be spread over several.
    pub(super) fn next_record(&mut self) -> std::io::Result<Option<u64>> {
        // Skip blank lines ourselves so the start line is exact.
        loop {
            self.fill()?;
            if self.start == self.end {
                return Ok(None);
            }
            let byte = self.buffer[self.start];
            if byte != b'\n' && byte != b'\r' {
                break;
            }
            self.count_lines(self.start, self.start + 1);
            self.start += 1;
        }
        if std::mem::take(&mut self.pending_cr) {
            self.line += 1;
        }
        let start_line = self.line;
        let start_offset = self.base + self.start as u64;
        let (mut out, mut ends) = (0, 0);
        self.oversized = false;
        self.record_bytes = 0;
        loop {
            self.fill()?;
            let input = &self.buffer[self.start..self.end];
            let (result, read, written, ended) =
                self.core
                    .read_record(input, &mut self.fields[out..], &mut self.ends[ends..]);
            self.count_lines(self.start, self.start + read);
            self.start += read;
            out += written;
            ends += ended;
            self.record_bytes += written;
            match result {
                csv_core::ReadRecordResult::InputEmpty => {}
                csv_core::ReadRecordResult::OutputFull => {
                    let limit = self.max_bytes + SCRATCH_BYTES;
                    if self.fields.len() < limit {
                        let grown = (self.fields.len() * 2).min(limit);
                        self.fields.resize(grown, 0);
                    } else {
                        // Keep the first max_bytes; let the rest overwrite the scratch room.
                        self.oversized = true;
                        out = self.max_bytes;
                    }
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    if self.ends.len() < MAX_FIELDS {
                        let grown = self.ends.len() * 2;
                        self.ends.resize(grown, 0);
                    } else {
                        self.oversized = true;
                        ends = MAX_FIELDS / 2;
                    }
                }
                csv_core::ReadRecordResult::Record => {
                    // The range ends before the line end that closed the record, if any.
                    let ended_by_terminator =
                        read > 0 && matches!(self.buffer[self.start - 1], b'\n' | b'\r');
                    let end = self.start - usize::from(ended_by_terminator);
                    self.record_range = start_offset..self.base + end as u64;
                    self.oversized |= self.record_bytes > self.max_bytes;
                    self.kept_bytes = out.min(self.max_bytes);
                    self.field_count = if self.oversized { 0 } else { ends };
                    return Ok(Some(start_line));
                }
                csv_core::ReadRecordResult::End => return Ok(None),
            }
        }
    }

    /// Moves `line` past the buffered bytes `from..to`.
    fn count_lines(&mut self, from: usize, to: usize) {
        for &byte in &self.buffer[from..to] {
            if std::mem::take(&mut self.pending_cr) && byte != b'\n' {
                self.line += 1;
            }
            match byte {
                b'\n' => self.line += 1,
                b'\r' => self.pending_cr = true,
                _ => {}
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.field_count
    }

    /// The kept bytes of an oversized record's fields (separators and quoting are not kept).
    pub(super) fn kept_prefix(&self) -> &[u8] {
        &self.fields[..self.kept_bytes]
    }

    pub(super) fn field(&self, index: usize) -> Option<&[u8]> {
        if index >= self.field_count {
            return None;
        }
        let from = if index == 0 { 0 } else { self.ends[index - 1] };
        Some(&self.fields[from..self.ends[index]])
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.field_count).filter_map(|index| self.field(index))
    }
}
