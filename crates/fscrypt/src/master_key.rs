//! Master keys and their identifiers.
//!
//! A v2 master key is a raw secret of 16 to 64 bytes. Linux keeps only its HKDF pseudorandom key
//! and names it by a 16-byte identifier derived from it, which is what policies store; this type
//! does the same, so the raw bytes are wiped as soon as the key is constructed.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::hkdf::{CONTEXT_KEY_IDENTIFIER, HkdfKey};

/// Smallest raw master key Linux accepts.
pub const MIN_KEY_SIZE: usize = 16;
/// Largest raw master key Linux accepts.
pub const MAX_KEY_SIZE: usize = 64;
/// Size of a key identifier.
pub const KEY_IDENTIFIER_SIZE: usize = 16;

/// The identifier of a v2 master key: HKDF-SHA512(key, info = "fscrypt\0\x01"), 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyIdentifier(pub [u8; KEY_IDENTIFIER_SIZE]);

impl fmt::Display for KeyIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyIdentifier({self})")
    }
}

impl FromStr for KeyIdentifier {
    type Err = Error;

    /// Parses 32 hex digits (either case).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.len() != 2 * KEY_IDENTIFIER_SIZE || !s.is_ascii() {
            return Err(Error::invalid(
                "key identifier",
                "expected 32 hexadecimal digits",
            ));
        }
        let mut out = [0u8; KEY_IDENTIFIER_SIZE];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| Error::invalid("key identifier", "expected 32 hexadecimal digits"))?;
        }
        Ok(KeyIdentifier(out))
    }
}

/// A v2 master key, held as its HKDF pseudorandom key.
#[derive(Clone)]
pub struct MasterKey {
    hkdf: HkdfKey,
    raw_size: usize,
    identifier: KeyIdentifier,
}

impl MasterKey {
    /// Builds a master key from raw bytes (16 to 64 of them).
    pub fn from_raw(raw: &[u8]) -> Result<Self> {
        if !(MIN_KEY_SIZE..=MAX_KEY_SIZE).contains(&raw.len()) {
            return Err(Error::BadKeySize(raw.len()));
        }
        let hkdf = HkdfKey::extract(raw);
        let mut id = [0u8; KEY_IDENTIFIER_SIZE];
        hkdf.expand(CONTEXT_KEY_IDENTIFIER, &[], &mut id);
        Ok(MasterKey {
            hkdf,
            raw_size: raw.len(),
            identifier: KeyIdentifier(id),
        })
    }

    /// The key's identifier, as FS_IOC_ADD_ENCRYPTION_KEY returns it.
    pub fn identifier(&self) -> KeyIdentifier {
        self.identifier
    }

    /// Size of the raw key it was made from. A v2 key must be at least as long as the security
    /// strength of the modes it drives (Linux's `fscrypt_valid_master_key_size`).
    pub fn raw_size(&self) -> usize {
        self.raw_size
    }

    pub(crate) fn hkdf(&self) -> &HkdfKey {
        &self.hkdf
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({}, redacted)", self.identifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_matches_xfstests() {
        // xfstests TEST_RAW_KEY (bytes 1..=64), expected value from generic/580.out.
        let raw: Vec<u8> = (1..=64).collect();
        let key = MasterKey::from_raw(&raw).unwrap();
        assert_eq!(
            key.identifier().to_string(),
            "69b2f6edeee720cce0577937eb8a6751"
        );
        let raw32: Vec<u8> = (1..=32).collect();
        assert_eq!(
            MasterKey::from_raw(&raw32)
                .unwrap()
                .identifier()
                .to_string(),
            "0ce1cb43a5ed41b2b8b82349b30bb750"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(
            MasterKey::from_raw(&[0; 15]).unwrap_err(),
            Error::BadKeySize(15)
        );
        assert!(MasterKey::from_raw(&[0; 16]).is_ok());
        assert!(MasterKey::from_raw(&[0; 64]).is_ok());
        assert_eq!(
            MasterKey::from_raw(&[0; 65]).unwrap_err(),
            Error::BadKeySize(65)
        );
    }

    #[test]
    fn identifier_parse() {
        let id: KeyIdentifier = "69B2F6EDEEE720CCE0577937EB8A6751".parse().unwrap();
        assert_eq!(id.to_string(), "69b2f6edeee720cce0577937eb8a6751");
        assert!("69b2".parse::<KeyIdentifier>().is_err());
        assert!("zz".repeat(16).parse::<KeyIdentifier>().is_err());
        assert!("é".repeat(16).parse::<KeyIdentifier>().is_err());
    }

    #[test]
    fn debug_hides_secret() {
        let key = MasterKey::from_raw(&[0xab; 32]).unwrap();
        let text = format!("{key:?}");
        assert!(text.contains("redacted"));
        assert!(!text.contains("abab"));
    }
}
