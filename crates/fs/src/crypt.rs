//! Encryption policies and encrypted contents (DESIGN.md "Encryption").
//!
//! A directory (empty, as the kernel requires) or a subvolume's root directory (empty or not)
//! carries a v2 context: the policy plus a nonce. New inodes under an encrypted directory get a
//! context of their own with a fresh nonce. A file's *effective* policy is its own context's, or,
//! in a subvolume whose root is encrypted, the root's: so a file of a plaintext snapshot turned
//! encrypted keeps its old extents plaintext and shared, while everything written to it from then
//! on is encrypted. Every new extent under a policy gets its own random nonce and its own key,
//! derived from the master key with HKDF (the fscrypt crate's [`ExtentCryptInfo`]); the store's
//! data path encrypts and decrypts through [`ExtentCipher`], so no ciphertext is handled here.
//!
//! Open files pin their master key (a [`CryptCommon`] per open inode): that is what keeps a
//! removed key INCOMPLETELY_REMOVED until the last one closes. Names are not encrypted yet.

use fscrypt::common::CryptCommon;
use fscrypt::contents::FsParams;
use fscrypt::context::InodeContext;
use fscrypt::extent::{ExtentContext, ExtentCryptInfo};
use fscrypt::inode::{InodeCryptInfo, InodeKind};
use fscrypt::nokey::NoKeyName;
use fscrypt::policy::{FsCapabilities, PolicyV2};
use fscrypt::symlink;
use store::{CryptError, DataCrypt, Key};

use crate::error::{Error, Result};
use crate::items::{INODE_FLAG_ENCRYPTED_NAMES, ROOT_OBJECTID, SYMLINK_MAX, ty};
use crate::state::{State, global, local, subvol_of};
use crate::types::{Caller, FileKind};

/// log2 of the filesystem block size (data units may not be larger).
pub(crate) const BLOCK_BITS: u8 = 12;

/// What this filesystem offers a policy (Linux checks the same against the superblock).
fn capabilities() -> FsCapabilities {
    FsCapabilities {
        block_size_bits: BLOCK_BITS,
        supports_subblock_data_units: true,
        has_stable_inodes: true,
        ino_bits: 64,
        max_file_size_bits: 52,
        per_extent_encryption: true,
    }
}

/// A refusal of the fscrypt crate as the errno the kernel gives.
pub(crate) fn crypt_error(e: fscrypt::Error) -> Error {
    match e {
        fscrypt::Error::NoKey => Error::NoKey,
        fscrypt::Error::PermissionDenied(_) => Error::Access,
        _ => Error::Invalid("encryption policy or context refused"),
    }
}

/// An extent's contents key as the store's data path wants it.
pub(crate) struct ExtentCipher<'a>(pub &'a ExtentCryptInfo);

impl DataCrypt for ExtentCipher<'_> {
    fn data_unit_size(&self) -> usize {
        self.0.data_unit_size()
    }
    fn encrypt(&self, first_data_unit: u64, buf: &mut [u8]) -> std::result::Result<(), CryptError> {
        let at = first_data_unit * self.0.data_unit_size() as u64;
        self.0
            .encrypt(at, buf)
            .map_err(|e| CryptError(e.to_string()))
    }
    fn decrypt(&self, first_data_unit: u64, buf: &mut [u8]) -> std::result::Result<(), CryptError> {
        let at = first_data_unit * self.0.data_unit_size() as u64;
        self.0
            .decrypt(at, buf)
            .map_err(|e| CryptError(e.to_string()))
    }
    fn tag_size(&self) -> usize {
        if self.0.authenticator().is_some() {
            fscrypt::extent::MAC_SIZE
        } else {
            0
        }
    }
    fn seal(
        &self,
        first_data_unit: u64,
        ciphertext: &[u8],
        tags: &mut [u8],
    ) -> std::result::Result<(), CryptError> {
        match self.0.authenticator() {
            Some(a) => a
                .seal(first_data_unit, self.0.data_unit_size(), ciphertext, tags)
                .map_err(|e| CryptError(e.to_string())),
            None => Ok(()),
        }
    }
    fn check(
        &self,
        first_data_unit: u64,
        ciphertext: &[u8],
        tags: &[u8],
    ) -> std::result::Result<(), Option<u64>> {
        match self.0.authenticator() {
            Some(a) => a
                .verify(first_data_unit, self.0.data_unit_size(), ciphertext, tags)
                .map_err(|e| match e {
                    fscrypt::Error::AuthenticationFailed { data_unit } => Some(data_unit),
                    _ => None,
                }),
            None => Ok(()),
        }
    }
}

impl State {
    /// The inode's own context, if it has one.
    pub(crate) fn inode_context(&mut self, obj: u64) -> Result<Option<InodeContext>> {
        let key = Key::new(obj, ty::CRYPT_CONTEXT, 0);
        match self.get(&key)? {
            None => Ok(None),
            Some(v) => InodeContext::decode(&v)
                .map(Some)
                .map_err(|e| Error::corrupt(&key, e.to_string())),
        }
    }

    fn put_context(&mut self, obj: u64, ctx: &InodeContext) -> Result<()> {
        self.put(Key::new(obj, ty::CRYPT_CONTEXT, 0), &ctx.encode())
    }

    /// The policy new data of `obj` is written under: its own, or its subvolume root's.
    pub(crate) fn effective_policy(&mut self, obj: u64) -> Result<Option<PolicyV2>> {
        if let Some(c) = self.inode_context(obj)? {
            return Ok(Some(*c.policy()));
        }
        let root = global(subvol_of(obj), ROOT_OBJECTID);
        if root != obj
            && let Some(c) = self.inode_context(root)?
        {
            return Ok(Some(*c.policy()));
        }
        Ok(None)
    }

    /// The policy with its master key pinned: the open file's pin, or a new one (ENOKEY when
    /// the key is not present).
    pub(crate) fn crypt_common(&mut self, obj: u64) -> Result<Option<CryptCommon>> {
        if let Some(c) = self.crypt.get(&obj) {
            return Ok(Some(c.clone()));
        }
        let Some(policy) = self.effective_policy(obj)? else {
            return Ok(None);
        };
        let key = self
            .keyring
            .unlock(policy.master_key_identifier())
            .map_err(crypt_error)?;
        Ok(Some(CryptCommon::new(policy, key).map_err(crypt_error)?))
    }

    /// Called when `obj` is opened: an encrypted file needs its key (ENOKEY otherwise), and the
    /// open file pins it.
    pub(crate) fn pin_for_open(&mut self, obj: u64) -> Result<()> {
        if self.crypt.contains_key(&obj) {
            // Already open: a new open still needs the key present (a key being removed lets
            // the open files go on, and nothing new start).
            return self.require_key_for(obj);
        }
        if let Some(c) = self.crypt_common(obj)? {
            self.crypt.insert(obj, c);
        }
        Ok(())
    }

    /// Called when the last handle of `obj` goes. Buffered data usually stays (with the pin)
    /// for the next commit; but a key being removed waits for this file, so its data is
    /// written now and the close completes the removal, as Linux's eviction of the inode does.
    pub(crate) fn unpin_after_close(&mut self, obj: u64) -> Result<()> {
        if self
            .crypt
            .get(&obj)
            .is_some_and(|c| c.key().is_being_removed())
        {
            self.flush_data(obj)?;
        }
        self.release_idle_pin(obj);
        Ok(())
    }

    /// Drops the pin of `obj` once nothing needs it: no handle is open and no buffered data
    /// waits for the key. A closed file with buffered data keeps its pin until its flush (the
    /// next commit, or a key removal, which flushes first), so closing does not cost a write of
    /// its own, as closing a plaintext file does not.
    pub(crate) fn release_idle_pin(&mut self, obj: u64) {
        if !self.opens.contains_key(&obj) && !self.dirty.contains_key(&obj) {
            self.crypt.remove(&obj);
        }
    }

    /// Writes the buffered data of every closed file still pinned for it, which drops those
    /// pins: what Linux's key removal gets by syncing the filesystem before it counts the
    /// files in use.
    pub(crate) fn flush_closed_pinned(&mut self) -> Result<()> {
        let idle: Vec<u64> = self
            .crypt
            .keys()
            .copied()
            .filter(|obj| !self.opens.contains_key(obj))
            .collect();
        for obj in idle {
            self.flush_data(obj)?;
        }
        Ok(())
    }

    /// The crypt state of a stored extent of `obj` from its context bytes.
    pub(crate) fn stored_extent_crypt(
        &mut self,
        obj: u64,
        context: &[u8],
    ) -> Result<ExtentCryptInfo> {
        let ctx = ExtentContext::decode(context)
            .map_err(|e| Error::corrupt(&Key::new(obj, ty::FILE_EXTENT, 0), e.to_string()))?;
        // The extent names its own key: that key, and its modes, whatever the inode's policy.
        let common = match self.crypt_common(obj)? {
            Some(c) if c.policy().master_key_identifier() == ctx.master_key_identifier() => c,
            _ => return Err(Error::NoKey),
        };
        ExtentCryptInfo::load(&common, &ctx, BLOCK_BITS).map_err(crypt_error)
    }

    /// A new inode made in `parent` inherits its encryption: its own context, a fresh nonce.
    /// ENOKEY when the parent is encrypted and its key is not present (as Linux refuses
    /// creating in an encrypted directory without the key).
    pub(crate) fn inherit_policy(&mut self, parent: u64, child: u64, kind: FileKind) -> Result<()> {
        let Some(policy) = self.effective_policy(parent)? else {
            return Ok(());
        };
        if !matches!(kind, FileKind::File | FileKind::Dir | FileKind::Symlink) {
            return Ok(());
        }
        let ctx = InodeContext::new_random(policy).map_err(crypt_error)?;
        self.put_context(child, &ctx)
    }

    /// Refuses a name in encrypted directory `parent` without the key (create, mkdir...).
    pub(crate) fn require_key_for(&mut self, parent: u64) -> Result<()> {
        if let Some(policy) = self.effective_policy(parent)?
            && !self
                .keyring
                .key_status(
                    policy.master_key_identifier(),
                    fscrypt::keyring::Caller {
                        uid: 0,
                        is_admin: true,
                    },
                )
                .state
                .eq(&fscrypt::keyring::KeyState::Present)
        {
            return Err(Error::NoKey);
        }
        Ok(())
    }

    /// FS_IOC_SET_ENCRYPTION_POLICY on directory `obj`: an empty directory, or a subvolume's
    /// root (empty or not). Errors as Linux: ENOTDIR, EACCES (not the owner), EEXIST (another
    /// policy), ENOTEMPTY, ENOKEY (the key is not added by the caller), EINVAL (bad policy).
    pub(crate) fn set_policy(&mut self, obj: u64, policy: PolicyV2, c: &Caller) -> Result<()> {
        self.writable(obj)?;
        let it = self.inode(obj)?;
        if it.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        if c.uid != 0 && c.uid != it.uid {
            return Err(Error::Access);
        }
        policy.check_fits(&capabilities()).map_err(crypt_error)?;
        if let Some(have) = self.inode_context(obj)? {
            return if *have.policy() == policy {
                Ok(())
            } else {
                Err(Error::Exists)
            };
        }
        let subvol_root = local(obj) == ROOT_OBJECTID;
        if !subvol_root && self.dir_has_entries(obj)? {
            return Err(Error::NotEmpty);
        }
        // A directory inside an encrypted subvolume already has that policy.
        if let Some(have) = self.effective_policy(obj)? {
            return if have == policy {
                Ok(())
            } else {
                Err(Error::Exists)
            };
        }
        let status = self.keyring.key_status(
            policy.master_key_identifier(),
            fscrypt::keyring::Caller {
                uid: c.uid,
                is_admin: c.uid == 0,
            },
        );
        if status.state != fscrypt::keyring::KeyState::Present
            || (!status.added_by_self && c.uid != 0)
        {
            return Err(Error::NoKey);
        }
        let ctx = InodeContext::new_random(policy).map_err(crypt_error)?;
        self.put_context(obj, &ctx)?;
        // Names are encrypted from the start only: a non-empty subvolume root keeps its
        // existing (plaintext) names and so stores new ones plainly too.
        if !self.dir_has_entries(obj)? {
            let mut it = self.inode(obj)?;
            it.flags |= INODE_FLAG_ENCRYPTED_NAMES;
            self.put_inode(obj, &it)?;
        }
        Ok(())
    }

    /// Whether a link or rename of `child` into `dir` keeps encryption consistent: into an
    /// encrypted directory only inodes of the same policy go (EXDEV otherwise), as Linux's
    /// `fscrypt_has_permitted_context`.
    pub(crate) fn check_permitted_context(&mut self, dir: u64, child: u64) -> Result<()> {
        let Some(want) = self.effective_policy(dir)? else {
            return Ok(());
        };
        match self.effective_policy(child)? {
            Some(have) if have == want => Ok(()),
            _ => Err(Error::CrossDevice),
        }
    }

    /// Reflink rule: encrypted extents go only where the same master key and modes rule.
    pub(crate) fn check_reflink(&mut self, dst: u64, context: &[u8]) -> Result<()> {
        let ctx = ExtentContext::decode(context)
            .map_err(|e| Error::corrupt(&Key::new(dst, ty::FILE_EXTENT, 0), e.to_string()))?;
        match self.effective_policy(dst)? {
            Some(p) if ctx.check_matches(&p).is_ok() => Ok(()),
            _ => Err(Error::CrossDevice),
        }
    }

    /// The names cipher of encrypted symlink `obj` (its own per-file key), or `None` when it
    /// is not encrypted; ENOKEY without the key.
    fn symlink_cipher(&mut self, obj: u64) -> Result<Option<InodeCryptInfo>> {
        let Some(ctx) = self.inode_context(obj)? else {
            return Ok(None);
        };
        self.inode_crypt_info(obj, &ctx, InodeKind::Symlink)
            .map(Some)
    }

    /// The crypt state of inode `obj` with context `ctx`: its names key (ENOKEY without the
    /// master key).
    fn inode_crypt_info(
        &mut self,
        obj: u64,
        ctx: &InodeContext,
        kind: InodeKind,
    ) -> Result<InodeCryptInfo> {
        let key = self
            .keyring
            .unlock(ctx.policy().master_key_identifier())
            .map_err(crypt_error)?;
        let common = CryptCommon::new(*ctx.policy(), key).map_err(crypt_error)?;
        // The UUID only enters IV_INO_LBLK_* keys, which per-extent policies refuse.
        let fs = FsParams {
            uuid: [0; 16],
            block_size_bits: BLOCK_BITS,
        };
        InodeCryptInfo::new(common, ctx, local(obj), kind, &fs).map_err(crypt_error)
    }

    /// The bytes to store for symlink `obj`'s target: Linux's encrypted blob when the symlink
    /// is encrypted (length word, padded CTS/HCTR2 ciphertext, NUL), else the target itself.
    pub(crate) fn symlink_to_store(&mut self, obj: u64, target: &[u8]) -> Result<Vec<u8>> {
        let Some(info) = self.symlink_cipher(obj)? else {
            return Ok(target.to_vec());
        };
        let padding = info.common().policy().padding();
        let cipher = info.filenames().map_err(crypt_error)?;
        symlink::encrypt_target(cipher, target, padding, SYMLINK_MAX).map_err(|e| match e {
            fscrypt::Error::NameTooLong { .. } => Error::NameTooLong,
            e => crypt_error(e),
        })
    }

    /// ENAMETOOLONG when `target`, encrypted under `parent`'s policy, would not fit.
    pub(crate) fn check_symlink_fits(&mut self, parent: u64, target: &[u8]) -> Result<()> {
        if let Some(p) = self.effective_policy(parent)? {
            symlink::encrypted_symlink_size(target.len(), p.padding(), SYMLINK_MAX)
                .map_err(|_| Error::NameTooLong)?;
        }
        Ok(())
    }

    /// What readlink shows for stored bytes of symlink `obj`: the target, decrypted when it is
    /// encrypted; without the key, the no-key form of the ciphertext (as Linux shows it).
    pub(crate) fn symlink_from_store(&mut self, obj: u64, stored: Vec<u8>) -> Result<Vec<u8>> {
        if self.inode_context(obj)?.is_none() {
            return Ok(stored);
        }
        let corrupt =
            |e: fscrypt::Error| Error::corrupt(&Key::new(obj, ty::SYMLINK, 0), e.to_string());
        match self.symlink_cipher(obj) {
            Ok(Some(info)) => {
                let cipher = info.filenames().map_err(crypt_error)?;
                symlink::decrypt_target(cipher, &stored, SYMLINK_MAX).map_err(corrupt)
            }
            Ok(None) => Ok(stored),
            Err(Error::NoKey) => symlink::nokey_target(&stored, SYMLINK_MAX)
                .map(String::into_bytes)
                .map_err(corrupt),
            Err(e) => Err(e),
        }
    }

    /// Whether directory `dir` stores its entry names encrypted.
    pub(crate) fn names_encrypted(&mut self, dir: u64) -> Result<bool> {
        Ok(self.inode(dir)?.flags & INODE_FLAG_ENCRYPTED_NAMES != 0)
    }

    /// The names cipher of encrypted directory `dir`; ENOKEY without the key.
    fn dir_names(&mut self, dir: u64) -> Result<InodeCryptInfo> {
        let ctx = self.inode_context(dir)?.ok_or_else(|| {
            Error::corrupt(&Key::new(dir, ty::INODE, 0), "encrypted names, no context")
        })?;
        self.inode_crypt_info(dir, &ctx, InodeKind::Directory)
    }

    /// The stored form of `name` in directory `dir`: itself, or in an encrypted directory its
    /// padded ciphertext. Without the key a new name is ENOKEY, while an existing entry is
    /// found by its no-key name (as Linux's lookup, unlink and rmdir do).
    pub(crate) fn stored_name(&mut self, dir: u64, name: &[u8], creating: bool) -> Result<Vec<u8>> {
        if name == b"." || name == b".." || !self.names_encrypted(dir)? {
            return Ok(name.to_vec());
        }
        match self.dir_names(dir) {
            Ok(info) => {
                let padding = info.common().policy().padding();
                let cipher = info.filenames().map_err(crypt_error)?;
                cipher
                    .encrypt(name, padding, crate::types::NAME_MAX)
                    .map_err(|_| Error::NameTooLong)
            }
            Err(Error::NoKey) if !creating => {
                let nk = NoKeyName::decode(name).ok_or(Error::NotFound)?;
                if let Some(d) = nk.disk_name() {
                    return Ok(d.to_vec());
                }
                // An abbreviated no-key name: the entry whose ciphertext it matches.
                let mut after = 0;
                loop {
                    let page = self.dir_entries(dir, after, 512)?;
                    let Some(last) = page.last() else {
                        return Err(Error::NotFound);
                    };
                    after = last.index;
                    if let Some(e) = page.iter().find(|e| nk.matches(&e.name)) {
                        return Ok(e.name.clone());
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// What readdir shows for a stored name of `dir`: decrypted with the key, the no-key name
    /// of its ciphertext without it.
    pub(crate) fn shown_name(&mut self, dir: u64, stored: Vec<u8>) -> Result<Vec<u8>> {
        if !self.names_encrypted(dir)? {
            return Ok(stored);
        }
        match self.dir_names(dir) {
            Ok(info) => {
                let cipher = info.filenames().map_err(crypt_error)?;
                cipher
                    .decrypt(&stored)
                    .map_err(|e| Error::corrupt(&Key::new(dir, ty::DIR_INDEX, 0), e.to_string()))
            }
            Err(Error::NoKey) => Ok(fscrypt::nokey::encode(&stored, 0, 0).into_bytes()),
            Err(e) => Err(e),
        }
    }

    /// Bytes of `obj`'s extents that are still plaintext (for `policy` on a subvolume).
    pub(crate) fn plaintext_bytes(&mut self, obj: u64) -> Result<u64> {
        let mut n = 0;
        for (_, fe) in self.extents(obj, 0, u64::MAX)? {
            if fe.crypt.is_none() && fe.kind == crate::items::ExtentKind::Regular {
                n += fe.len;
            }
        }
        Ok(n)
    }
}
