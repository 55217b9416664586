//! Values made fit for PostgreSQL's TEXT columns, whatever a file or a foreign producer sent.
//!
//! PostgreSQL refuses NUL (0x00) in text, and a btree index entry larger than about 2.7 kB (the
//! rejected table's unique index covers the file name and identity). Either refusal would fail
//! the whole batch again on every retry, so every text value is made storable before it is sent:
//! NUL becomes the four characters `\x00`, and an indexed value longer than [`MAX_KEY_BYTES`] is
//! cut and suffixed with a hash of the whole, so distinct values stay distinct. Rust strings are
//! valid UTF-8 by construction; bytes that are not reach only BYTEA columns (`raw`, `kafka_key`).

use sha2::{Digest, Sha256};
use std::borrow::Cow;

/// Longest indexed text value kept whole, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Longest free-text value (a reason) kept whole, in bytes.
pub const MAX_TEXT_BYTES: usize = 8 * 1024;

/// `value` with NUL escaped, cut to [`MAX_TEXT_BYTES`].
pub fn text(value: &str) -> Cow<'_, str> {
    bounded(escape_nul(value), MAX_TEXT_BYTES)
}

/// `value` with NUL escaped, cut to [`MAX_KEY_BYTES`] plus a hash of the whole value.
pub fn key(value: &str) -> Cow<'_, str> {
    bounded(escape_nul(value), MAX_KEY_BYTES)
}

/// Hex SHA-256 of `bytes`, the first `chars` digits.
pub fn short_hash(bytes: &[u8], chars: usize) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = event_model::wire::to_hex(&digest);
    hex.truncate(chars);
    hex
}

fn escape_nul(value: &str) -> Cow<'_, str> {
    if value.contains('\0') {
        Cow::Owned(value.replace('\0', "\\x00"))
    } else {
        Cow::Borrowed(value)
    }
}

fn bounded(value: Cow<'_, str>, limit: usize) -> Cow<'_, str> {
    if value.len() <= limit {
        return value;
    }
    let mut cut = limit - 20;
    while !value.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = short_hash(value.as_bytes(), 16);
    Cow::Owned(format!("{}...#{hash}", &value[..cut]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_is_escaped_and_other_text_kept() {
        assert_eq!(text("a\0b"), "a\\x00b");
        assert!(matches!(text("plain ü"), Cow::Borrowed(_)));
    }

    #[test]
    fn long_keys_are_cut_but_stay_distinct() {
        let a = "x".repeat(10_000) + "a";
        let b = "x".repeat(10_000) + "b";
        assert!(key(&a).len() <= MAX_KEY_BYTES);
        assert_ne!(key(&a), key(&b));
        // Cut on a character boundary.
        let wide = "é".repeat(1_000);
        assert!(key(&wide).len() <= MAX_KEY_BYTES);
    }
}
