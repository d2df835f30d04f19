//! POSIX ACLs: Linux's xattr binary format (`system.posix_acl_access` and `_default`), the
//! access check of POSIX.1e, and the rules that tie an ACL to the mode bits (chmod, create with a
//! default ACL). Stored as the xattr bytes Linux uses, so tools that copy xattrs copy ACLs.

use crate::error::{Error, Result};
use crate::types::Caller;

pub const ACCESS_XATTR: &[u8] = b"system.posix_acl_access";
pub const DEFAULT_XATTR: &[u8] = b"system.posix_acl_default";

const ACL_VERSION: u32 = 2;
pub const USER_OBJ: u16 = 0x01;
pub const USER: u16 = 0x02;
pub const GROUP_OBJ: u16 = 0x04;
pub const GROUP: u16 = 0x08;
pub const MASK: u16 = 0x10;
pub const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// One ACL entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub tag: u16,
    /// rwx in bits 2..0.
    pub perm: u16,
    /// uid or gid for USER and GROUP entries.
    pub id: u32,
}

/// A valid ACL: entries sorted by (tag, id), exactly one of USER_OBJ, GROUP_OBJ, OTHER, a MASK
/// when there are named entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub entries: Vec<Entry>,
}

impl Acl {
    /// Parses Linux's format: u32 version 2, then (u16 tag, u16 perm, u32 id) entries, LE.
    pub fn decode(b: &[u8]) -> Result<Acl> {
        if b.len() < 4 || !(b.len() - 4).is_multiple_of(8) {
            return Err(Error::Invalid("ACL length"));
        }
        let le16 = |x: &[u8]| u16::from_le_bytes([x[0], x[1]]);
        let le32 = |x: &[u8]| u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        if le32(&b[0..4]) != ACL_VERSION {
            return Err(Error::Invalid("ACL version"));
        }
        let entries: Vec<Entry> = b[4..]
            .chunks_exact(8)
            .map(|e| {
                let tag = le16(&e[0..2]);
                // Ids of unnamed entries are undefined on disk; keep them 0 in memory.
                let id = if matches!(tag, USER | GROUP) {
                    le32(&e[4..8])
                } else {
                    0
                };
                Entry {
                    tag,
                    perm: le16(&e[2..4]),
                    id,
                }
            })
            .collect();
        let acl = Acl { entries };
        acl.validate()?;
        Ok(acl)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for e in &self.entries {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            let id = if matches!(e.tag, USER | GROUP) {
                e.id
            } else {
                UNDEFINED_ID
            };
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    /// The rules of Linux's posix_acl_valid: known tags in order, no duplicate ids, the three
    /// base entries exactly once, a mask iff there are named entries.
    fn validate(&self) -> Result<()> {
        let mut last: Option<(u16, u32)> = None;
        let (mut uo, mut go, mut o, mut m, mut named) = (0, 0, 0, 0, 0);
        for e in &self.entries {
            if e.perm & !7 != 0 {
                return Err(Error::Invalid("ACL permission bits"));
            }
            let id = match e.tag {
                USER_OBJ => {
                    uo += 1;
                    0
                }
                GROUP_OBJ => {
                    go += 1;
                    0
                }
                OTHER => {
                    o += 1;
                    0
                }
                MASK => {
                    m += 1;
                    0
                }
                USER | GROUP => {
                    named += 1;
                    e.id
                }
                _ => return Err(Error::Invalid("ACL tag")),
            };
            if last.is_some_and(|l| l >= (e.tag, id)) {
                return Err(Error::Invalid("ACL entries out of order"));
            }
            last = Some((e.tag, id));
        }
        if uo != 1 || go != 1 || o != 1 || m > 1 || (named > 0 && m == 0) {
            return Err(Error::Invalid("ACL base entries"));
        }
        Ok(())
    }

    fn find(&self, tag: u16) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }

    fn find_mut(&mut self, tag: u16) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.tag == tag)
    }

    /// The permission bits (0o777) this ACL implies: the group class shows the mask if any.
    pub fn mode_bits(&self) -> u32 {
        let p = |tag| self.find(tag).map_or(0, |e| u32::from(e.perm));
        let group = match self.find(MASK) {
            Some(m) => u32::from(m.perm),
            None => p(GROUP_OBJ),
        };
        (p(USER_OBJ) << 6) | (group << 3) | p(OTHER)
    }

    /// Whether the mode bits say all this ACL says (no named entries, no mask): then it need not
    /// be stored.
    pub fn is_minimal(&self) -> bool {
        self.entries.len() == 3
    }

    /// chmod: the mode's bits go to USER_OBJ, the mask (or GROUP_OBJ without one) and OTHER.
    pub fn chmod(&mut self, mode: u32) {
        let p = |s: u32| ((mode >> s) & 7) as u16;
        if let Some(e) = self.find_mut(USER_OBJ) {
            e.perm = p(6);
        }
        let group_tag = if self.find(MASK).is_some() {
            MASK
        } else {
            GROUP_OBJ
        };
        if let Some(e) = self.find_mut(group_tag) {
            e.perm = p(3);
        }
        if let Some(e) = self.find_mut(OTHER) {
            e.perm = p(0);
        }
    }

    /// A default ACL applied to a new inode of `mode` (posix_acl_create): each class keeps only
    /// what both grant. Returns the access ACL and the resulting mode bits.
    pub fn inherit(&self, mode: u32) -> (Acl, u32) {
        let mut acl = self.clone();
        let p = |s: u32| ((mode >> s) & 7) as u16;
        if let Some(e) = acl.find_mut(USER_OBJ) {
            e.perm &= p(6);
        }
        let group_tag = if acl.find(MASK).is_some() {
            MASK
        } else {
            GROUP_OBJ
        };
        if let Some(e) = acl.find_mut(group_tag) {
            e.perm &= p(3);
        }
        if let Some(e) = acl.find_mut(OTHER) {
            e.perm &= p(0);
        }
        let bits = acl.mode_bits();
        (acl, (mode & !0o777) | bits)
    }

    /// POSIX.1e access check of `want` (rwx bits) for a caller of a file owned by `uid:gid`.
    pub fn permits(&self, uid: u32, gid: u32, c: &Caller, want: u16) -> bool {
        let mask = self.find(MASK).map_or(7, |m| m.perm);
        if c.uid == uid {
            return self.find(USER_OBJ).is_some_and(|e| e.perm & want == want);
        }
        if let Some(e) = self.entries.iter().find(|e| e.tag == USER && e.id == c.uid) {
            return e.perm & mask & want == want;
        }
        let mut in_some_group = false;
        for e in &self.entries {
            let matches = match e.tag {
                GROUP_OBJ => c.in_group(gid),
                GROUP => c.in_group(e.id),
                _ => false,
            };
            if matches {
                in_some_group = true;
                if e.perm & mask & want == want {
                    return true;
                }
            }
        }
        if in_some_group {
            return false;
        }
        self.find(OTHER).is_some_and(|e| e.perm & want == want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn user(uid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid: groups.first().copied().unwrap_or(uid),
            groups: groups.to_vec(),
            pid: 1,
            umask: 0,
        }
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl {
            entries: entries
                .iter()
                .map(|&(tag, perm, id)| Entry { tag, perm, id })
                .collect(),
        }
    }

    #[test]
    fn named_user_is_limited_by_the_mask() {
        let a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1001),
            (GROUP_OBJ, 4, 0),
            (MASK, 5, 0),
            (OTHER, 0, 0),
        ]);
        let b = Acl::decode(&a.encode()).unwrap();
        assert_eq!(a, b);
        assert!(b.permits(1000, 100, &user(1001, &[]), 5));
        assert!(!b.permits(1000, 100, &user(1001, &[]), 2), "mask removes w");
        assert!(b.permits(1000, 100, &user(1000, &[]), 6));
        assert!(b.permits(1000, 100, &user(7, &[100]), 4));
        assert!(!b.permits(1000, 100, &user(7, &[]), 4));
        assert_eq!(b.mode_bits(), 0o650);
    }

    #[test]
    fn invalid_acls_are_refused() {
        let mut v = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1),
            (GROUP_OBJ, 4, 0),
            (OTHER, 0, 0),
        ])
        .encode();
        assert!(Acl::decode(&v).is_err(), "named entry without mask");
        v[0] = 1;
        assert!(Acl::decode(&v).is_err());
        assert!(Acl::decode(&[2, 0, 0]).is_err());
    }

    #[test]
    fn inherit_masks_by_mode() {
        let d = acl(&[
            (USER_OBJ, 7, 0),
            (GROUP, 7, 50),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (a, mode) = d.inherit(0o100644);
        assert_eq!(mode, 0o100644);
        assert_eq!(a.find(MASK).unwrap().perm, 4);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(a) = Acl::decode(&v) {
                prop_assert_eq!(Acl::decode(&a.encode()).unwrap(), a);
            }
        }
    }
}
