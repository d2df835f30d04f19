//! Extended attributes: the items (grouped by name hash), the namespace rules Linux applies
//! (user, trusted, security, system ACLs), and ACLs kept in step with the mode bits.

use store::Key;

use crate::acl::{self, Acl};
use crate::error::{Error, Result};
use crate::items::{self, Xattr, name_hash, ty};
use crate::perm::{MAY_READ, MAY_WRITE, owner_or_root};
use crate::state::State;
use crate::types::{Caller, FileKind, NAME_MAX, Timespec};

pub const XATTR_CREATE: i32 = 1;
pub const XATTR_REPLACE: i32 = 2;
/// Linux's XATTR_SIZE_MAX.
const VALUE_MAX: usize = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    User,
    Trusted,
    Security,
    AclAccess,
    AclDefault,
}

fn namespace(name: &[u8]) -> Result<Ns> {
    if name.is_empty() {
        return Err(Error::Invalid("empty xattr name"));
    }
    if name.len() > NAME_MAX {
        return Err(Error::Range);
    }
    Ok(if name == acl::ACCESS_XATTR {
        Ns::AclAccess
    } else if name == acl::DEFAULT_XATTR {
        Ns::AclDefault
    } else if name.starts_with(b"user.") && name.len() > 5 {
        Ns::User
    } else if name.starts_with(b"trusted.") && name.len() > 8 {
        Ns::Trusted
    } else if name.starts_with(b"security.") && name.len() > 9 {
        Ns::Security
    } else {
        return Err(Error::NotSupported);
    })
}

impl State {
    pub(crate) fn get_xattr(&mut self, obj: u64, name: &[u8]) -> Result<Option<Vec<u8>>> {
        let key = Key::new(obj, ty::XATTR, name_hash(name));
        let Some(v) = self.get(&key)? else {
            return Ok(None);
        };
        Ok(items::decode_xattrs(&key, &v)?
            .into_iter()
            .find(|x| x.name == name)
            .map(|x| x.value))
    }

    /// Sets (`Some`) or removes (`None`) one attribute; returns whether it existed.
    pub(crate) fn put_xattr(
        &mut self,
        obj: u64,
        name: &[u8],
        value: Option<&[u8]>,
    ) -> Result<bool> {
        let key = Key::new(obj, ty::XATTR, name_hash(name));
        let mut xs = match self.get(&key)? {
            Some(v) => items::decode_xattrs(&key, &v)?,
            None => Vec::new(),
        };
        let existed = xs.iter().any(|x| x.name == name);
        xs.retain(|x| x.name != name);
        if let Some(v) = value {
            xs.push(Xattr {
                name: name.to_vec(),
                value: v.to_vec(),
            });
        }
        if xs.is_empty() {
            if existed {
                self.del(&key)?;
            }
            return Ok(existed);
        }
        let enc = items::encode_xattrs(&xs);
        if enc.len() > self.txn()?.max_value_size() {
            // Like btrfs: an attribute must fit in one leaf item.
            return Err(Error::NoSpace);
        }
        self.put(key, &enc)?;
        Ok(existed)
    }

    pub(crate) fn xattr_names(&mut self, obj: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for (k, v) in self.items(
            Key::new(obj, ty::XATTR, 0),
            Key::new(obj, ty::XATTR, u64::MAX),
        )? {
            out.extend(items::decode_xattrs(&k, &v)?.into_iter().map(|x| x.name));
        }
        Ok(out)
    }

    /// Checks the namespace rules for reading or writing `name` on `obj`.
    fn xattr_permission(&mut self, obj: u64, ns: Ns, write: bool, c: &Caller) -> Result<()> {
        let it = self.inode(obj)?;
        match ns {
            Ns::User => {
                if !matches!(it.kind, FileKind::File | FileKind::Dir) {
                    return Err(if write { Error::Perm } else { Error::NoData });
                }
                if write
                    && it.kind == FileKind::Dir
                    && it.perm & 0o1000 != 0
                    && !owner_or_root(&it, c)
                {
                    return Err(Error::Perm);
                }
                self.permit(obj, &it, c, if write { MAY_WRITE } else { MAY_READ })
            }
            Ns::Trusted if c.uid != 0 => Err(if write { Error::Perm } else { Error::NoData }),
            Ns::Trusted => Ok(()),
            Ns::Security if write && c.uid != 0 => Err(Error::Perm),
            Ns::Security => Ok(()),
            Ns::AclAccess | Ns::AclDefault => {
                if write && !owner_or_root(&it, c) {
                    return Err(Error::Perm);
                }
                Ok(())
            }
        }
    }

    pub(crate) fn setxattr(
        &mut self,
        obj: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
        c: &Caller,
    ) -> Result<()> {
        let ns = namespace(name)?;
        if value.len() > VALUE_MAX {
            return Err(Error::ValueTooBig);
        }
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(Error::Invalid("xattr flags"));
        }
        self.writable(obj)?;
        self.xattr_permission(obj, ns, true, c)?;
        let exists = self.get_xattr(obj, name)?.is_some();
        let mut it = self.inode(obj)?;
        match ns {
            Ns::AclAccess => {
                let a = Acl::decode(value)?;
                if flags & XATTR_CREATE != 0 && exists {
                    return Err(Error::Exists);
                }
                it.perm = (it.perm & !0o777) | a.mode_bits();
                if c.uid != 0 && !c.in_group(it.gid) {
                    it.perm &= !0o2000;
                }
                if a.is_minimal() {
                    self.put_xattr(obj, name, None)?;
                } else {
                    self.put_xattr(obj, name, Some(&a.encode()))?;
                }
            }
            Ns::AclDefault => {
                if it.kind != FileKind::Dir {
                    return Err(Error::Access);
                }
                if flags & XATTR_CREATE != 0 && exists {
                    return Err(Error::Exists);
                }
                if value.is_empty() {
                    self.put_xattr(obj, name, None)?;
                } else {
                    let a = Acl::decode(value)?;
                    self.put_xattr(obj, name, Some(&a.encode()))?;
                }
            }
            _ => {
                if flags & XATTR_CREATE != 0 && exists {
                    return Err(Error::Exists);
                }
                if flags & XATTR_REPLACE != 0 && !exists {
                    return Err(Error::NoData);
                }
                self.put_xattr(obj, name, Some(value))?;
            }
        }
        it.ctime = Timespec::now();
        self.put_inode(obj, &it)
    }

    pub(crate) fn getxattr(&mut self, obj: u64, name: &[u8], c: &Caller) -> Result<Vec<u8>> {
        let ns = namespace(name)?;
        self.xattr_permission(obj, ns, false, c)?;
        self.get_xattr(obj, name)?.ok_or(Error::NoData)
    }

    pub(crate) fn listxattr(&mut self, obj: u64, c: &Caller) -> Result<Vec<Vec<u8>>> {
        self.inode(obj)?;
        let mut names = self.xattr_names(obj)?;
        if c.uid != 0 {
            names.retain(|n| !n.starts_with(b"trusted."));
        }
        names.sort();
        Ok(names)
    }

    pub(crate) fn removexattr(&mut self, obj: u64, name: &[u8], c: &Caller) -> Result<()> {
        let ns = namespace(name)?;
        self.writable(obj)?;
        self.xattr_permission(obj, ns, true, c)?;
        if !self.put_xattr(obj, name, None)? {
            return Err(Error::NoData);
        }
        let mut it = self.inode(obj)?;
        it.ctime = Timespec::now();
        self.put_inode(obj, &it)
    }

    /// chmod with an access ACL: the ACL follows the new mode bits.
    pub(crate) fn acl_chmod(&mut self, obj: u64, mode: u32) -> Result<()> {
        if let Some(mut a) = self.access_acl(obj)? {
            a.chmod(mode);
            self.put_xattr(obj, acl::ACCESS_XATTR, Some(&a.encode()))?;
        }
        Ok(())
    }

    /// The mode of a new inode in `dir` and the ACLs to give it: with a default ACL on the
    /// parent the ACL decides (no umask); otherwise the umask applies.
    pub(crate) fn new_inode_mode(
        &mut self,
        dir: u64,
        mode: u32,
        kind: FileKind,
        c: &Caller,
    ) -> Result<(u32, Option<Acl>, Option<Vec<u8>>)> {
        let default = self.get_xattr(dir, acl::DEFAULT_XATTR)?;
        match default {
            Some(d) if kind != FileKind::Symlink => {
                let d_acl = Acl::decode(&d)?;
                let (access, mode) = d_acl.inherit(mode);
                let access = (!access.is_minimal()).then_some(access);
                let inherit_default = (kind == FileKind::Dir).then_some(d);
                Ok((mode, access, inherit_default))
            }
            _ => Ok((mode & !(c.umask & 0o777), None, None)),
        }
    }
}
