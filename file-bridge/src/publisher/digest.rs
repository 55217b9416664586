//! What names a file's content: the SHA-256 of its decompressed bytes, the identity every
//! message carries, and the checksum of a range that a reference row quotes.

use super::file_name;
use crate::content::{self, Compression};
use std::io::Read;
use std::path::Path;

/// A file's content: its SHA-256 (hex) and its size, both of the decompressed bytes.
pub(super) struct Digest {
    pub(super) sha256: String,
    pub(super) size: u64,
}

impl Digest {
    pub(super) fn of(content: Box<dyn Read + Send>) -> std::io::Result<Digest> {
        let mut counted = content.take(u64::MAX);
        let digest = sha256(&mut counted)?;
        Ok(Digest {
            sha256: event_model::wire::to_hex(&digest),
            size: u64::MAX - counted.limit(),
        })
    }
}

/// The file's identity: the first 128 bits of its SHA-256. Every message carries it, so it is
/// kept short: on 200,000 events the bridge reached 79% of the bare producer with all 64
/// characters and 84% with 32 (one run each, within this machine's noise, but never worse);
/// 128 bits keep a collision out of reach. The whole hash goes into the file's end message.
pub(super) fn content_id(content_sha256: &str) -> String {
    content_sha256[..32].to_owned()
}

/// The SHA-256 of `range` of the file's content.
pub(super) fn checksum_of(path: &Path, range: std::ops::Range<u64>) -> std::io::Result<String> {
    let compression = Compression::of_name(&file_name(path)).unwrap_or(Compression::Plain);
    let mut content = content::open(path, compression)?;
    std::io::copy(&mut (&mut content).take(range.start), &mut std::io::sink())?;
    let digest = sha256(content.take(range.end - range.start))?;
    Ok(event_model::wire::to_hex(&digest))
}

/// SHA-256 of everything `reader` yields.
fn sha256(mut reader: impl std::io::Read) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut reader, &mut hasher)?;
    Ok(hasher.finalize().into())
}
