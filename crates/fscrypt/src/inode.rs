//! Per-inode crypt state: the policy an inode was created under, its nonce, and for directories
//! and symlinks the key that encrypts names (a directory's entries, a symlink's target).
//!
//! Contents are not here: cowcrypt encrypts contents per extent ([`crate::extent`]), so an
//! inode never holds a contents key. Linux's per-inode contents scheme, kept for checking
//! against the kernel, is [`crate::contents::LinuxFileContents`].

use std::sync::Arc;

use crate::common::CryptCommon;
use crate::contents::FsParams;
use crate::context::{InodeContext, NONCE_SIZE};
use crate::error::{Error, Result};
use crate::fname::FilenameCipher;
use crate::hkdf;
use crate::iv::FscryptIv;
use crate::keyring::DerivedSlot;
use crate::keysetup;
use crate::master_key::MasterKey;
use crate::policy::IvScheme;

/// The kinds of inode fscrypt encrypts. Other kinds (devices, FIFOs, sockets) never are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InodeKind {
    /// A regular file: contents encrypted (per extent in cowcrypt).
    Regular,
    /// A directory: entry names encrypted.
    Directory,
    /// A symbolic link: target encrypted.
    Symlink,
}

/// The names key of a directory or symlink inode exactly as Linux sets it up: the policy's
/// filenames mode, a per-file key (or per-mode key for DIRECT_KEY and IV_INO_LBLK_*), and the
/// IV of index 0 for that scheme.
pub fn filenames_cipher(
    master: &MasterKey,
    ctx: &InodeContext,
    ino: u64,
    fs: &FsParams,
) -> Result<FilenameCipher> {
    let policy = ctx.policy();
    if policy.master_key_identifier() != &master.identifier() {
        return Err(Error::NoKey);
    }
    let mode = policy.filenames_mode().info();
    let (key, iv) = match policy.iv_scheme() {
        IvScheme::PerFileKey => (
            keysetup::per_file_key(master, &mode, ctx.nonce())?,
            FscryptIv::from_index(0),
        ),
        IvScheme::DirectKey => (
            keysetup::direct_key(master, &mode)?,
            FscryptIv::direct_key(0, ctx.nonce()),
        ),
        IvScheme::InoLblk64 => {
            let ino = u32::try_from(ino)
                .map_err(|_| Error::invalid("inode number", "does not fit in 32 bits"))?;
            (
                keysetup::ino_lblk_64_key(master, &mode, &fs.uuid)?,
                FscryptIv::ino_lblk_64(0, ino),
            )
        }
        IvScheme::InoLblk32 => {
            let hashed = keysetup::hashed_ino(&keysetup::inode_hash_key(master), ino);
            (
                keysetup::ino_lblk_32_key(master, &mode, &fs.uuid)?,
                FscryptIv::ino_lblk_32(hashed, 0),
            )
        }
    };
    FilenameCipher::new(policy.filenames_mode(), key.expose(), &iv)
}

/// The crypt state of one inode.
#[derive(Debug, Clone)]
pub struct InodeCryptInfo {
    common: CryptCommon,
    nonce: [u8; NONCE_SIZE],
    ino: u64,
    kind: InodeKind,
    names: Option<Arc<FilenameCipher>>,
}

impl InodeCryptInfo {
    /// Sets up an inode's crypt state from its stored context. The names key of a directory or
    /// symlink comes from the keyring's bounded cache of derived keys.
    pub fn new(
        common: CryptCommon,
        ctx: &InodeContext,
        ino: u64,
        kind: InodeKind,
        fs: &FsParams,
    ) -> Result<Self> {
        if ctx.policy() != common.policy() {
            return Err(Error::invalid(
                "inode context",
                "policy differs from the crypt state's",
            ));
        }
        let names = match kind {
            InodeKind::Regular => None,
            InodeKind::Directory | InodeKind::Symlink => {
                // Everything the names key depends on identifies the cache slot, but the
                // filesystem UUID: a keyring serves exactly one filesystem.
                let mut info = Vec::with_capacity(2 + NONCE_SIZE + 8);
                info.push(ctx.policy().flags());
                info.push(ctx.policy().filenames_mode().number());
                info.extend_from_slice(ctx.nonce());
                info.extend_from_slice(&ino.to_le_bytes());
                let slot = DerivedSlot {
                    context: hkdf::CONTEXT_PER_FILE_ENC_KEY,
                    info,
                };
                Some(
                    common
                        .key()
                        .derived(&slot, |mk| filenames_cipher(mk, ctx, ino, fs))?,
                )
            }
        };
        Ok(InodeCryptInfo {
            common,
            nonce: *ctx.nonce(),
            ino,
            kind,
            names,
        })
    }

    /// The policy and master key pin shared with this inode's extents.
    pub fn common(&self) -> &CryptCommon {
        &self.common
    }

    /// The inode's nonce.
    pub fn nonce(&self) -> &[u8; NONCE_SIZE] {
        &self.nonce
    }

    /// The inode number the state was set up for.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// What kind of inode this is.
    pub fn kind(&self) -> InodeKind {
        self.kind
    }

    /// The names key of a directory or symlink.
    pub fn filenames(&self) -> Result<&FilenameCipher> {
        self.names
            .as_deref()
            .ok_or_else(|| Error::invalid("inode", "a regular file has no names key"))
    }
}
