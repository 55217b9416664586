//! A data file's content: its rows' bytes, read through the decompression its name says
//! (`*.csv`, `*.csv.gz`, `*.csv.zst`, any case), streamed, never held whole.
//!
//! Lines, the content's identity and a `too_large` row's byte range all refer to the
//! decompressed bytes, so a compressed file and the same rows uncompressed are the same content.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// How a data file's bytes are stored, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

impl Compression {
    /// The suffixes of data files, longest first, each with its compression.
    const SUFFIXES: [(&'static str, Compression); 3] = [
        (".csv.gz", Compression::Gzip),
        (".csv.zst", Compression::Zstd),
        (".csv", Compression::Plain),
    ];

    /// A data file's compression, or `None` when the name is not a data file's (any case).
    pub fn of_name(name: &str) -> Option<Compression> {
        Self::split_name(name).map(|(_, _, compression)| compression)
    }

    /// The name as its stem and its data suffix (kept as written), with the compression.
    pub fn split_name(name: &str) -> Option<(&str, &str, Compression)> {
        Self::SUFFIXES
            .into_iter()
            .find_map(|(suffix, compression)| {
                let at = name.len().checked_sub(suffix.len())?;
                let tail = name.get(at..)?;
                (at > 0 && tail.eq_ignore_ascii_case(suffix))
                    .then(|| (&name[..at], tail, compression))
            })
    }

    fn name(self) -> &'static str {
        match self {
            Compression::Plain => "plain",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Whether the last byte of the file says anything about its last line (only a plain file's).
    pub fn shows_line_ends(self) -> bool {
        self == Compression::Plain
    }
}

/// The content of `file` as a reader of decompressed bytes. Decoding errors surface from
/// `read` as [`DecodeError`]s inside `io::Error`s (see [`DecodeError::from_io`]).
pub fn reader(file: File, compression: Compression) -> io::Result<Box<dyn Read + Send>> {
    let counted = Counted::new(file);
    let position = counted.position.clone();
    let decoded: Box<dyn Read + Send> = match compression {
        Compression::Plain => return Ok(Box::new(counted)),
        // Concatenated members are one stream, as `gzip -d` reads them.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(counted)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(counted)?),
    };
    Ok(Box::new(Decoding {
        inner: decoded,
        compression,
        position,
        content_bytes: 0,
        lines: 1,
    }))
}

/// Opens `path` (a regular file, never following a symlink) for its content.
pub fn open(path: &Path, compression: Compression) -> io::Result<Box<dyn Read + Send>> {
    reader(crate::folder::open_regular(path)?, compression)
}

/// Where a compressed stream stopped decoding.
#[derive(Debug, thiserror::Error)]
#[error("the {compression} stream does not decode at byte {at_byte} of the file (line {line} of its content, after {content_bytes} bytes): {cause}")]
pub struct DecodeError {
    pub compression: &'static str,
    /// Compressed bytes the decoder had taken when it failed.
    pub at_byte: u64,
    pub content_bytes: u64,
    pub line: u64,
    pub cause: String,
}

impl DecodeError {
    /// The decoding failure inside `error`, if it is one.
    pub fn from_io(error: &io::Error) -> Option<&DecodeError> {
        error.get_ref()?.downcast_ref::<DecodeError>()
    }
}

/// Counts the bytes read from the file, for where a decoder failed.
struct Counted<R> {
    inner: R,
    position: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R> Counted<R> {
    fn new(inner: R) -> Self {
        Counted {
            inner,
            position: Default::default(),
        }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.position
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// A decoder whose failures say where they happened. An I/O error of the file itself passes
/// through as it is.
struct Decoding {
    inner: Box<dyn Read + Send>,
    compression: Compression,
    position: std::sync::Arc<std::sync::atomic::AtomicU64>,
    content_bytes: u64,
    lines: u64,
}

impl Read for Decoding {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.content_bytes += n as u64;
                self.lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                Ok(n)
            }
            Err(error) if is_decoding(&error) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                DecodeError {
                    compression: self.compression.name(),
                    at_byte: self.position.load(std::sync::atomic::Ordering::Relaxed),
                    content_bytes: self.content_bytes,
                    line: self.lines,
                    cause: match error.kind() {
                        io::ErrorKind::UnexpectedEof => "the stream ends early".to_owned(),
                        _ => error.to_string(),
                    },
                },
            )),
            Err(error) => Err(error),
        }
    }
}

/// Whether a decoder's error is about the stream (not the file's own I/O).
fn is_decoding(error: &io::Error) -> bool {
    error.raw_os_error().is_none()
        && matches!(
            error.kind(),
            io::ErrorKind::InvalidData
                | io::ErrorKind::InvalidInput
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::Other
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn read_all(bytes: Vec<u8>, compression: Compression) -> io::Result<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, bytes).unwrap();
        let mut out = Vec::new();
        open(&path, compression)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn data_names_keep_their_suffix_in_any_case() {
        assert_eq!(
            Compression::split_name("a.b.CSV.Gz"),
            Some(("a.b", ".CSV.Gz", Compression::Gzip))
        );
        assert_eq!(Compression::of_name("x.csv.zst"), Some(Compression::Zstd));
        assert_eq!(Compression::of_name("x.csv"), Some(Compression::Plain));
        for other in ["x.gz", "x.csv.bz2", ".csv", "x.zst", "csv"] {
            assert_eq!(Compression::of_name(other), None, "{other}");
        }
    }

    #[test]
    fn gzip_and_zstd_decode_to_the_same_content() {
        let content = b"event_id\nx\ny\n".repeat(1000);
        assert_eq!(
            read_all(gzip(&content), Compression::Gzip).unwrap(),
            content
        );
        let zstd = zstd::encode_all(&content[..], 3).unwrap();
        assert_eq!(read_all(zstd, Compression::Zstd).unwrap(), content);
        // Two gzip members are one stream.
        let mut two = gzip(&content);
        two.extend(gzip(&content));
        assert_eq!(
            read_all(two, Compression::Gzip).unwrap().len(),
            2 * content.len()
        );
    }

    #[test]
    fn a_stream_that_does_not_decode_says_where() {
        let content = b"a\n".repeat(100_000);
        let mut truncated = gzip(&content);
        truncated.truncate(truncated.len() / 2);
        let error = read_all(truncated, Compression::Gzip).unwrap_err();
        let decode = DecodeError::from_io(&error).expect("a decoding error");
        assert!(decode.line > 1 && decode.at_byte > 0, "{decode}");
        assert!(decode.to_string().contains("gzip stream"), "{decode}");

        let error = read_all(b"id\n1\n".to_vec(), Compression::Gzip).unwrap_err();
        let decode = DecodeError::from_io(&error).expect("a decoding error");
        assert_eq!((decode.line, decode.content_bytes), (1, 0), "{decode}");
        let error = read_all(b"id\n1\n".to_vec(), Compression::Zstd).unwrap_err();
        assert!(DecodeError::from_io(&error).is_some(), "{error}");
    }
}
