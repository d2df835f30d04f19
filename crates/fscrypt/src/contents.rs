//! File contents encryption: a data unit at a time, with the IV its policy prescribes.
//!
//! [`ContentsCipher`] is a prepared contents key (key schedule done once). cowcrypt encrypts
//! extents with it and IVs counted inside the extent ([`crate::extent`]). [`LinuxFileContents`]
//! is Linux's per-inode scheme (IVs from the file offset, optionally the inode number), kept so
//! that cowcrypt's ciphertext can be checked byte for byte against the kernel's.
//!
//! Implemented contents modes: AES-256-XTS. AES-128-CBC-ESSIV, SM4-XTS and Adiantum are valid
//! Linux modes that cowcrypt decodes in policies but refuses to use (`UnsupportedMode`).

use crate::context::InodeContext;
use crate::error::{Error, Result};
use crate::iv::FscryptIv;
use crate::keysetup::{self, FS_UUID_SIZE, RawKey};
use crate::master_key::MasterKey;
use crate::policy::{ContentsMode, IvScheme};
use crate::xts::Aes256Xts;

/// A prepared contents key.
#[derive(Clone, Debug)]
pub struct ContentsCipher {
    xts: Aes256Xts,
}

impl ContentsCipher {
    /// Prepares `key` (as long as the mode's key size) for `mode`.
    pub fn new(mode: ContentsMode, key: &RawKey) -> Result<Self> {
        match mode {
            ContentsMode::Aes256Xts => Ok(ContentsCipher {
                xts: Aes256Xts::from_bytes(key.expose())?,
            }),
            other => Err(Error::UnsupportedMode(other.number())),
        }
    }

    /// Encrypts one data unit in place with an explicit IV.
    pub fn encrypt_unit(&self, iv: &FscryptIv, data: &mut [u8]) -> Result<()> {
        self.xts.encrypt(&iv.first16(), data)
    }

    /// Decrypts one data unit in place with an explicit IV.
    pub fn decrypt_unit(&self, iv: &FscryptIv, data: &mut [u8]) -> Result<()> {
        self.xts.decrypt(&iv.first16(), data)
    }

    /// Encrypts consecutive data units of `du_size` bytes whose indices start at `first_index`,
    /// each with IV = le64(index) (per-file and per-extent keys).
    pub fn encrypt_units(&self, first_index: u64, du_size: usize, data: &mut [u8]) -> Result<()> {
        self.xts.encrypt_data_units(first_index, du_size, data)
    }

    /// Decrypts what [`ContentsCipher::encrypt_units`] encrypted.
    pub fn decrypt_units(&self, first_index: u64, du_size: usize, data: &mut [u8]) -> Result<()> {
        self.xts.decrypt_data_units(first_index, du_size, data)
    }
}

/// The filesystem facts Linux mixes into keys and IVs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsParams {
    /// The filesystem UUID (`sb->s_uuid`), for IV_INO_LBLK_* keys.
    pub uuid: [u8; FS_UUID_SIZE],
    /// log2 of the block size, the data unit size when the policy does not set one.
    pub block_size_bits: u8,
}

/// Linux's contents encryption of one regular file: the per-file or per-mode key of its policy
/// and IVs from the data unit's index in the file (and the inode number, for IV_INO_LBLK_*).
#[derive(Debug, Clone)]
pub struct LinuxFileContents {
    cipher: ContentsCipher,
    scheme: IvScheme,
    nonce: [u8; 16],
    ino: u64,
    hashed_ino: u32,
    data_unit_bits: u8,
}

impl LinuxFileContents {
    /// Sets up the contents key of inode `ino` with context `ctx`, as Linux's
    /// `fscrypt_setup_encryption_info` does for a regular file.
    pub fn new(master: &MasterKey, ctx: &InodeContext, ino: u64, fs: &FsParams) -> Result<Self> {
        let policy = ctx.policy();
        if policy.master_key_identifier() != &master.identifier() {
            return Err(Error::NoKey);
        }
        let mode = policy.contents_mode().info();
        let scheme = policy.iv_scheme();
        let key = match scheme {
            IvScheme::PerFileKey => keysetup::per_file_key(master, &mode, ctx.nonce())?,
            IvScheme::DirectKey => keysetup::direct_key(master, &mode)?,
            IvScheme::InoLblk64 => keysetup::ino_lblk_64_key(master, &mode, &fs.uuid)?,
            IvScheme::InoLblk32 => keysetup::ino_lblk_32_key(master, &mode, &fs.uuid)?,
        };
        let hashed_ino = match scheme {
            IvScheme::InoLblk32 => keysetup::hashed_ino(&keysetup::inode_hash_key(master), ino),
            _ => 0,
        };
        Ok(LinuxFileContents {
            cipher: ContentsCipher::new(policy.contents_mode(), &key)?,
            scheme,
            nonce: *ctx.nonce(),
            ino,
            hashed_ino,
            data_unit_bits: policy.data_unit_bits(fs.block_size_bits),
        })
    }

    /// The data unit size in bytes.
    pub fn data_unit_size(&self) -> usize {
        1 << self.data_unit_bits
    }

    /// The IV of the data unit with this index (file offset / data unit size).
    pub fn iv(&self, index: u64) -> Result<FscryptIv> {
        let small = |what: &'static str, v: u64| {
            u32::try_from(v).map_err(|_| Error::invalid(what, "does not fit in 32 bits"))
        };
        Ok(match self.scheme {
            IvScheme::PerFileKey => FscryptIv::from_index(index),
            IvScheme::DirectKey => FscryptIv::direct_key(index, &self.nonce),
            IvScheme::InoLblk64 => FscryptIv::ino_lblk_64(
                small("data unit index", index)?,
                small("inode number", self.ino)?,
            ),
            IvScheme::InoLblk32 => {
                FscryptIv::ino_lblk_32(self.hashed_ino, small("data unit index", index)?)
            }
        })
    }

    /// Encrypts the data unit at `index` in place.
    pub fn encrypt_unit(&self, index: u64, data: &mut [u8]) -> Result<()> {
        self.check_len(data)?;
        self.cipher.encrypt_unit(&self.iv(index)?, data)
    }

    /// Decrypts the data unit at `index` in place.
    pub fn decrypt_unit(&self, index: u64, data: &mut [u8]) -> Result<()> {
        self.check_len(data)?;
        self.cipher.decrypt_unit(&self.iv(index)?, data)
    }

    fn check_len(&self, data: &[u8]) -> Result<()> {
        if data.len() != self.data_unit_size() {
            return Err(Error::BadLength {
                what: "data unit",
                got: data.len(),
                expected: self.data_unit_size(),
            });
        }
        Ok(())
    }
}
