//! Permission checks, all done here against the [`Caller`]: mode bits or the POSIX ACL, sticky
//! directories, ownership rules of chmod/chown/utimes, and which bits a change clears.

use crate::acl::{self, Acl};
use crate::error::{Error, Result};
use crate::items::InodeItem;
use crate::state::State;
use crate::types::{Caller, FileKind};

pub(crate) const MAY_READ: u16 = 4;
pub(crate) const MAY_WRITE: u16 = 2;
pub(crate) const MAY_EXEC: u16 = 1;

impl State {
    /// The access ACL of `obj`, if it has one.
    pub(crate) fn access_acl(&mut self, obj: u64) -> Result<Option<Acl>> {
        match self.get_xattr(obj, acl::ACCESS_XATTR)? {
            Some(v) => Ok(Some(Acl::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Checks `want` (MAY_* bits) on inode `obj` for `c`: EACCES if refused.
    pub(crate) fn permit(&mut self, obj: u64, it: &InodeItem, c: &Caller, want: u16) -> Result<()> {
        if want == 0 {
            return Ok(());
        }
        if c.uid == 0 {
            // Root may do anything but execute a file no one may execute.
            let any_exec = it.perm & 0o111 != 0 || it.kind == FileKind::Dir;
            return if want & MAY_EXEC == 0 || any_exec {
                Ok(())
            } else {
                Err(Error::Access)
            };
        }
        let ok = match self.access_acl(obj)? {
            Some(a) => a.permits(it.uid, it.gid, c, want),
            None => {
                let bits = if c.uid == it.uid {
                    it.perm >> 6
                } else if c.in_group(it.gid) {
                    it.perm >> 3
                } else {
                    it.perm
                };
                (bits as u16) & want == want
            }
        };
        if ok { Ok(()) } else { Err(Error::Access) }
    }

    /// Checks that `dir` is a directory `c` may search.
    pub(crate) fn search(&mut self, dir: u64, c: &Caller) -> Result<InodeItem> {
        let d = self.inode(dir)?;
        if d.kind != FileKind::Dir {
            return Err(Error::NotDir);
        }
        self.permit(dir, &d, c, MAY_EXEC)?;
        Ok(d)
    }

    /// Checks that `c` may add or remove entries of `dir`.
    pub(crate) fn may_change_dir(&mut self, dir: u64, c: &Caller) -> Result<InodeItem> {
        let d = self.search(dir, c)?;
        self.permit(dir, &d, c, MAY_WRITE | MAY_EXEC)?;
        Ok(d)
    }
}

/// Sticky directories: only the owner of the entry or of the directory (or root) may remove or
/// rename it.
pub(crate) fn sticky_ok(dir: &InodeItem, victim: &InodeItem, c: &Caller) -> Result<()> {
    if dir.perm & 0o1000 != 0 && c.uid != 0 && c.uid != dir.uid && c.uid != victim.uid {
        return Err(Error::Perm);
    }
    Ok(())
}

/// Whether `c` owns `it` or is root (inode_owner_or_capable).
pub(crate) fn owner_or_root(it: &InodeItem, c: &Caller) -> bool {
    c.uid == 0 || c.uid == it.uid
}

/// A write by a non-root caller clears setuid, and setgid when group-execute is set (without it,
/// setgid marks mandatory locking and stays).
pub(crate) fn kill_suid(it: &mut InodeItem, c: &Caller) {
    if c.uid != 0 && it.kind == FileKind::File {
        clear_suid_sgid(it);
    }
}

pub(crate) fn clear_suid_sgid(it: &mut InodeItem) {
    it.perm &= !0o4000;
    if it.perm & 0o010 != 0 {
        it.perm &= !0o2000;
    }
}
