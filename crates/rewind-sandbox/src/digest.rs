//! Order-independent digests of a site's slice of a table: the row count and the wrapping sum of
//! a 128-bit hash of every row. Adding or removing a row updates the digest in O(1), so the
//! system can record, at every write, what each site's data must be (the ledger), and the
//! verifier can recompute it from the live stores without replaying anything.
//!
//! Used by the writer (the ledger) and the verifier, never by point-in-time restore.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::value::Val;

/// The hash of one row of `table`: SHA-256 over a length-prefixed encoding of the table name and
/// every value, truncated to 128 bits.
pub fn row_hash(table: &str, values: &[Val]) -> u128 {
    let mut h = Sha256::new();
    h.update((table.len() as u32).to_be_bytes());
    h.update(table.as_bytes());
    for v in values {
        match v {
            Val::Int(i) => {
                h.update(b"i");
                h.update(i.to_be_bytes());
            }
            Val::Text(s) => {
                h.update(b"t");
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    let out = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_be_bytes(first)
}

/// Row count and sum of row hashes of a set of rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SliceDigest {
    /// Number of rows.
    pub rows: u64,
    /// Wrapping sum of [`row_hash`] of every row.
    pub sum: u128,
}

impl SliceDigest {
    /// Adds a row's hash.
    pub fn add(&mut self, h: u128) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(h);
    }

    /// Removes a row's hash.
    pub fn remove(&mut self, h: u128) {
        self.rows = self.rows.saturating_sub(1);
        self.sum = self.sum.wrapping_sub(h);
    }

    /// The sum as 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }

    /// Parses [`SliceDigest::hex`] output.
    pub fn parse_hex(rows: u64, hex: &str) -> Option<Self> {
        if hex.len() != 32 {
            return None;
        }
        u128::from_str_radix(hex, 16).ok().map(|sum| Self { rows, sum })
    }
}

impl fmt::Display for SliceDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows, digest {}", self.rows, &self.hex()[..12])
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// SHA-256 of bytes as 64 hex digits (content addresses of media blobs).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_order_independent_and_reversible() {
        let a = row_hash("issues", &[Val::from("1"), Val::from("s"), Val::Int(3)]);
        let b = row_hash("issues", &[Val::from("2"), Val::from("s"), Val::Int(3)]);
        let mut x = SliceDigest::default();
        x.add(a);
        x.add(b);
        let mut y = SliceDigest::default();
        y.add(b);
        y.add(a);
        assert_eq!(x, y);
        y.remove(a);
        y.remove(b);
        assert_eq!(y, SliceDigest::default());
        assert_eq!(SliceDigest::parse_hex(2, &x.hex()), Some(x));
        // A text "3" and an integer 3 hash differently; so do the same values in another table.
        assert_ne!(a, row_hash("issues", &[Val::from("1"), Val::from("s"), Val::from("3")]));
        assert_ne!(a, row_hash("comments", &[Val::from("1"), Val::from("s"), Val::Int(3)]));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
