//! Per-extent encryption: each extent carries its own context (the btrfs v7 layout: version,
//! contents mode, master key identifier, nonce), its key is derived from the master key and that
//! nonce, and a data unit's IV is its index *inside the extent*. Shared, snapshotted and relocated
//! extents therefore stay readable without re-encryption, and every extent describes itself, so
//! scrub, relocation and send need no inode and no key.

use std::sync::Arc;

use crate::common::CryptCommon;
use crate::contents::ContentsCipher;
use crate::context::{NONCE_SIZE, random_nonce};
use crate::error::{Error, Result};
use crate::hkdf::CONTEXT_PER_EXTENT_ENC_KEY;
use crate::keyring::DerivedSlot;
use crate::keysetup;
use crate::master_key::KeyIdentifier;
use crate::policy::{ContentsMode, IvScheme, PolicyV2};

/// Version 1: the 34-byte layout of the btrfs v7 series (`fscrypt_extent_context`).
pub const EXTENT_CONTEXT_V1: u8 = 1;
/// Size of a version-1 extent context.
pub const EXTENT_CONTEXT_V1_SIZE: usize = 34;
/// Largest extent context any version may have (btrfs's BTRFS_MAX_EXTENT_CTX_SIZE); a decoder
/// refuses anything longer before looking at it.
pub const EXTENT_CONTEXT_MAX_SIZE: usize = 40;

/// The on-disk context of one encrypted extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtentContext {
    contents_mode: ContentsMode,
    master_key_identifier: KeyIdentifier,
    nonce: [u8; NONCE_SIZE],
}

impl ExtentContext {
    /// A context for a new extent written under `policy`, with a fresh nonce from the OS CSPRNG.
    pub fn new_random(policy: &PolicyV2) -> Result<Self> {
        Ok(Self::with_nonce(policy, random_nonce()?))
    }

    /// A context with a given nonce (decoding, tests).
    pub fn with_nonce(policy: &PolicyV2, nonce: [u8; NONCE_SIZE]) -> Self {
        ExtentContext {
            contents_mode: policy.contents_mode(),
            master_key_identifier: *policy.master_key_identifier(),
            nonce,
        }
    }

    /// Decodes a stored extent context. Unknown versions, wrong lengths and unknown modes are
    /// errors, so a corrupt context never reaches key derivation.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() || bytes.len() > EXTENT_CONTEXT_MAX_SIZE {
            return Err(Error::BadLength {
                what: "extent context",
                got: bytes.len(),
                expected: EXTENT_CONTEXT_V1_SIZE,
            });
        }
        if bytes[0] != EXTENT_CONTEXT_V1 {
            return Err(Error::invalid(
                "extent context",
                format!("unknown version {}", bytes[0]),
            ));
        }
        if bytes.len() != EXTENT_CONTEXT_V1_SIZE {
            return Err(Error::BadLength {
                what: "extent context v1",
                got: bytes.len(),
                expected: EXTENT_CONTEXT_V1_SIZE,
            });
        }
        let contents_mode = ContentsMode::from_number(bytes[1])?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[2..18]);
        let mut nonce = [0u8; NONCE_SIZE];
        nonce.copy_from_slice(&bytes[18..34]);
        Ok(ExtentContext {
            contents_mode,
            master_key_identifier: KeyIdentifier(id),
            nonce,
        })
    }

    /// The 34-byte version-1 encoding.
    pub fn encode(&self) -> [u8; EXTENT_CONTEXT_V1_SIZE] {
        let mut out = [0u8; EXTENT_CONTEXT_V1_SIZE];
        out[0] = EXTENT_CONTEXT_V1;
        out[1] = self.contents_mode.number();
        out[2..18].copy_from_slice(&self.master_key_identifier.0);
        out[18..34].copy_from_slice(&self.nonce);
        out
    }

    /// Whether an inode with `policy` may use this extent: the same master key and contents mode
    /// (the v7 rule; anything else is refused, which is what keeps cross-key reflinks out).
    pub fn check_matches(&self, policy: &PolicyV2) -> Result<()> {
        if self.master_key_identifier != *policy.master_key_identifier()
            || self.contents_mode != policy.contents_mode()
        {
            return Err(Error::invalid(
                "extent context",
                "key identifier or contents mode differ from the inode's policy",
            ));
        }
        Ok(())
    }

    /// The contents mode.
    pub fn contents_mode(&self) -> ContentsMode {
        self.contents_mode
    }

    /// The identifier of the master key the extent's key derives from.
    pub fn master_key_identifier(&self) -> &KeyIdentifier {
        &self.master_key_identifier
    }

    /// The extent's nonce.
    pub fn nonce(&self) -> &[u8; NONCE_SIZE] {
        &self.nonce
    }
}

/// The crypt state of one extent: its context and its prepared contents key. Built when an
/// extent is written (fresh nonce) or read (stored context), always from an inode's
/// [`CryptCommon`], so the key exists only while some open file pins its master key.
#[derive(Debug, Clone)]
pub struct ExtentCryptInfo {
    common: CryptCommon,
    context: ExtentContext,
    cipher: Arc<ContentsCipher>,
    data_unit_bits: u8,
}

impl ExtentCryptInfo {
    /// The crypt state of a new extent: a fresh nonce, its own derived key.
    pub fn new_extent(common: &CryptCommon, block_size_bits: u8) -> Result<Self> {
        let context = ExtentContext::new_random(common.policy())?;
        Self::load(common, &context, block_size_bits)
    }

    /// The crypt state of a stored extent, refused unless it belongs to the inode's policy.
    pub fn load(
        common: &CryptCommon,
        context: &ExtentContext,
        block_size_bits: u8,
    ) -> Result<Self> {
        let policy = common.policy();
        if policy.iv_scheme() != IvScheme::PerFileKey {
            return Err(Error::invalid(
                "policy",
                "per-extent encryption supports neither DIRECT_KEY nor IV_INO_LBLK_*",
            ));
        }
        context.check_matches(policy)?;
        let slot = DerivedSlot {
            context: CONTEXT_PER_EXTENT_ENC_KEY,
            info: context.nonce.to_vec(),
        };
        let mode = context.contents_mode;
        let cipher = common.key().derived(&slot, |mk| {
            let key = keysetup::per_extent_key(mk, &mode.info(), &context.nonce)?;
            ContentsCipher::new(mode, &key)
        })?;
        Ok(ExtentCryptInfo {
            common: common.clone(),
            context: *context,
            cipher,
            data_unit_bits: policy.data_unit_bits(block_size_bits),
        })
    }

    /// The extent's on-disk context.
    pub fn context(&self) -> &ExtentContext {
        &self.context
    }

    /// The policy and master key pin this extent was set up under.
    pub fn common(&self) -> &CryptCommon {
        &self.common
    }

    /// The data unit size in bytes.
    pub fn data_unit_size(&self) -> usize {
        1 << self.data_unit_bits
    }

    /// Encrypts whole data units in place; `offset_in_extent` is where `data` starts inside the
    /// extent, which fixes the first data unit's IV.
    pub fn encrypt(&self, offset_in_extent: u64, data: &mut [u8]) -> Result<()> {
        let first = data_unit_index(offset_in_extent, self.data_unit_bits)?;
        self.cipher
            .encrypt_units(first, self.data_unit_size(), data)
    }

    /// Decrypts whole data units in place (see [`ExtentCryptInfo::encrypt`]).
    pub fn decrypt(&self, offset_in_extent: u64, data: &mut [u8]) -> Result<()> {
        let first = data_unit_index(offset_in_extent, self.data_unit_bits)?;
        self.cipher
            .decrypt_units(first, self.data_unit_size(), data)
    }
}

/// The data unit number of a byte offset inside an extent: offset / data unit size. The offset
/// must be a whole number of data units, since a data unit is encrypted as one piece.
pub fn data_unit_index(offset_in_extent: u64, data_unit_bits: u8) -> Result<u64> {
    if !(4..=16).contains(&data_unit_bits) {
        return Err(Error::invalid(
            "data unit size",
            format!("2^{data_unit_bits} bytes"),
        ));
    }
    if offset_in_extent & ((1u64 << data_unit_bits) - 1) != 0 {
        return Err(Error::invalid(
            "extent offset",
            format!("{offset_in_extent} is not a multiple of the data unit size"),
        ));
    }
    Ok(offset_in_extent >> data_unit_bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FilenamesMode;
    use proptest::prelude::*;

    fn policy(id: u8) -> PolicyV2 {
        PolicyV2::new(
            ContentsMode::Aes256Xts,
            FilenamesMode::Aes256Cts,
            3,
            0,
            KeyIdentifier([id; 16]),
        )
        .unwrap()
    }

    #[test]
    fn v7_layout() {
        let ctx = ExtentContext::with_nonce(&policy(0xab), [0x5a; 16]);
        let b = ctx.encode();
        assert_eq!(b[0], 1);
        assert_eq!(b[1], 1);
        assert_eq!(&b[2..18], &[0xab; 16]);
        assert_eq!(&b[18..], &[0x5a; 16]);
        assert_eq!(ExtentContext::decode(&b).unwrap(), ctx);
    }

    #[test]
    fn decode_rejects() {
        let b = ExtentContext::with_nonce(&policy(1), [2; 16]).encode();
        assert!(ExtentContext::decode(&b[..33]).is_err());
        assert!(ExtentContext::decode(&[]).is_err());
        let mut bad = b;
        bad[0] = 2;
        assert!(ExtentContext::decode(&bad).is_err());
        let mut bad = b;
        bad[1] = 4; // a filenames mode is not a contents mode
        assert!(ExtentContext::decode(&bad).is_err());
        assert!(ExtentContext::decode(&[1u8; 41]).is_err());
    }

    #[test]
    fn matches_only_same_key_and_mode() {
        let ctx = ExtentContext::new_random(&policy(1)).unwrap();
        assert!(ctx.check_matches(&policy(1)).is_ok());
        assert!(ctx.check_matches(&policy(2)).is_err());
        let essiv = PolicyV2::new(
            ContentsMode::Aes128CbcEssiv,
            FilenamesMode::Aes128Cts,
            0,
            0,
            KeyIdentifier([1; 16]),
        )
        .unwrap();
        assert!(ctx.check_matches(&essiv).is_err());
    }

    #[test]
    fn data_unit_indices() {
        assert_eq!(data_unit_index(0, 12).unwrap(), 0);
        assert_eq!(data_unit_index(8192, 12).unwrap(), 2);
        assert_eq!(data_unit_index(1536, 9).unwrap(), 3);
        assert!(data_unit_index(100, 12).is_err());
        assert!(data_unit_index(0, 30).is_err());
    }

    #[test]
    fn nonces_do_not_repeat() {
        let p = policy(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(*ExtentContext::new_random(&p).unwrap().nonce()));
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..48)) {
            if let Ok(ctx) = ExtentContext::decode(&bytes) {
                prop_assert_eq!(&ctx.encode()[..], &bytes[..]);
            }
        }
    }
}
