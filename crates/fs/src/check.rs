//! fsck: the store's own check, then the filesystem's: every item decodes, directory entries,
//! their indexes and the inodes' back-references agree, link counts and directory sizes are
//! right, file extents do not overlap and match their extents, checksums cover every written
//! sector and every sector's data matches its checksum, orphans are exactly the unlinked inodes. Every fault is listed, not only the first.

use std::collections::{BTreeMap, BTreeSet};

use store::{Key, tree_id};

use crate::error::Result;
use crate::items::{
    self, CSUMS_PER_ITEM, DirEntryItem, ExtentKind, FileExtent, InodeItem, InodeRef,
    ORPHAN_OBJECTID, ROOT_OBJECTID, SubvolInfo, ty,
};
use crate::state::{BLOCK, State, global, subvol_tree};
use crate::types::FileKind;

/// Bytes of file data read and verified at a time.
const CHECK_PIECE: u64 = 1 << 20;

/// What fsck found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsckReport {
    /// Every inconsistency, one line each.
    pub faults: Vec<String>,
    pub generation: u64,
    pub inodes: u64,
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    /// File extent items.
    pub extents: u64,
    pub orphans: u64,
    /// Tree nodes the store's check walked.
    pub nodes: u64,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.faults.is_empty()
    }
}

impl std::fmt::Display for FsckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "generation {}: {} inodes ({} directories, {} files, {} symlinks), {} file extents, {} orphans, {} tree nodes",
            self.generation,
            self.inodes,
            self.dirs,
            self.files,
            self.symlinks,
            self.extents,
            self.orphans,
            self.nodes
        )?;
        if self.faults.is_empty() {
            writeln!(f, "no faults")
        } else {
            for x in &self.faults {
                writeln!(f, "fault: {x}")?;
            }
            Ok(())
        }
    }
}

/// The data verification pass across subvolumes: each shared extent is read once.
struct DataPass<'a> {
    seen: BTreeSet<u64>,
    done: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

#[derive(Default)]
struct Scan {
    info: Option<SubvolInfo>,
    inodes: BTreeMap<u64, InodeItem>,
    /// (dir, name) -> entry, from DIR_ITEM.
    by_name: BTreeMap<(u64, Vec<u8>), DirEntryItem>,
    /// (dir, index) -> entry, from DIR_INDEX.
    by_index: BTreeMap<(u64, u64), DirEntryItem>,
    /// (child, parent, index) -> name, from INODE_REF.
    refs: BTreeMap<(u64, u64, u64), Vec<u8>>,
    extents: BTreeMap<u64, Vec<(u64, FileExtent)>>,
    symlink_bytes: BTreeMap<u64, u64>,
    orphans: BTreeSet<u64>,
    objects: BTreeSet<u64>,
}

impl State {
    pub(crate) fn check(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<FsckReport> {
        // Check what is on disk: commit first so the store's view and ours agree.
        if !self.opts.read_only && self.failed.is_none() {
            self.commit()?;
        }
        let mut r = FsckReport::default();
        match self.store().check() {
            Ok(sr) => {
                r.generation = sr.generation;
                r.nodes = sr.nodes;
            }
            Err(e) => r.faults.push(format!("store: {e}")),
        }
        // Progress counts data bytes verified against the data space in use.
        let st = self.txn()?.stats();
        let mut data = DataPass {
            seen: BTreeSet::new(),
            done: 0,
            total: st.data.total.saturating_sub(st.data.free),
            progress,
        };
        for subvol in self.subvol_ids()? {
            let mut s = Scan::default();
            let all = self.items_in(subvol_tree(subvol), Key::MIN, Key::MAX, usize::MAX)?;
            let first_fault = r.faults.len();
            for (k, v) in &all {
                if let Err(e) = scan_item(&mut s, k, v) {
                    r.faults.push(e.to_string());
                }
            }
            self.check_scan(&s, &mut r, &mut data)?;
            if subvol != 0 {
                for f in &mut r.faults[first_fault..] {
                    *f = format!("subvolume {subvol}: {f}");
                }
            }
        }
        self.check_subvolume_links(&mut r)?;
        self.check_orphan_sums(&mut r)?;
        (data.progress)(data.total, data.total);
        Ok(r)
    }

    /// Every checksum-tree item (checksums, MACs) belongs to a data extent that exists.
    fn check_orphan_sums(&mut self, r: &mut FsckReport) -> Result<()> {
        let mut owners = BTreeSet::new();
        {
            let t = self.txn()?;
            for item in t.range(tree_id::CSUM_TREE, ..)? {
                owners.insert(item?.0.objectid);
            }
        }
        for bytenr in owners {
            if self.txn()?.data_extent(bytenr)?.is_none() {
                r.faults.push(format!(
                    "checksum items for extent {bytenr}, which does not exist"
                ));
            }
        }
        Ok(())
    }

    /// Every subvolume but 0 has a record, and the entry its record names links it.
    fn check_subvolume_links(&mut self, r: &mut FsckReport) -> Result<()> {
        for subvol in self.subvol_ids()? {
            if subvol == 0 {
                continue;
            }
            let rec = match self.subvol_root(subvol) {
                Ok(Some(rec)) => rec,
                Ok(None) => {
                    r.faults
                        .push(format!("subvolume {subvol} has no index record"));
                    continue;
                }
                Err(e) => {
                    r.faults.push(e.to_string());
                    continue;
                }
            };
            match self.find_entry(rec.parent, &rec.name) {
                Ok(Some(e)) if e.subvol && e.child == global(subvol, ROOT_OBJECTID) => {}
                Ok(_) => r.faults.push(format!(
                    "subvolume {subvol}: no entry {:?} in directory {} links it",
                    String::from_utf8_lossy(&rec.name),
                    rec.parent
                )),
                Err(e) => r.faults.push(format!("subvolume {subvol}: {e}")),
            }
        }
        Ok(())
    }

    fn check_scan(&mut self, s: &Scan, r: &mut FsckReport, data: &mut DataPass<'_>) -> Result<()> {
        let f = &mut r.faults;
        match s.info {
            None => f.push("no subvolume info item".into()),
            Some(i) => {
                if let Some(&max) = s.objects.iter().next_back()
                    && max >= i.next_objectid
                {
                    f.push(format!(
                        "object {max} at or above the next object id {}",
                        i.next_objectid
                    ));
                }
            }
        }
        match s.inodes.get(&ROOT_OBJECTID) {
            Some(it) if it.kind == FileKind::Dir => {}
            _ => f.push("root directory missing or not a directory".into()),
        }
        for obj in &s.objects {
            if !s.inodes.contains_key(obj) {
                f.push(format!("items of object {obj} without an inode"));
            }
        }
        // Entries by name and by index agree.
        for ((dir, _), e) in &s.by_name {
            if s.by_index.get(&(*dir, e.index)) != Some(e) {
                f.push(format!(
                    "dir {dir}: entry {:?} has no matching index {}",
                    String::from_utf8_lossy(&e.name),
                    e.index
                ));
            }
        }
        let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
        let mut links: BTreeMap<u64, u32> = BTreeMap::new();
        let mut dir_size: BTreeMap<u64, u64> = BTreeMap::new();
        for ((dir, index), e) in &s.by_index {
            let name = String::from_utf8_lossy(&e.name);
            if s.by_name.get(&(*dir, e.name.clone())) != Some(e) {
                f.push(format!(
                    "dir {dir}: index {index} ({name}) has no name entry"
                ));
            }
            match s.inodes.get(dir) {
                Some(d) if d.kind == FileKind::Dir => {
                    if *index >= d.next_index {
                        f.push(format!(
                            "dir {dir}: index {index} not below the next index {}",
                            d.next_index
                        ));
                    }
                }
                _ => f.push(format!("entries in {dir}, which is not a directory")),
            }
            if e.subvol {
                // A link to another subvolume's root: checked against the index at the end.
                *subdirs.entry(*dir).or_default() += 1;
                *dir_size.entry(*dir).or_default() += 2 * e.name.len() as u64;
                continue;
            }
            match s.inodes.get(&e.child) {
                None => f.push(format!(
                    "dir {dir}: entry {name} points at missing inode {}",
                    e.child
                )),
                Some(c) if c.kind != e.kind => f.push(format!(
                    "dir {dir}: entry {name} says {:?}, inode is {:?}",
                    e.kind, c.kind
                )),
                Some(_) => {}
            }
            if !s.refs.contains_key(&(e.child, *dir, *index)) {
                f.push(format!(
                    "dir {dir}: entry {name} has no back-reference in inode {}",
                    e.child
                ));
            }
            *links.entry(e.child).or_default() += 1;
            if e.kind == FileKind::Dir {
                *subdirs.entry(*dir).or_default() += 1;
            }
            *dir_size.entry(*dir).or_default() += 2 * e.name.len() as u64;
        }
        for ((child, parent, index), name) in &s.refs {
            match s.by_index.get(&(*parent, *index)) {
                Some(e) if e.child == *child && e.name == *name => {}
                _ => f.push(format!(
                    "inode {child}: back-reference to {parent} index {index} has no entry"
                )),
            }
        }
        for (obj, it) in &s.inodes {
            match it.kind {
                FileKind::Dir => r.dirs += 1,
                FileKind::File => r.files += 1,
                FileKind::Symlink => r.symlinks += 1,
                _ => {}
            }
            let names = links.get(obj).copied().unwrap_or(0);
            let want = if it.kind == FileKind::Dir {
                if *obj == ROOT_OBJECTID && names != 0 {
                    f.push("the root directory has a name".into());
                }
                if *obj != ROOT_OBJECTID && names > 1 {
                    f.push(format!("directory {obj} has {names} names"));
                }
                if it.nlink == 0 {
                    0
                } else {
                    2 + subdirs.get(obj).copied().unwrap_or(0)
                }
            } else {
                names
            };
            if it.nlink != want {
                f.push(format!(
                    "inode {obj}: link count {}, expected {want}",
                    it.nlink
                ));
            }
            let orphan = s.orphans.contains(obj);
            if (it.nlink == 0) != orphan {
                f.push(format!(
                    "inode {obj}: link count {} but orphan item {}",
                    it.nlink,
                    if orphan { "present" } else { "absent" }
                ));
            }
            if it.kind == FileKind::Dir {
                let size = dir_size.get(obj).copied().unwrap_or(0);
                if it.size != size {
                    f.push(format!(
                        "directory {obj}: size {}, entries need {size}",
                        it.size
                    ));
                }
            }
            if it.kind == FileKind::Symlink {
                let n = s.symlink_bytes.get(obj).copied().unwrap_or(0);
                if n != it.size || n == 0 {
                    f.push(format!(
                        "symlink {obj}: size {}, target pieces hold {n} bytes",
                        it.size
                    ));
                }
            }
            let ex = s.extents.get(obj).map(Vec::as_slice).unwrap_or(&[]);
            if it.kind != FileKind::File && !ex.is_empty() {
                f.push(format!(
                    "inode {obj} of kind {:?} has file extents",
                    it.kind
                ));
            }
            let mut end = 0;
            let mut bytes = 0;
            for (at, fe) in ex {
                if *at < end {
                    f.push(format!(
                        "inode {obj}: extent at {at} overlaps the one before"
                    ));
                }
                if at % BLOCK != 0 || fe.len % BLOCK != 0 || fe.offset % BLOCK != 0 {
                    f.push(format!("inode {obj}: extent at {at} is not block aligned"));
                }
                end = at + fe.len;
                bytes += fe.len;
            }
            if bytes != it.bytes {
                f.push(format!(
                    "inode {obj}: {} bytes recorded, extents cover {bytes}",
                    it.bytes
                ));
            }
        }
        for o in &s.orphans {
            if !s.inodes.contains_key(o) {
                f.push(format!("orphan item for missing inode {o}"));
            }
        }
        r.inodes += s.inodes.len() as u64;
        r.orphans += s.orphans.len() as u64;
        r.extents += s.extents.values().map(|v| v.len() as u64).sum::<u64>();
        // Extent items against the extent tree and the checksum tree.
        for (obj, ex) in &s.extents {
            for (at, fe) in ex {
                let t = self.txn()?;
                match t.data_extent(fe.bytenr)? {
                    Some(d) if d.len == fe.extent_len => {}
                    Some(d) => r.faults.push(format!(
                        "inode {obj} at {at}: extent {} is {} bytes, item says {}",
                        fe.bytenr, d.len, fe.extent_len
                    )),
                    None => r
                        .faults
                        .push(format!("inode {obj} at {at}: no extent at {}", fe.bytenr)),
                }
                if fe.kind == ExtentKind::Regular && data.seen.insert(fe.bytenr) {
                    let sectors = fe.extent_len / BLOCK;
                    let mut have = 0;
                    for (k, v) in self.items_in(
                        tree_id::CSUM_TREE,
                        Key::new(fe.bytenr, ty::DATA_CSUM, 0),
                        Key::new(fe.bytenr, ty::DATA_CSUM, u64::MAX),
                        usize::MAX,
                    )? {
                        match items::decode_csums(&k, &v) {
                            Ok(c)
                                if k.offset == have * BLOCK && c.len() as u64 <= CSUMS_PER_ITEM =>
                            {
                                have += c.len() as u64
                            }
                            Ok(_) => r.faults.push(format!("checksums {k:?} out of place")),
                            Err(e) => r.faults.push(e.to_string()),
                        }
                    }
                    if fe
                        .crypt
                        .as_deref()
                        .is_some_and(crate::data::context_is_authenticated)
                    {
                        // Every data unit of an authenticated extent has its MAC (checked
                        // with the key by scrub; here only that they are all there).
                        let mut macs = 0;
                        for (k, v) in self.items_in(
                            tree_id::CSUM_TREE,
                            Key::new(fe.bytenr, ty::DATA_MAC, 0),
                            Key::new(fe.bytenr, ty::DATA_MAC, u64::MAX),
                            usize::MAX,
                        )? {
                            match items::decode_macs(&k, &v) {
                                Ok(m) if k.offset == macs * BLOCK => {
                                    macs += (m.len() / fscrypt::extent::MAC_SIZE) as u64
                                }
                                Ok(_) => r.faults.push(format!("MACs {k:?} out of place")),
                                Err(e) => r.faults.push(e.to_string()),
                            }
                        }
                        if macs != sectors {
                            r.faults.push(format!(
                                "authenticated extent {}: {macs} data unit MACs for {sectors} \
                                 data units",
                                fe.bytenr
                            ));
                        }
                    }
                    if have != sectors {
                        r.faults.push(format!(
                            "extent {}: {have} sector checksums for {sectors} sectors",
                            fe.bytenr
                        ));
                    } else {
                        // The data itself against its checksums (over the bytes on disk, so
                        // no key is needed), a bounded piece at a time.
                        let mut at = 0;
                        while at < fe.extent_len {
                            let n = (fe.extent_len - at).min(CHECK_PIECE);
                            if let Err(e) = self.read_extent(fe.bytenr, at, n) {
                                r.faults.push(format!(
                                    "inode {obj} at {at}: extent {} bytes [{at}, +{n}): {e}",
                                    fe.bytenr
                                ));
                            }
                            at += n;
                            data.done = data.done.saturating_add(n);
                            (data.progress)(data.done.min(data.total), data.total);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn scan_item(s: &mut Scan, k: &Key, v: &[u8]) -> Result<()> {
    if k.objectid != 0 && k.objectid != ORPHAN_OBJECTID {
        s.objects.insert(k.objectid);
    }
    match k.item_type {
        ty::SUBVOL_INFO if k.objectid == 0 => s.info = Some(SubvolInfo::decode(k, v)?),
        ty::INODE => {
            s.inodes.insert(k.objectid, InodeItem::decode(k, v)?);
        }
        ty::INODE_REF => {
            for InodeRef { index, name } in items::decode_inode_refs(k, v)? {
                s.refs.insert((k.objectid, k.offset, index), name);
            }
        }
        ty::DIR_ITEM => {
            for e in items::decode_dir_items(k, v)? {
                s.by_name.insert((k.objectid, e.name.clone()), e);
            }
        }
        ty::DIR_INDEX => {
            s.by_index
                .insert((k.objectid, k.offset), items::decode_dir_index(k, v)?);
        }
        ty::FILE_EXTENT => {
            let fe = FileExtent::decode(k, v)?;
            s.extents
                .entry(k.objectid)
                .or_default()
                .push((k.offset, fe));
        }
        ty::SYMLINK => {
            let n = items::decode_symlink_piece(k, v)?.len() as u64;
            *s.symlink_bytes.entry(k.objectid).or_default() += n;
        }
        ty::ORPHAN if k.objectid == ORPHAN_OBJECTID => {
            items::decode_orphan(k, v)?;
            s.orphans.insert(k.offset);
        }
        _ => items::decode_any(k, v)?,
    }
    Ok(())
}
