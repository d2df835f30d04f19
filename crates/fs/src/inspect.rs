//! inspect: everything the filesystem holds, as data (serde) and as text (Display): subvolumes,
//! inodes, directory entries, and every file extent with its logical and physical address, its
//! length, its offset inside the extent and its crypt context.

use std::fmt;

use store::Key;

use crate::error::Result;
use crate::items::{self, ExtentKind, FileExtent, InodeItem, ROOT_OBJECTID, SubvolInfo, ty};
use crate::state::{State, global, subvol_tree};
use crate::types::{FileKind, Timespec};

#[derive(Debug, Clone, serde::Serialize)]
pub struct Inspection {
    pub generation: u64,
    pub subvolumes: Vec<SubvolumeInfo>,
    /// Deleted subvolumes whose space is not all released yet (committed state).
    pub deleting: usize,
    /// Estimate of the tree blocks (bytes) those still hold (file data not counted).
    pub deleting_bytes: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SubvolumeInfo {
    pub id: u64,
    pub tree: u64,
    pub next_objectid: u64,
    pub inodes: Vec<InodeInfo>,
    pub entries: Vec<EntryInfo>,
    pub orphans: Vec<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InodeInfo {
    pub ino: u64,
    pub kind: FileKind,
    pub mode: String,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub bytes: u64,
    pub mtime: Timespec,
    pub xattrs: Vec<String>,
    pub extents: Vec<ExtentInfo>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct EntryInfo {
    pub dir: u64,
    pub index: u64,
    pub name: String,
    pub ino: u64,
    pub kind: FileKind,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtentInfo {
    pub file_offset: u64,
    pub length: u64,
    pub kind: ExtentKind,
    /// The extent's logical start.
    pub extent: u64,
    /// Where the extent starts on the device.
    pub physical: Option<u64>,
    pub extent_length: u64,
    pub offset_in_extent: u64,
    /// Hex of the crypt context; null for plaintext.
    pub crypt_context: Option<String>,
}

impl State {
    pub(crate) fn inspect(&mut self) -> Result<Inspection> {
        // The committed generation: what is on disk (changes not yet committed show too).
        let generation = self.store().generation();
        let mut subvolumes = Vec::new();
        for id in self.subvol_ids()? {
            subvolumes.push(self.inspect_subvolume(id)?);
        }
        let pending = self.store().pending_deletion()?;
        Ok(Inspection {
            generation,
            subvolumes,
            deleting: pending.trees,
            deleting_bytes: pending.bytes_estimate,
        })
    }

    /// One subvolume's items; inode numbers are global (as the mount shows them).
    fn inspect_subvolume(&mut self, id: u64) -> Result<SubvolumeInfo> {
        let tree = subvol_tree(id);
        let all = self.items_in(tree, Key::MIN, Key::MAX, usize::MAX)?;
        let mut sv = SubvolumeInfo {
            id,
            tree,
            next_objectid: 0,
            inodes: Vec::new(),
            entries: Vec::new(),
            orphans: Vec::new(),
        };
        for (k, v) in &all {
            let k = &Key::new(global(id, k.objectid), k.item_type, k.offset);
            match k.item_type {
                ty::SUBVOL_INFO => sv.next_objectid = SubvolInfo::decode(k, v)?.next_objectid,
                ty::INODE => {
                    let it = InodeItem::decode(k, v)?;
                    sv.inodes.push(InodeInfo {
                        ino: k.objectid,
                        kind: it.kind,
                        mode: format!("{:04o}", it.perm),
                        nlink: it.nlink,
                        uid: it.uid,
                        gid: it.gid,
                        size: it.size,
                        bytes: it.bytes,
                        mtime: it.mtime,
                        xattrs: Vec::new(),
                        extents: Vec::new(),
                    });
                }
                ty::DIR_INDEX => {
                    let e = items::decode_dir_index(k, v)?;
                    sv.entries.push(EntryInfo {
                        dir: k.objectid,
                        index: e.index,
                        name: String::from_utf8_lossy(&e.name).into_owned(),
                        ino: if e.subvol {
                            global(e.child, ROOT_OBJECTID)
                        } else {
                            global(id, e.child)
                        },
                        kind: e.kind,
                    });
                }
                ty::XATTR => {
                    let xs = items::decode_xattrs(k, v)?;
                    if let Some(i) = sv.inodes.last_mut().filter(|i| i.ino == k.objectid) {
                        i.xattrs.extend(
                            xs.iter()
                                .map(|x| String::from_utf8_lossy(&x.name).into_owned()),
                        );
                    }
                }
                ty::FILE_EXTENT => {
                    let fe = FileExtent::decode(k, v)?;
                    let physical = self
                        .store()
                        .chunk_map()
                        .to_physical(fe.bytenr, fe.extent_len)
                        .ok();
                    if let Some(i) = sv.inodes.last_mut().filter(|i| i.ino == k.objectid) {
                        i.extents.push(ExtentInfo {
                            file_offset: k.offset,
                            length: fe.len,
                            kind: fe.kind,
                            extent: fe.bytenr,
                            physical,
                            extent_length: fe.extent_len,
                            offset_in_extent: fe.offset,
                            crypt_context: fe
                                .crypt
                                .as_ref()
                                .map(|c| c.iter().map(|b| format!("{b:02x}")).collect()),
                        });
                    }
                }
                ty::ORPHAN => sv.orphans.push(global(id, k.offset)),
                _ => {}
            }
        }
        Ok(sv)
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "generation {}", self.generation)?;
        if self.deleting > 0 {
            writeln!(
                f,
                "deleted subvolumes still releasing space: {} (about {} bytes)",
                self.deleting, self.deleting_bytes
            )?;
        }
        for sv in &self.subvolumes {
            writeln!(
                f,
                "subvolume {} (tree {}), next object id {}",
                sv.id, sv.tree, sv.next_objectid
            )?;
            for i in &sv.inodes {
                writeln!(
                    f,
                    "  inode {} {:?} mode {} links {} uid {} gid {} size {} bytes {}",
                    i.ino, i.kind, i.mode, i.nlink, i.uid, i.gid, i.size, i.bytes
                )?;
                for x in &i.xattrs {
                    writeln!(f, "    xattr {x}")?;
                }
                for e in &i.extents {
                    writeln!(
                        f,
                        "    [{}, +{}) {:?} extent {} (physical {}) len {} at offset {} crypt {}",
                        e.file_offset,
                        e.length,
                        e.kind,
                        e.extent,
                        e.physical.map_or("?".into(), |p| p.to_string()),
                        e.extent_length,
                        e.offset_in_extent,
                        e.crypt_context.as_deref().unwrap_or("none")
                    )?;
                }
            }
            for e in &sv.entries {
                writeln!(
                    f,
                    "  entry {} #{} {:?} -> {} ({:?})",
                    e.dir, e.index, e.name, e.ino, e.kind
                )?;
            }
            for o in &sv.orphans {
                writeln!(f, "  orphan {o}")?;
            }
        }
        Ok(())
    }
}
