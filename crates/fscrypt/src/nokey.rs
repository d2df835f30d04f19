//! No-key names: how an encrypted directory lists and looks up names without its key, as Linux's
//! `struct fscrypt_nokey_name` (`fs/crypto/fname.c`).
//!
//! The presented name is base64url (RFC 4648 alphabet `A-Z a-z 0-9 - _`, no `=` padding) of:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | `dirhash[0]`, the filesystem's hash of the entry (u32, host-endian; little-endian here) |
//! | 4..8 | `dirhash[1]`, its minor hash |
//! | 8..8+n | the ciphertext if it is at most 149 bytes (n = its length), else its first 149 bytes |
//! | 157..189 | only when abbreviated: SHA-256 of the ciphertext's bytes 149.. |
//!
//! So an unabbreviated name decodes to 9..=157 bytes and an abbreviated one to exactly 189,
//! which encodes to 252 characters, within NAME_MAX. Decoding accepts exactly what Linux accepts
//! (anything else is ENOENT there, `None` here), including one quirk of Linux's decoder through
//! 6.18: a trailing lone character worth zero (`A`) after a whole number of bytes is ignored.

use sha2::{Digest, Sha256};

use crate::secret::ct_eq;

/// Largest decoded no-key name (`FSCRYPT_NOKEY_NAME_MAX`): 8 + 149 + 32 bytes.
pub const NOKEY_NAME_MAX: usize = 189;
/// Its encoded length, the longest no-key name accepted: ceil(189 * 4 / 3).
pub const NOKEY_NAME_MAX_ENCODED: usize = 252;
/// Ciphertext bytes kept verbatim in a no-key name.
pub const NOKEY_BYTES: usize = 149;
/// Size of the two dirhash words that precede them.
const DIRHASH_SIZE: usize = 8;
/// Smallest decoded no-key name: the dirhash words and one ciphertext byte.
const NOKEY_NAME_MIN: usize = DIRHASH_SIZE + 1;
/// Largest unabbreviated decoded no-key name.
const NOKEY_NAME_FULL_MAX: usize = DIRHASH_SIZE + NOKEY_BYTES;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The no-key name of an on-disk `ciphertext` (16 to 255 bytes in practice) whose directory
/// entry has hashes `hash` and `minor_hash` (0 where the filesystem has none).
pub fn encode(ciphertext: &[u8], hash: u32, minor_hash: u32) -> String {
    let mut raw = Vec::with_capacity(NOKEY_NAME_MAX);
    raw.extend_from_slice(&hash.to_le_bytes());
    raw.extend_from_slice(&minor_hash.to_le_bytes());
    if ciphertext.len() <= NOKEY_BYTES {
        raw.extend_from_slice(ciphertext);
    } else {
        raw.extend_from_slice(&ciphertext[..NOKEY_BYTES]);
        raw.extend_from_slice(&Sha256::digest(&ciphertext[NOKEY_BYTES..]));
    }
    base64url_encode(&raw)
}

/// A decoded no-key name, as a lookup without the key uses it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NoKeyName {
    /// The filesystem's hash of the entry (`dirhash[0]`).
    pub hash: u32,
    /// Its minor hash (`dirhash[1]`).
    pub minor_hash: u32,
    bytes: Vec<u8>,
    sha256: Option<[u8; 32]>,
}

impl NoKeyName {
    /// Decodes a name given to lookup; `None` exactly where Linux answers ENOENT.
    pub fn decode(name: &[u8]) -> Option<Self> {
        if name.len() > NOKEY_NAME_MAX_ENCODED {
            return None;
        }
        let raw = base64url_decode(name)?;
        let len = raw.len();
        if !((NOKEY_NAME_MIN..=NOKEY_NAME_FULL_MAX).contains(&len) || len == NOKEY_NAME_MAX) {
            return None;
        }
        let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let (hash, minor_hash) = (word(0), word(4));
        let (bytes, sha256) = if len == NOKEY_NAME_MAX {
            let mut digest = [0u8; 32];
            digest.copy_from_slice(&raw[NOKEY_NAME_FULL_MAX..]);
            (
                raw[DIRHASH_SIZE..NOKEY_NAME_FULL_MAX].to_vec(),
                Some(digest),
            )
        } else {
            (raw[DIRHASH_SIZE..].to_vec(), None)
        };
        Some(NoKeyName {
            hash,
            minor_hash,
            bytes,
            sha256,
        })
    }

    /// Whether the on-disk (encrypted) name `disk_name` is the one this no-key name stands for:
    /// the exact bytes when unabbreviated; otherwise a name longer than 149 bytes with the same
    /// first 149 bytes and the same SHA-256 over the rest.
    pub fn matches(&self, disk_name: &[u8]) -> bool {
        match &self.sha256 {
            None => ct_eq(disk_name, &self.bytes),
            Some(digest) => {
                disk_name.len() > NOKEY_BYTES
                    && ct_eq(&disk_name[..NOKEY_BYTES], &self.bytes)
                    && ct_eq(&Sha256::digest(&disk_name[NOKEY_BYTES..]), digest)
            }
        }
    }

    /// Whether the ciphertext was longer than 149 bytes and is known only by prefix and hash.
    pub fn is_abbreviated(&self) -> bool {
        self.sha256.is_some()
    }

    /// The ciphertext carried in the name: all of it, or its first 149 bytes if abbreviated.
    pub fn ciphertext_prefix(&self) -> &[u8] {
        &self.bytes
    }

    /// The whole on-disk name, when the no-key name is not abbreviated.
    pub fn disk_name(&self) -> Option<&[u8]> {
        self.sha256.is_none().then_some(self.bytes.as_slice())
    }
}

/// RFC 4648 base64url without padding; the final partial sextet is zero-filled.
pub fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity((data.len() * 4).div_ceil(3));
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &byte in data {
        acc = (acc << 8) | u32::from(byte);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(char::from(ALPHABET[((acc >> bits) & 0x3f) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (6 - bits)) & 0x3f) as usize]));
    }
    out
}

fn sextet(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    }))
}

/// Strict base64url decoding as Linux's `fscrypt_base64url_decode`: no padding, no whitespace,
/// only the url-safe alphabet, and the bits left over after the last whole byte must be zero.
/// (That rule lets a lone trailing `A` through, as Linux does.)
pub fn base64url_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4 + 1);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in s {
        // Bits above the ones still pending are shifted out, as in Linux's u32 accumulator.
        acc = (acc << 6) | sextet(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64url_rfc4648_vectors() {
        // RFC 4648 section 10, unpadded, plus the two url-safe characters.
        for (raw, enc) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg"),
            (b"fooba", "Zm9vYmE"),
            (b"foobar", "Zm9vYmFy"),
            (&[0xfb, 0xff], "-_8"),
        ] {
            assert_eq!(base64url_encode(raw), enc);
            assert_eq!(base64url_decode(enc.as_bytes()).unwrap(), raw);
        }
        assert_eq!(base64url_decode(b"Zg=="), None, "padding");
        assert_eq!(base64url_decode(b"Zh"), None, "leftover bits");
        assert_eq!(base64url_decode(b"+/"), None, "standard alphabet");
        assert_eq!(base64url_decode(b"Zm 9v"), None, "whitespace");
        assert_eq!(base64url_decode(b"Zm9v\0"), None, "NUL");
        assert_eq!(base64url_decode(b"Zm9vB"), None, "lone non-zero sextet");
        // Linux's quirk: a lone zero sextet is dropped.
        assert_eq!(base64url_decode(b"Zm9vA").unwrap(), b"foo");
    }

    #[test]
    fn spec_vector_abbreviated() {
        let name = encode(&[0x41; 200], 0x1234_5678, 0x9abc_def0);
        assert_eq!(name.len(), NOKEY_NAME_MAX_ENCODED);
        assert!(name.starts_with("eFY0EvDevJpBQUFB"), "{name}");
        assert!(
            name.ends_with("R0xYW4wcyO9gHda50g_zmVKO2W87XE0wi4Xmi4lFVAJ"),
            "{name}"
        );
        let n = NoKeyName::decode(name.as_bytes()).unwrap();
        assert_eq!((n.hash, n.minor_hash), (0x1234_5678, 0x9abc_def0));
        assert!(n.is_abbreviated());
        assert_eq!(n.ciphertext_prefix(), &[0x41; 149][..]);
        assert_eq!(n.disk_name(), None);
        assert!(n.matches(&[0x41; 200]));
        assert!(!n.matches(&[0x41; 201]));
        assert!(!n.matches(&[0x41; 149]), "not longer than the prefix");
        let mut other = [0x41u8; 200];
        other[0] = 0x42;
        assert!(!n.matches(&other), "prefix differs");
        other[0] = 0x41;
        other[199] = 0x42;
        assert!(!n.matches(&other), "tail differs");
    }

    #[test]
    fn full_names() {
        let ct: Vec<u8> = (0..149).collect();
        let name = encode(&ct, 7, 9);
        assert_eq!(name.len(), (157usize * 4).div_ceil(3));
        let n = NoKeyName::decode(name.as_bytes()).unwrap();
        assert!(!n.is_abbreviated());
        assert_eq!(n.disk_name(), Some(&ct[..]));
        assert!(n.matches(&ct));
        assert!(!n.matches(&ct[..148]));
        let mut longer = ct.clone();
        longer.push(0);
        assert!(!n.matches(&longer));
        // 150 bytes is the shortest abbreviated ciphertext.
        let ct150: Vec<u8> = (0..150).collect();
        assert!(
            NoKeyName::decode(encode(&ct150, 0, 0).as_bytes())
                .unwrap()
                .is_abbreviated()
        );
    }

    #[test]
    fn decode_rejects_what_linux_rejects() {
        let good = encode(&[0x55; 32], 1, 2);
        assert!(NoKeyName::decode(good.as_bytes()).is_some());
        // Too long: 253 characters, even if they would decode.
        assert_eq!(NoKeyName::decode(&[b'A'; 253]), None);
        // Characters outside the alphabet.
        for bad in [b'=', b'+', b'/', b'.', b' ', 0, 0xc3] {
            let mut s = good.clone().into_bytes();
            s[5] = bad;
            assert_eq!(NoKeyName::decode(&s), None, "byte {bad:#x}");
        }
        // Non-zero leftover bits: 40 raw bytes encode to 54 characters with 4 spare bits.
        assert_eq!(good.len(), 54);
        let mut s = good.clone().into_bytes();
        let last = sextet(s[53]).unwrap() | 1;
        s[53] = ALPHABET[last as usize];
        assert_eq!(NoKeyName::decode(&s), None);
        // Decoded lengths outside 9..=157 and not 189.
        for len in [0, 1, 8, 158, 170, 188, 190] {
            let s = base64url_encode(&vec![0x11; len]);
            assert_eq!(
                NoKeyName::decode(s.as_bytes()),
                None,
                "decoded length {len}"
            );
        }
        for len in [9, 100, 157, 189] {
            let s = base64url_encode(&vec![0x11; len]);
            assert!(
                NoKeyName::decode(s.as_bytes()).is_some(),
                "decoded length {len}"
            );
        }
    }

    proptest! {
        #[test]
        fn decode_is_total(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Some(n) = NoKeyName::decode(&input) {
                prop_assert!(input.len() <= NOKEY_NAME_MAX_ENCODED);
                prop_assert!(input.iter().all(|c| ALPHABET.contains(c)));
                let len = n.ciphertext_prefix().len();
                prop_assert!((1..=NOKEY_BYTES).contains(&len));
                prop_assert!(!n.is_abbreviated() || len == NOKEY_BYTES);
            }
        }

        #[test]
        fn decode_of_alphabet_strings(input in "[A-Za-z0-9_-]{0,260}") {
            // Total on well-formed characters too; whatever decodes re-encodes to the same name
            // (up to Linux's ignored trailing 'A').
            if let Some(n) = NoKeyName::decode(input.as_bytes()) {
                let mut raw = Vec::new();
                raw.extend_from_slice(&n.hash.to_le_bytes());
                raw.extend_from_slice(&n.minor_hash.to_le_bytes());
                raw.extend_from_slice(n.ciphertext_prefix());
                if let Some(d) = n.sha256 {
                    raw.extend_from_slice(&d);
                }
                let again = base64url_encode(&raw);
                let with_quirk = again.clone() + "A";
                prop_assert!(input == again || input == with_quirk);
            }
        }

        #[test]
        fn encode_decode_matches(ct in proptest::collection::vec(any::<u8>(), 16..=255),
                                 hash in any::<u32>(), minor in any::<u32>(),
                                 flip in any::<prop::sample::Index>()) {
            let name = encode(&ct, hash, minor);
            let expected_len = if ct.len() > NOKEY_BYTES {
                NOKEY_NAME_MAX_ENCODED
            } else {
                ((DIRHASH_SIZE + ct.len()) * 4).div_ceil(3)
            };
            prop_assert_eq!(name.len(), expected_len);
            let n = NoKeyName::decode(name.as_bytes()).unwrap();
            prop_assert_eq!((n.hash, n.minor_hash), (hash, minor));
            prop_assert_eq!(n.is_abbreviated(), ct.len() > NOKEY_BYTES);
            prop_assert!(n.matches(&ct));
            let mut other = ct.clone();
            other[flip.index(ct.len())] ^= 0x80;
            prop_assert!(!n.matches(&other));
        }
    }
}
