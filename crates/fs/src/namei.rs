//! Operations on names: lookup, making inodes of every kind, links, unlink, rmdir, rename
//! (with RENAME_NOREPLACE and RENAME_EXCHANGE), symlink targets.
//!
//! Each operation checks in a fixed order (name, permissions, existence, kind) before it changes
//! anything, so a refusal leaves the transaction untouched.

use store::Key;

use crate::acl;
use crate::error::{Error, Result};
use crate::items::{
    self, DirEntryItem, EMPTY_DIR_OBJECTID, ROOT_OBJECTID, SYMLINK_CHUNK, SYMLINK_MAX, ty,
};
use crate::perm::{MAY_WRITE, sticky_ok};
use crate::state::{State, check_name, local, subvol_of};
use crate::types::{Attr, Caller, FileKind, RenameFlags, Timespec};

/// Most links one inode may have (ext4's limit).
pub(crate) const LINK_MAX: u32 = 65000;

fn dot(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

impl State {
    pub(crate) fn lookup(&mut self, parent: u64, name: &[u8], c: &Caller) -> Result<Attr> {
        check_name(name)?;
        self.search(parent, c)?;
        let name: &[u8] = &self.stored_name(parent, name, false)?;
        let obj = match name {
            b"." => parent,
            b".." => self.parent_of(parent)?,
            _ => self.find_entry(parent, name)?.ok_or(Error::NotFound)?.child,
        };
        let a = self.getattr_obj(obj)?;
        self.looked_up(obj);
        Ok(a)
    }

    /// Makes an inode of `kind` named `name` in `parent`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn make(
        &mut self,
        parent: u64,
        name: &[u8],
        kind: FileKind,
        mode: u32,
        rdev: u32,
        target: Option<&[u8]>,
        c: &Caller,
    ) -> Result<Attr> {
        check_name(name)?;
        // Stored encrypted in an encrypted directory (ENOKEY without the key).
        let name: &[u8] = &self.stored_name(parent, name, true)?;
        if let Some(t) = target {
            if t.len() > SYMLINK_MAX {
                return Err(Error::NameTooLong);
            }
            if t.is_empty() {
                return Err(Error::NotFound);
            }
        }
        self.writable(parent)?;
        let d = self.may_change_dir(parent, c)?;
        if d.nlink == 0 {
            return Err(Error::NotFound);
        }
        if dot(name) || self.find_entry(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        // No new names in an encrypted directory without its key (ENOKEY, as Linux).
        self.require_key_for(parent)?;
        if let Some(t) = target {
            // An encrypted target must fit once padded and encrypted: refused before any change.
            self.check_symlink_fits(parent, t)?;
        }
        if kind == FileKind::Dir && d.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        let mut mode = mode & 0o7777;
        if kind == FileKind::Dir {
            // mkdir ignores setuid and setgid; setgid comes from the parent below.
            mode &= !0o6000;
        }
        let (mut perm, access, default) = self.new_inode_mode(parent, mode, kind, c)?;
        if kind == FileKind::Symlink {
            // A symlink's mode is always 0777: neither the umask nor an ACL applies.
            perm = 0o777;
        }
        let mut gid = c.gid;
        if d.perm & 0o2000 != 0 {
            gid = d.gid;
            if kind == FileKind::Dir {
                perm |= 0o2000;
            }
        }
        if kind != FileKind::Dir && perm & 0o2000 != 0 && c.uid != 0 && !c.in_group(gid) {
            perm &= !0o2000;
        }
        let (obj, mut it) = self.new_inode(subvol_of(parent), kind, perm, c.uid, gid, rdev)?;
        self.inherit_policy(parent, obj, kind)?;
        if kind == FileKind::Dir && self.effective_policy(parent)?.is_some() {
            // Made under a policy: its names are encrypted from the start.
            it.flags |= crate::items::INODE_FLAG_ENCRYPTED_NAMES;
            self.put_inode(obj, &it)?;
        }
        if let Some(a) = access {
            self.put_xattr(obj, acl::ACCESS_XATTR, Some(&a.encode()))?;
        }
        if let Some(d) = default {
            self.put_xattr(obj, acl::DEFAULT_XATTR, Some(&d))?;
        }
        if let Some(t) = target {
            // Encrypted under the symlink's own key when it inherited a policy.
            let stored = self.symlink_to_store(obj, t)?;
            for (i, piece) in stored.chunks(SYMLINK_CHUNK).enumerate() {
                let key = Key::new(obj, ty::SYMLINK, (i * SYMLINK_CHUNK) as u64);
                self.put(key, &items::encode_symlink_piece(piece))?;
            }
            it.size = stored.len() as u64;
            self.put_inode(obj, &it)?;
        }
        self.add_entry(parent, name, obj, kind)?;
        if kind == FileKind::Dir {
            self.adjust_nlink(parent, 1)?;
        }
        self.looked_up(obj);
        Ok(self.attr(obj, &it))
    }

    /// Changes an inode's link count and ctime.
    pub(crate) fn adjust_nlink(&mut self, obj: u64, delta: i32) -> Result<u32> {
        let mut it = self.inode(obj)?;
        it.nlink = it.nlink.saturating_add_signed(delta);
        it.ctime = Timespec::now();
        self.put_inode(obj, &it)?;
        Ok(it.nlink)
    }

    pub(crate) fn readlink(&mut self, obj: u64) -> Result<Vec<u8>> {
        let it = self.inode(obj)?;
        if it.kind != FileKind::Symlink {
            return Err(Error::Invalid("not a symlink"));
        }
        let mut out = Vec::new();
        for (k, v) in self.items(
            Key::new(obj, ty::SYMLINK, 0),
            Key::new(obj, ty::SYMLINK, u64::MAX),
        )? {
            if k.offset != out.len() as u64 {
                return Err(Error::corrupt(&k, "symlink piece out of place"));
            }
            out.extend_from_slice(items::decode_symlink_piece(&k, &v)?);
            if out.len() > SYMLINK_MAX {
                return Err(Error::corrupt(&k, "symlink target too long"));
            }
        }
        self.symlink_from_store(obj, out)
    }

    pub(crate) fn link(&mut self, obj: u64, parent: u64, name: &[u8], c: &Caller) -> Result<Attr> {
        check_name(name)?;
        if subvol_of(obj) != subvol_of(parent) {
            return Err(Error::CrossDevice);
        }
        let name: &[u8] = &self.stored_name(parent, name, true)?;
        self.writable(parent)?;
        let mut it = self.inode(obj)?;
        if it.kind == FileKind::Dir {
            return Err(Error::Perm);
        }
        let d = self.may_change_dir(parent, c)?;
        if d.nlink == 0 || it.nlink == 0 {
            return Err(Error::NotFound);
        }
        if dot(name) || self.find_entry(parent, name)?.is_some() {
            return Err(Error::Exists);
        }
        self.check_permitted_context(parent, obj)?;
        if it.nlink >= LINK_MAX {
            return Err(Error::TooManyLinks);
        }
        self.add_entry(parent, name, obj, it.kind)?;
        it.nlink += 1;
        it.ctime = Timespec::now();
        self.put_inode(obj, &it)?;
        self.looked_up(obj);
        Ok(self.attr(obj, &it))
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &[u8], c: &Caller) -> Result<()> {
        check_name(name)?;
        let name: &[u8] = &self.stored_name(parent, name, false)?;
        self.writable_for_delete(parent)?;
        let d = self.may_change_dir(parent, c)?;
        if dot(name) {
            return Err(Error::IsDir);
        }
        let e = self.find_entry(parent, name)?.ok_or(Error::NotFound)?;
        if e.kind == FileKind::Dir {
            return Err(Error::IsDir);
        }
        let it = self.inode(e.child)?;
        sticky_ok(&d, &it, c)?;
        self.remove_entry(parent, name)?;
        if self.adjust_nlink(e.child, -1)? == 0 {
            self.unlinked(e.child)?;
        }
        Ok(())
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &[u8], c: &Caller) -> Result<()> {
        check_name(name)?;
        match name {
            b"." => return Err(Error::Invalid("rmdir .")),
            b".." => return Err(Error::NotEmpty),
            _ => {}
        }
        let name: &[u8] = &self.stored_name(parent, name, false)?;
        self.writable_for_delete(parent)?;
        let d = self.may_change_dir(parent, c)?;
        let e = self.find_entry(parent, name)?.ok_or(Error::NotFound)?;
        if e.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        if e.subvol {
            // An empty subvolume goes as btrfs lets rmdir take it; a snapshot's stand-in for a
            // nested subvolume is only an entry.
            if local(e.child) == EMPTY_DIR_OBJECTID {
                self.remove_entry(parent, name)?;
                self.adjust_nlink(parent, -1)?;
                return Ok(());
            }
            if self.dir_has_entries(e.child)? {
                return Err(Error::NotEmpty);
            }
            return self.subvolume_delete(parent, name, c);
        }
        let it = self.inode(e.child)?;
        sticky_ok(&d, &it, c)?;
        if self.dir_has_entries(e.child)? {
            return Err(Error::NotEmpty);
        }
        self.remove_entry(parent, name)?;
        self.adjust_nlink(parent, -1)?;
        self.drop_dir(e.child)
    }

    /// A directory lost its only name: no links are left.
    fn drop_dir(&mut self, obj: u64) -> Result<()> {
        let mut it = self.inode(obj)?;
        it.nlink = 0;
        it.ctime = Timespec::now();
        self.put_inode(obj, &it)?;
        self.unlinked(obj)
    }

    /// Whether `ancestor` is `dir` or one of its ancestors.
    fn is_ancestor(&mut self, ancestor: u64, mut dir: u64) -> Result<bool> {
        // Bounded walk: a corrupt loop of parents ends as an error, not a hang.
        for _ in 0..100_000 {
            if dir == ancestor {
                return Ok(true);
            }
            if dir == ROOT_OBJECTID {
                return Ok(false);
            }
            dir = self.parent_of(dir)?;
        }
        Err(Error::Invalid("directory tree too deep"))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rename(
        &mut self,
        p: u64,
        name: &[u8],
        np: u64,
        new_name: &[u8],
        flags: RenameFlags,
        c: &Caller,
    ) -> Result<()> {
        check_name(name)?;
        check_name(new_name)?;
        if flags.noreplace && flags.exchange {
            return Err(Error::Invalid("RENAME_NOREPLACE with RENAME_EXCHANGE"));
        }
        if dot(name) || dot(new_name) {
            return Err(Error::Invalid("rename of . or .."));
        }
        let name: &[u8] = &self.stored_name(p, name, false)?;
        let new_name = &self.stored_name(np, new_name, true)?;
        if dot(name) || dot(new_name) {
            return Err(Error::Invalid("rename of . or .."));
        }
        if subvol_of(p) != subvol_of(np) {
            return Err(Error::CrossDevice);
        }
        self.writable(p)?;
        self.writable(np)?;
        let d1 = self.may_change_dir(p, c)?;
        let d2 = self.may_change_dir(np, c)?;
        let src = self.find_entry(p, name)?.ok_or(Error::NotFound)?;
        let sit = self.inode(src.child)?;
        sticky_ok(&d1, &sit, c)?;
        let dst = self.find_entry(np, new_name)?;
        if flags.exchange && dst.is_none() {
            return Err(Error::NotFound);
        }
        // Into an encrypted directory only inodes of its policy (EXDEV, as Linux).
        if p != np {
            self.check_permitted_context(np, src.child)?;
            if flags.exchange
                && let Some(d) = &dst
            {
                self.check_permitted_context(p, d.child)?;
            }
        }
        let src_dir = src.kind == FileKind::Dir;
        if let Some(dst) = &dst {
            if flags.noreplace {
                return Err(Error::Exists);
            }
            if dst.child == src.child {
                // Two names of one inode: POSIX says do nothing.
                return Ok(());
            }
            let dit = self.inode(dst.child)?;
            sticky_ok(&d2, &dit, c)?;
            let dst_dir = dst.kind == FileKind::Dir;
            if !flags.exchange {
                if src_dir && !dst_dir {
                    return Err(Error::NotDir);
                }
                if !src_dir && dst_dir {
                    return Err(Error::IsDir);
                }
                if dst_dir && self.dir_has_entries(dst.child)? {
                    return Err(Error::NotEmpty);
                }
            }
            if flags.exchange && dst_dir && p != np {
                if self.is_ancestor(dst.child, p)? {
                    return Err(Error::Invalid("directory into its own subtree"));
                }
                self.permit(dst.child, &dit, c, MAY_WRITE)?;
            }
        }
        if src_dir && p != np {
            if self.is_ancestor(src.child, np)? {
                return Err(Error::Invalid("directory into its own subtree"));
            }
            // Its ".." changes.
            self.permit(src.child, &sit, c, MAY_WRITE)?;
            if dst.is_none() && d2.nlink >= LINK_MAX {
                return Err(Error::TooManyLinks);
            }
        }
        match dst {
            Some(dst) if flags.exchange => self.exchange(p, name, &src, np, new_name, &dst),
            dst => self.move_entry(p, name, &src, np, new_name, dst),
        }
    }

    fn exchange(
        &mut self,
        p: u64,
        name: &[u8],
        src: &DirEntryItem,
        np: u64,
        new_name: &[u8],
        dst: &DirEntryItem,
    ) -> Result<()> {
        self.remove_entry(p, name)?;
        self.remove_entry(np, new_name)?;
        self.add_entry(p, name, dst.child, dst.kind)?;
        self.add_entry(np, new_name, src.child, src.kind)?;
        if p != np {
            let sd = i32::from(src.kind == FileKind::Dir);
            let dd = i32::from(dst.kind == FileKind::Dir);
            if sd != dd {
                self.adjust_nlink(p, dd - sd)?;
                self.adjust_nlink(np, sd - dd)?;
            }
        }
        self.adjust_nlink(src.child, 0)?;
        self.adjust_nlink(dst.child, 0)?;
        Ok(())
    }

    fn move_entry(
        &mut self,
        p: u64,
        name: &[u8],
        src: &DirEntryItem,
        np: u64,
        new_name: &[u8],
        dst: Option<DirEntryItem>,
    ) -> Result<()> {
        if let Some(dst) = dst {
            self.remove_entry(np, new_name)?;
            if dst.kind == FileKind::Dir {
                self.adjust_nlink(np, -1)?;
                self.drop_dir(dst.child)?;
            } else if self.adjust_nlink(dst.child, -1)? == 0 {
                self.unlinked(dst.child)?;
            }
        }
        self.remove_entry(p, name)?;
        self.add_entry(np, new_name, src.child, src.kind)?;
        if src.kind == FileKind::Dir && p != np {
            self.adjust_nlink(p, -1)?;
            self.adjust_nlink(np, 1)?;
        }
        // ctime of the moved inode changes (as on ext4 and btrfs).
        self.adjust_nlink(src.child, 0)?;
        Ok(())
    }
}
