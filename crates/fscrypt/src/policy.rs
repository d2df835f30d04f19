//! Encryption policies: the modes, flags and key a directory tree is encrypted with, in Linux's
//! `fscrypt_policy_v2` encoding (24 bytes), and the rules Linux checks before accepting one.
//!
//! Decoding checks everything that depends on the bytes alone (version, modes, flag masks,
//! reserved bytes). Whether a policy fits a particular filesystem (data unit size, stable inode
//! numbers) is a separate check, [`PolicyV2::check_fits`], because Linux makes it against the
//! superblock, not the bytes.

use std::fmt;

use crate::error::{Error, Result};
use crate::master_key::KeyIdentifier;

/// Size of an encoded v2 policy.
pub const POLICY_V2_SIZE: usize = 24;
/// Version byte of a v2 policy (and of a v2 inode context).
pub const POLICY_V2: u8 = 2;
/// Version byte of a v1 policy, which cowcrypt recognises but does not support.
pub const POLICY_V1: u8 = 0;

/// Filename padding flags: the low two bits.
pub const FLAGS_PAD_MASK: u8 = 0x03;
/// Use the master key directly (per-mode key) with the nonce in the IV.
pub const FLAG_DIRECT_KEY: u8 = 0x04;
/// IVs from (inode number, data unit index); one key per mode and filesystem.
pub const FLAG_IV_INO_LBLK_64: u8 = 0x08;
/// IVs from (hashed inode number + data unit index) in 32 bits; one key per mode and filesystem.
pub const FLAG_IV_INO_LBLK_32: u8 = 0x10;
/// Every flag a Linux v2 policy may carry.
pub const FLAGS_V2_VALID: u8 = 0x1f;
/// cowcrypt's own flag, which Linux does not define (its highest flag is 0x10): every data unit
/// of every extent written under the policy carries a MAC (see [`crate::extent`]). Linux would
/// refuse such a policy, which is right: it could not check the MACs.
pub const FLAG_AUTHENTICATED: u8 = 0x80;
/// Every flag a cowcrypt v2 policy may carry.
pub const FLAGS_COWCRYPT_VALID: u8 = FLAGS_V2_VALID | FLAG_AUTHENTICATED;

/// Encryption modes for file contents (`FSCRYPT_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentsMode {
    /// AES-256-XTS (mode 1), the recommended contents mode.
    Aes256Xts,
    /// AES-128-CBC-ESSIV (mode 5).
    Aes128CbcEssiv,
    /// SM4-XTS (mode 7).
    Sm4Xts,
    /// Adiantum (mode 9).
    Adiantum,
}

/// Encryption modes for filenames and symlink targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FilenamesMode {
    /// AES-256-CBC-CTS (mode 4): CBC with ciphertext stealing, CS3 convention.
    Aes256Cts,
    /// AES-128-CBC-CTS (mode 6).
    Aes128Cts,
    /// SM4-CBC-CTS (mode 8).
    Sm4Cts,
    /// Adiantum (mode 9).
    Adiantum,
    /// AES-256-HCTR2 (mode 10), a wide-block mode: names sharing a prefix do not share one.
    Aes256Hctr2,
}

/// Fixed properties of a mode, from Linux's `fscrypt_modes[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeInfo {
    /// The mode's number on disk.
    pub number: u8,
    /// Its name in Linux's messages.
    pub name: &'static str,
    /// Key size in bytes.
    pub key_size: usize,
    /// Security strength in bytes: the smallest v2 master key that may drive it.
    pub security_strength: usize,
    /// IV size in bytes.
    pub iv_size: usize,
}

const fn info(number: u8, name: &'static str, key: usize, strength: usize, iv: usize) -> ModeInfo {
    ModeInfo {
        number,
        name,
        key_size: key,
        security_strength: strength,
        iv_size: iv,
    }
}

impl ContentsMode {
    /// The mode with this number, if it is a contents mode.
    pub fn from_number(n: u8) -> Result<Self> {
        Ok(match n {
            1 => ContentsMode::Aes256Xts,
            5 => ContentsMode::Aes128CbcEssiv,
            7 => ContentsMode::Sm4Xts,
            9 => ContentsMode::Adiantum,
            _ => return Err(Error::UnsupportedMode(n)),
        })
    }

    /// The mode's fixed properties.
    pub fn info(self) -> ModeInfo {
        match self {
            ContentsMode::Aes256Xts => info(1, "AES-256-XTS", 64, 32, 16),
            ContentsMode::Aes128CbcEssiv => info(5, "AES-128-CBC-ESSIV", 16, 16, 16),
            ContentsMode::Sm4Xts => info(7, "SM4-XTS", 32, 16, 16),
            ContentsMode::Adiantum => info(9, "Adiantum", 32, 32, 32),
        }
    }

    /// The mode's number on disk.
    pub fn number(self) -> u8 {
        self.info().number
    }
}

impl FilenamesMode {
    /// The mode with this number, if it is a filenames mode.
    pub fn from_number(n: u8) -> Result<Self> {
        Ok(match n {
            4 => FilenamesMode::Aes256Cts,
            6 => FilenamesMode::Aes128Cts,
            8 => FilenamesMode::Sm4Cts,
            9 => FilenamesMode::Adiantum,
            10 => FilenamesMode::Aes256Hctr2,
            _ => return Err(Error::UnsupportedMode(n)),
        })
    }

    /// The mode's fixed properties.
    pub fn info(self) -> ModeInfo {
        match self {
            FilenamesMode::Aes256Cts => info(4, "AES-256-CBC-CTS", 32, 32, 16),
            FilenamesMode::Aes128Cts => info(6, "AES-128-CBC-CTS", 16, 16, 16),
            FilenamesMode::Sm4Cts => info(8, "SM4-CBC-CTS", 16, 16, 16),
            FilenamesMode::Adiantum => info(9, "Adiantum", 32, 32, 32),
            FilenamesMode::Aes256Hctr2 => info(10, "AES-256-HCTR2", 32, 32, 32),
        }
    }

    /// The mode's number on disk.
    pub fn number(self) -> u8 {
        self.info().number
    }
}

/// Whether Linux accepts this (contents, filenames) pair in a v2 policy.
pub fn valid_v2_mode_pair(contents: ContentsMode, filenames: FilenamesMode) -> bool {
    use ContentsMode as C;
    use FilenamesMode as F;
    matches!(
        (contents, filenames),
        (C::Aes256Xts, F::Aes256Cts)
            | (C::Aes128CbcEssiv, F::Aes128Cts)
            | (C::Adiantum, F::Adiantum)
            | (C::Aes256Xts, F::Aes256Hctr2)
            | (C::Sm4Xts, F::Sm4Cts)
    )
}

/// Filename padding: encrypted names are padded with NULs to a multiple of this many bytes,
/// which hides their exact lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Padding {
    /// 4 bytes (flag 0x00).
    Pad4,
    /// 8 bytes (flag 0x01).
    Pad8,
    /// 16 bytes (flag 0x02).
    Pad16,
    /// 32 bytes (flag 0x03), the recommended one.
    Pad32,
}

impl Padding {
    /// The padding encoded in the low bits of policy flags.
    pub fn from_flags(flags: u8) -> Self {
        match flags & FLAGS_PAD_MASK {
            0 => Padding::Pad4,
            1 => Padding::Pad8,
            2 => Padding::Pad16,
            _ => Padding::Pad32,
        }
    }

    /// The padding of this many bytes.
    pub fn from_bytes(bytes: usize) -> Option<Self> {
        Some(match bytes {
            4 => Padding::Pad4,
            8 => Padding::Pad8,
            16 => Padding::Pad16,
            32 => Padding::Pad32,
            _ => return None,
        })
    }

    /// The padding in bytes.
    pub fn bytes(self) -> usize {
        4 << self.flag_bits()
    }

    /// The flag bits that encode it.
    pub fn flag_bits(self) -> u8 {
        match self {
            Padding::Pad4 => 0,
            Padding::Pad8 => 1,
            Padding::Pad16 => 2,
            Padding::Pad32 => 3,
        }
    }
}

/// How the IVs and keys of a policy are formed, from its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IvScheme {
    /// A key per file (or per extent), IV = data unit index.
    PerFileKey,
    /// A per-mode key, IV = index and the file's nonce.
    DirectKey,
    /// A per-mode, per-filesystem key, IV = 32-bit index and 32-bit inode number.
    InoLblk64,
    /// A per-mode, per-filesystem key, IV = (hashed inode + index) mod 2^32.
    InoLblk32,
}

/// A v2 encryption policy, as Linux's `struct fscrypt_policy_v2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyV2 {
    contents_mode: ContentsMode,
    filenames_mode: FilenamesMode,
    flags: u8,
    log2_data_unit_size: u8,
    master_key_identifier: KeyIdentifier,
}

/// What a filesystem offers, for the checks Linux makes against the superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsCapabilities {
    /// log2 of the filesystem block size.
    pub block_size_bits: u8,
    /// Whether data units smaller than a block are supported.
    pub supports_subblock_data_units: bool,
    /// Whether inode numbers never change (needed for IV_INO_LBLK_*).
    pub has_stable_inodes: bool,
    /// Bits in an inode number (IV_INO_LBLK_* need 32).
    pub ino_bits: u8,
    /// Bits in the largest file offset plus one (`fls64(s_maxbytes - 1)`).
    pub max_file_size_bits: u8,
    /// Per-extent encryption (cowcrypt, btrfs v7): only plain v2 policies apply.
    pub per_extent_encryption: bool,
}

impl PolicyV2 {
    /// A policy with the given parts; checked as [`PolicyV2::decode`] checks.
    pub fn new(
        contents_mode: ContentsMode,
        filenames_mode: FilenamesMode,
        flags: u8,
        log2_data_unit_size: u8,
        master_key_identifier: KeyIdentifier,
    ) -> Result<Self> {
        let policy = PolicyV2 {
            contents_mode,
            filenames_mode,
            flags,
            log2_data_unit_size,
            master_key_identifier,
        };
        policy.check_bytes()?;
        Ok(policy)
    }

    /// Decodes and checks a 24-byte `fscrypt_policy_v2`.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.first() == Some(&POLICY_V1) {
            return Err(Error::invalid("policy", "v1 policies are not supported"));
        }
        if bytes.len() != POLICY_V2_SIZE {
            return Err(Error::BadLength {
                what: "v2 policy",
                got: bytes.len(),
                expected: POLICY_V2_SIZE,
            });
        }
        Self::decode_fields(bytes)
    }

    /// Decodes the fields shared by a policy and an inode context (bytes 0..24).
    pub(crate) fn decode_fields(bytes: &[u8]) -> Result<Self> {
        if bytes[0] != POLICY_V2 {
            return Err(Error::invalid("policy", format!("version {}", bytes[0])));
        }
        if bytes[5..8] != [0, 0, 0] {
            return Err(Error::invalid("policy", "reserved bytes are not zero"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[8..24]);
        PolicyV2::new(
            ContentsMode::from_number(bytes[1])?,
            FilenamesMode::from_number(bytes[2])?,
            bytes[3],
            bytes[4],
            KeyIdentifier(id),
        )
    }

    /// The 24-byte encoding.
    pub fn encode(&self) -> [u8; POLICY_V2_SIZE] {
        let mut out = [0u8; POLICY_V2_SIZE];
        out[0] = POLICY_V2;
        out[1] = self.contents_mode.number();
        out[2] = self.filenames_mode.number();
        out[3] = self.flags;
        out[4] = self.log2_data_unit_size;
        out[8..24].copy_from_slice(&self.master_key_identifier.0);
        out
    }

    /// Linux's `fscrypt_supported_v2_policy` checks that depend on the bytes alone.
    fn check_bytes(&self) -> Result<()> {
        if !valid_v2_mode_pair(self.contents_mode, self.filenames_mode) {
            return Err(Error::invalid(
                "policy",
                format!(
                    "mode pair ({}, {}) is not allowed",
                    self.contents_mode.info().name,
                    self.filenames_mode.info().name
                ),
            ));
        }
        if self.flags & !FLAGS_COWCRYPT_VALID != 0 {
            return Err(Error::invalid(
                "policy",
                format!("unknown flags {:#04x}", self.flags),
            ));
        }
        let schemes = [FLAG_DIRECT_KEY, FLAG_IV_INO_LBLK_64, FLAG_IV_INO_LBLK_32]
            .iter()
            .filter(|&&f| self.flags & f != 0)
            .count();
        if schemes > 1 {
            return Err(Error::invalid(
                "policy",
                "DIRECT_KEY, IV_INO_LBLK_64 and IV_INO_LBLK_32 are mutually exclusive",
            ));
        }
        if self.flags & FLAG_DIRECT_KEY != 0 {
            // The nonce must fit in the IV beside the index, so only 32-byte IV modes qualify.
            if self.contents_mode.number() != self.filenames_mode.number() {
                return Err(Error::invalid(
                    "policy",
                    "DIRECT_KEY needs the same contents and filenames mode",
                ));
            }
            if self.contents_mode.info().iv_size < 24 {
                return Err(Error::invalid(
                    "policy",
                    "DIRECT_KEY needs a mode with IVs of at least 24 bytes",
                ));
            }
        }
        if self.log2_data_unit_size != 0 && !(9..=16).contains(&self.log2_data_unit_size) {
            return Err(Error::invalid(
                "policy",
                format!("log2_data_unit_size {}", self.log2_data_unit_size),
            ));
        }
        Ok(())
    }

    /// Linux's checks of a policy against the filesystem it is to be set on.
    pub fn check_fits(&self, fs: &FsCapabilities) -> Result<()> {
        if fs.per_extent_encryption && self.iv_scheme() != IvScheme::PerFileKey {
            return Err(Error::invalid(
                "policy",
                "per-extent encryption supports neither DIRECT_KEY nor IV_INO_LBLK_*",
            ));
        }
        let du_bits = self.data_unit_bits(fs.block_size_bits);
        if self.authenticated() {
            if !fs.per_extent_encryption || self.iv_scheme() != IvScheme::PerFileKey {
                return Err(Error::invalid(
                    "policy",
                    "authentication needs per-extent encryption",
                ));
            }
            // One MAC per block keeps the MAC items in step with the checksum items.
            if du_bits != fs.block_size_bits {
                return Err(Error::invalid(
                    "policy",
                    "authentication needs data units of a whole block",
                ));
            }
        }
        if self.log2_data_unit_size != 0 {
            if !fs.supports_subblock_data_units {
                return Err(Error::invalid(
                    "policy",
                    "this filesystem does not support a data unit size",
                ));
            }
            if self.log2_data_unit_size > fs.block_size_bits {
                return Err(Error::invalid(
                    "policy",
                    "data unit size is larger than the block size",
                ));
            }
            if self.log2_data_unit_size < fs.block_size_bits
                && self.flags & FLAG_IV_INO_LBLK_32 != 0
            {
                return Err(Error::invalid(
                    "policy",
                    "IV_INO_LBLK_32 needs data units of a whole block",
                ));
            }
        }
        if self.flags & (FLAG_IV_INO_LBLK_64 | FLAG_IV_INO_LBLK_32) != 0 {
            if !fs.has_stable_inodes {
                return Err(Error::invalid(
                    "policy",
                    "IV_INO_LBLK_* needs stable inode numbers",
                ));
            }
            if fs.ino_bits > 32 {
                return Err(Error::invalid(
                    "policy",
                    "IV_INO_LBLK_* needs 32-bit inode numbers",
                ));
            }
            // The largest data unit index must fit in 32 bits.
            if fs.max_file_size_bits.saturating_sub(du_bits) > 32 {
                return Err(Error::invalid(
                    "policy",
                    "IV_INO_LBLK_* needs data unit indices that fit in 32 bits",
                ));
            }
        }
        Ok(())
    }

    /// The contents mode.
    pub fn contents_mode(&self) -> ContentsMode {
        self.contents_mode
    }

    /// The filenames mode.
    pub fn filenames_mode(&self) -> FilenamesMode {
        self.filenames_mode
    }

    /// The raw flags byte.
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether data units carry MACs (cowcrypt's [`FLAG_AUTHENTICATED`]).
    pub fn authenticated(&self) -> bool {
        self.flags & FLAG_AUTHENTICATED != 0
    }

    /// The filename padding.
    pub fn padding(&self) -> Padding {
        Padding::from_flags(self.flags)
    }

    /// How keys and IVs are formed.
    pub fn iv_scheme(&self) -> IvScheme {
        if self.flags & FLAG_DIRECT_KEY != 0 {
            IvScheme::DirectKey
        } else if self.flags & FLAG_IV_INO_LBLK_64 != 0 {
            IvScheme::InoLblk64
        } else if self.flags & FLAG_IV_INO_LBLK_32 != 0 {
            IvScheme::InoLblk32
        } else {
            IvScheme::PerFileKey
        }
    }

    /// The raw `log2_data_unit_size` (0 = the filesystem block size).
    pub fn log2_data_unit_size(&self) -> u8 {
        self.log2_data_unit_size
    }

    /// log2 of the data unit size on a filesystem with blocks of `1 << block_size_bits`.
    pub fn data_unit_bits(&self, block_size_bits: u8) -> u8 {
        if self.log2_data_unit_size == 0 {
            block_size_bits
        } else {
            self.log2_data_unit_size
        }
    }

    /// The identifier of the master key.
    pub fn master_key_identifier(&self) -> &KeyIdentifier {
        &self.master_key_identifier
    }
}

impl fmt::Display for PolicyV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v2 contents={} filenames={} padding={} flags={:#04x} key={}",
            self.contents_mode.info().name,
            self.filenames_mode.info().name,
            self.padding().bytes(),
            self.flags,
            self.master_key_identifier
        )?;
        if self.log2_data_unit_size != 0 {
            write!(f, " data_unit_size={}", 1u32 << self.log2_data_unit_size)?;
        }
        if self.authenticated() {
            f.write_str(" authenticated (MAC per data unit)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> KeyIdentifier {
        KeyIdentifier([0x11; 16])
    }

    #[test]
    fn round_trip() {
        let p = PolicyV2::new(
            ContentsMode::Aes256Xts,
            FilenamesMode::Aes256Cts,
            3,
            0,
            id(),
        )
        .unwrap();
        let bytes = p.encode();
        assert_eq!(&bytes[..8], &[2, 1, 4, 3, 0, 0, 0, 0]);
        assert_eq!(PolicyV2::decode(&bytes).unwrap(), p);
    }

    #[test]
    fn rejects_what_linux_rejects() {
        let good = PolicyV2::new(
            ContentsMode::Aes256Xts,
            FilenamesMode::Aes256Cts,
            0,
            0,
            id(),
        )
        .unwrap()
        .encode();
        let mut bad = good;
        bad[0] = 3;
        assert!(PolicyV2::decode(&bad).is_err());
        let mut bad = good;
        bad[6] = 1;
        assert!(PolicyV2::decode(&bad).is_err(), "reserved byte");
        let mut bad = good;
        bad[3] = 0x20;
        assert!(PolicyV2::decode(&bad).is_err(), "unknown flag");
        let mut bad = good;
        bad[3] = FLAG_IV_INO_LBLK_32 | FLAG_IV_INO_LBLK_64;
        assert!(PolicyV2::decode(&bad).is_err(), "exclusive flags");
        let mut bad = good;
        bad[3] = FLAG_DIRECT_KEY;
        assert!(PolicyV2::decode(&bad).is_err(), "DIRECT_KEY with XTS");
        let mut bad = good;
        bad[2] = 6;
        assert!(PolicyV2::decode(&bad).is_err(), "mode pair");
        let mut bad = good;
        bad[1] = 2;
        assert!(PolicyV2::decode(&bad).is_err(), "legacy GCM mode");
        let mut bad = good;
        bad[4] = 8;
        assert!(PolicyV2::decode(&bad).is_err(), "data unit 256");
        assert!(PolicyV2::decode(&good[..23]).is_err());
        let mut v1 = [0u8; 12];
        v1[1] = 1;
        assert!(PolicyV2::decode(&v1).is_err());
        // Adiantum with DIRECT_KEY is fine.
        let mut ok = good;
        ok[1] = 9;
        ok[2] = 9;
        ok[3] = FLAG_DIRECT_KEY;
        assert!(PolicyV2::decode(&ok).is_ok());
    }

    #[test]
    fn fits_like_ext4() {
        let ext4 = FsCapabilities {
            block_size_bits: 12,
            supports_subblock_data_units: true,
            has_stable_inodes: true,
            ino_bits: 32,
            max_file_size_bits: 44,
            per_extent_encryption: false,
        };
        let lblk64_du512 = PolicyV2::new(
            ContentsMode::Aes256Xts,
            FilenamesMode::Aes256Cts,
            FLAG_IV_INO_LBLK_64 | 3,
            9,
            id(),
        )
        .unwrap();
        // 44 - 9 = 35 bits of data unit index: the kernel answers EINVAL (seen in its vectors).
        assert!(lblk64_du512.check_fits(&ext4).is_err());
        let lblk64 = PolicyV2::new(
            ContentsMode::Aes256Xts,
            FilenamesMode::Aes256Cts,
            FLAG_IV_INO_LBLK_64,
            0,
            id(),
        )
        .unwrap();
        assert!(lblk64.check_fits(&ext4).is_ok());
        let per_extent = FsCapabilities {
            per_extent_encryption: true,
            ..ext4
        };
        assert!(lblk64.check_fits(&per_extent).is_err());
    }

    proptest::proptest! {
        /// Any bytes: a typed error or a policy that re-encodes to exactly those bytes.
        #[test]
        fn decode_random_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            if let Ok(p) = PolicyV2::decode(&bytes) {
                proptest::prop_assert_eq!(&p.encode()[..], &bytes[..]);
            }
        }

        /// Near-valid policies (random flags, modes and reserved bytes over a good one) exercise
        /// every rule rather than stopping at the version byte.
        #[test]
        fn decode_mutated_policy(mode_c in 0u8..12, mode_f in 0u8..12, flags in proptest::num::u8::ANY,
                                 du in 0u8..16, reserved in proptest::num::u8::ANY) {
            let mut bytes = [0u8; 24];
            bytes[0] = 2;
            bytes[1] = mode_c;
            bytes[2] = mode_f;
            bytes[3] = flags;
            bytes[4] = du;
            bytes[5] = reserved;
            if let Ok(p) = PolicyV2::decode(&bytes) {
                proptest::prop_assert_eq!(p.encode(), bytes);
                proptest::prop_assert_eq!(reserved, 0);
            }
        }
    }
}
