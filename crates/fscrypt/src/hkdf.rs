//! HKDF-SHA512 exactly as Linux fscrypt uses it: the master key is extracted once with an empty
//! salt into a pseudorandom key, and every subkey is expanded from it with the info string
//! `"fscrypt\0" || context byte || context-specific info`.
//!
//! The context bytes are a compatibility promise: the same master key yields the same subkeys
//! here as in the kernel. cowcrypt's own subkeys (which Linux does not have) use another prefix,
//! `"cowcrypt"`, in place of `"fscrypt\0"`: the two differ in the first byte, so no info string
//! of ours can ever equal one of Linux's, whatever context bytes Linux adds later.

use hkdf::Hkdf;
use sha2::Sha512;

/// The master key identifier (16 bytes, no info).
pub const CONTEXT_KEY_IDENTIFIER: u8 = 1;
/// A per-file key, info = the file's nonce.
pub const CONTEXT_PER_FILE_ENC_KEY: u8 = 2;
/// A DIRECT_KEY per-mode key, info = the mode number.
pub const CONTEXT_DIRECT_KEY: u8 = 3;
/// An IV_INO_LBLK_64 key, info = mode number || filesystem UUID.
pub const CONTEXT_IV_INO_LBLK_64_KEY: u8 = 4;
/// The SipHash key of a casefolded encrypted directory, info = the directory's nonce.
pub const CONTEXT_DIRHASH_KEY: u8 = 5;
/// An IV_INO_LBLK_32 key, info = mode number || filesystem UUID.
pub const CONTEXT_IV_INO_LBLK_32_KEY: u8 = 6;
/// The SipHash key that hashes inode numbers for IV_INO_LBLK_32 (no info).
pub const CONTEXT_INODE_HASH_KEY: u8 = 7;
/// A per-extent key of the btrfs v7 series, info = the extent's nonce.
pub const CONTEXT_PER_EXTENT_ENC_KEY: u8 = 9;

/// cowcrypt's own: the MAC key of one authenticated extent, info = the extent's nonce
/// (expanded with [`HkdfKey::expand_cowcrypt`]).
pub const COWCRYPT_CONTEXT_EXTENT_MAC_KEY: u8 = 1;

/// The "fscrypt\0" prefix of every info string Linux uses.
const INFO_PREFIX: &[u8; 8] = b"fscrypt\0";
/// The prefix of cowcrypt's own info strings: never a prefix of Linux's.
const COWCRYPT_INFO_PREFIX: &[u8; 8] = b"cowcrypt";

/// The HKDF-SHA512 pseudorandom key of one master key, kept as HMAC-SHA512 already keyed with
/// it (the hashed inner and outer pads). Derived subkeys come only from here.
///
/// Keying HMAC costs two SHA-512 compressions, as much as expanding a 64-byte subkey itself,
/// and the `hkdf` crate keys it in `from_prk`: keeping the keyed state and cloning it per
/// expansion (which `Hkdf::expand` does) halves the cost of every derived key, and a new extent
/// derives one. The state stands in for the PRK, so it is as secret: SHA-512's `zeroize`
/// feature wipes its hash states and buffers on drop.
#[derive(Clone)]
pub struct HkdfKey {
    hkdf: Hkdf<Sha512>,
}

impl HkdfKey {
    /// HKDF-Extract with an empty salt (64 zero bytes), as Linux does.
    pub fn extract(master_key: &[u8]) -> Self {
        // `extract` keys HMAC with the PRK for us, and also returns the PRK itself.
        let (mut prk, hkdf) = Hkdf::<Sha512>::extract(None, master_key);
        // The PRK itself is an array on the stack, not needed past here; wipe it.
        zeroize::Zeroize::zeroize(prk.as_mut_slice());
        HkdfKey { hkdf }
    }

    /// HKDF-Expand of `out.len()` bytes (at most 255 * 64) for `context` and `info`.
    pub fn expand(&self, context: u8, info: &[u8], out: &mut [u8]) {
        self.expand_with(INFO_PREFIX, context, info, out)
    }

    /// HKDF-Expand for a subkey of cowcrypt's own: info `"cowcrypt" || context || info`.
    pub fn expand_cowcrypt(&self, context: u8, info: &[u8], out: &mut [u8]) {
        self.expand_with(COWCRYPT_INFO_PREFIX, context, info, out)
    }

    fn expand_with(&self, prefix: &[u8; 8], context: u8, info: &[u8], out: &mut [u8]) {
        // The info string in pieces: HMAC hashes them as their concatenation.
        self.hkdf
            .expand_multi_info(&[prefix, &[context], info], out)
            .expect("fscrypt never asks for more than 255 * 64 bytes");
    }
}

impl std::fmt::Debug for HkdfKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HkdfKey(redacted)")
    }
}
