//! The fs layer's on-disk items: their type codes, keys and byte encodings (docs/FORMAT-fs.md).
//! Every value starts with a version byte; decoders bound every length and return errors, never
//! panic, whatever the bytes.

use store::Key;

use crate::error::{Error, Result};
use crate::types::{FileKind, NAME_MAX, Timespec};

/// Item type codes of the fs layer (the store leaves 1..=127 to us).
pub mod ty {
    /// (object id, INODE, 0) -> [`InodeItem`](super::InodeItem).
    pub const INODE: u8 = 1;
    /// (0, SUBVOL_INFO, 0) -> [`SubvolInfo`](super::SubvolInfo).
    pub const SUBVOL_INFO: u8 = 2;
    /// (object id, INODE_REF, parent object id) -> the names this inode has in that parent.
    pub const INODE_REF: u8 = 12;
    /// (object id, XATTR, name hash) -> extended attributes whose names have that hash.
    pub const XATTR: u8 = 24;
    /// (ORPHAN_OBJECTID, ORPHAN, object id) -> an unlinked inode still open.
    pub const ORPHAN: u8 = 48;
    /// (dir object id, DIR_ITEM, name hash) -> entries whose names have that hash: lookup.
    pub const DIR_ITEM: u8 = 84;
    /// (dir object id, DIR_INDEX, index) -> one entry: readdir in a stable order.
    pub const DIR_INDEX: u8 = 96;
    /// Checksum tree: (extent bytenr, DATA_CSUM, offset in extent) -> sector checksums.
    pub const DATA_CSUM: u8 = 100;
    /// Checksum tree: (extent bytenr, DATA_MAC, offset in extent) -> data unit MACs of an
    /// authenticated extent.
    pub const DATA_MAC: u8 = 101;
    /// (object id, FILE_EXTENT, file offset) -> [`FileExtent`](super::FileExtent).
    pub const FILE_EXTENT: u8 = 108;
    /// (object id, SYMLINK, byte offset) -> a piece of a symlink's target.
    pub const SYMLINK: u8 = 110;
    /// (object id, CRYPT_CONTEXT, 0) -> the inode's 40-byte fscrypt v2 context.
    pub const CRYPT_CONTEXT: u8 = 40;
    /// Subvolume index tree: (subvolume number, SUBVOL_ROOT, 0) -> [`SubvolRoot`](super::SubvolRoot).
    pub const SUBVOL_ROOT: u8 = 3;
    /// Subvolume index tree: (0, SUBVOL_COUNTER, 0) -> [`SubvolCounter`](super::SubvolCounter).
    pub const SUBVOL_COUNTER: u8 = 4;
}

/// Object id under which orphan items live: above every inode's (48-bit) object id.
pub const ORPHAN_OBJECTID: u64 = 1 << 48;
/// Object id of a subvolume's root directory.
pub const ROOT_OBJECTID: u64 = 1;
/// INODE flag of a directory whose entry names are stored encrypted (it was empty when its
/// policy was set, or was made under one).
pub const INODE_FLAG_ENCRYPTED_NAMES: u64 = 1;
/// Object id of the stand-in a snapshot shows for a nested subvolume it does not contain (an
/// empty, unchangeable directory, as btrfs shows): never an inode on disk.
pub const EMPTY_DIR_OBJECTID: u64 = (1 << 48) - 1;

/// The tree (owned by this layer, kept by the store) that indexes subvolumes: one
/// [`SubvolRoot`] per subvolume other than 0 and the [`SubvolCounter`].
pub const SUBVOL_INDEX_TREE: u64 = store::tree_id::UPPER_INDEX_TREE;
/// First DIR_INDEX of a directory: cookies 1 and 2 are "." and "..".
pub const FIRST_DIR_INDEX: u64 = 3;
/// Bytes of a symlink target per SYMLINK item, so any node size holds one.
pub const SYMLINK_CHUNK: usize = 512;
/// Sectors per DATA_CSUM item (512 bytes of checksums fit any node size).
pub const CSUMS_PER_ITEM: u64 = 128;
/// Longest symlink target (Linux's PATH_MAX minus the terminating zero).
pub const SYMLINK_MAX: usize = 4095;

const VERSION: u8 = 1;

/// The hash of a name for DIR_ITEM and XATTR keys: CRC-32C of the name in the high half, CRC-32C
/// of the name seeded with `!0` in the low half. Stable: part of the format.
pub fn name_hash(name: &[u8]) -> u64 {
    (u64::from(crc32c::crc32c(name)) << 32) | u64::from(crc32c::crc32c_append(!0, name))
}

/// A cursor over an item's bytes that refuses to read past its end.
struct Rd<'a> {
    b: &'a [u8],
    key: &'a Key,
}

impl<'a> Rd<'a> {
    fn new(key: &'a Key, b: &'a [u8], what: &str) -> Result<Self> {
        let mut r = Rd { b, key };
        let v = r.u8()?;
        if v != VERSION {
            return Err(Error::corrupt(key, format!("{what} version {v}")));
        }
        Ok(r)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::corrupt(self.key, "item too short"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn time(&mut self) -> Result<Timespec> {
        let sec = self.u64()? as i64;
        let nsec = self.u32()?;
        if nsec >= 1_000_000_000 {
            return Err(Error::corrupt(self.key, "nanoseconds out of range"));
        }
        Ok(Timespec { sec, nsec })
    }
    fn name(&mut self) -> Result<&'a [u8]> {
        let n = usize::from(self.u16()?);
        if n == 0 || n > NAME_MAX {
            return Err(Error::corrupt(self.key, format!("name of {n} bytes")));
        }
        self.take(n)
    }
    fn kind(&mut self) -> Result<FileKind> {
        let c = self.u8()?;
        FileKind::from_code(c).ok_or_else(|| Error::corrupt(self.key, format!("file kind {c}")))
    }
    fn done(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt(self.key, "trailing bytes"))
        }
    }
}

fn put_time(v: &mut Vec<u8>, t: Timespec) {
    v.extend_from_slice(&t.sec.to_le_bytes());
    v.extend_from_slice(&t.nsec.to_le_bytes());
}

fn put_name(v: &mut Vec<u8>, name: &[u8]) {
    // Names are checked against NAME_MAX before they get here.
    v.extend_from_slice(&(name.len() as u16).to_le_bytes());
    v.extend_from_slice(name);
}

/// An inode: (object id, INODE, 0), 112 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeItem {
    pub kind: FileKind,
    /// The 0o7777 bits.
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    /// Bytes of data extents the file's items cover (st_blocks * 512).
    pub bytes: u64,
    /// Transaction generation that created the inode.
    pub generation: u64,
    /// Directories: the next DIR_INDEX to hand out (never reused).
    pub next_index: u64,
    pub flags: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
}

impl InodeItem {
    /// The stand-in directory a snapshot shows for a nested subvolume it does not contain.
    pub fn empty_subvol_dir() -> InodeItem {
        InodeItem {
            kind: FileKind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            bytes: 0,
            generation: 0,
            next_index: FIRST_DIR_INDEX,
            flags: 0,
            atime: Timespec { sec: 0, nsec: 0 },
            mtime: Timespec { sec: 0, nsec: 0 },
            ctime: Timespec { sec: 0, nsec: 0 },
            crtime: Timespec { sec: 0, nsec: 0 },
        }
    }

    pub const SIZE: usize = 112;

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::SIZE);
        v.push(VERSION);
        v.push(self.kind.code());
        v.extend_from_slice(&[0, 0]);
        for x in [self.perm, self.nlink, self.uid, self.gid, self.rdev] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for x in [
            self.size,
            self.bytes,
            self.generation,
            self.next_index,
            self.flags,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            put_time(&mut v, t);
        }
        v
    }

    pub fn decode(key: &Key, b: &[u8]) -> Result<Self> {
        let mut r = Rd::new(key, b, "inode")?;
        let kind = r.kind()?;
        if r.u16()? != 0 {
            return Err(Error::corrupt(key, "reserved bytes set"));
        }
        let perm = r.u32()?;
        if perm & !0o7777 != 0 {
            return Err(Error::corrupt(key, format!("mode {perm:o}")));
        }
        let it = InodeItem {
            kind,
            perm,
            nlink: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            rdev: r.u32()?,
            size: r.u64()?,
            bytes: r.u64()?,
            generation: r.u64()?,
            next_index: r.u64()?,
            flags: r.u64()?,
            atime: r.time()?,
            mtime: r.time()?,
            ctime: r.time()?,
            crtime: r.time()?,
        };
        r.done()?;
        Ok(it)
    }
}

/// Per-subvolume counters: (0, SUBVOL_INFO, 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubvolInfo {
    /// The next object id to hand out; ids are never reused.
    pub next_objectid: u64,
}

impl SubvolInfo {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION];
        v.extend_from_slice(&self.next_objectid.to_le_bytes());
        v
    }

    pub fn decode(key: &Key, b: &[u8]) -> Result<Self> {
        let mut r = Rd::new(key, b, "subvolume info")?;
        let next_objectid = r.u64()?;
        r.done()?;
        if next_objectid <= ROOT_OBJECTID || next_objectid >= ORPHAN_OBJECTID {
            return Err(Error::corrupt(
                key,
                format!("next object id {next_objectid}"),
            ));
        }
        Ok(SubvolInfo { next_objectid })
    }
}

/// Flag of a read-only subvolume.
pub const SUBVOL_READ_ONLY: u64 = 1;

/// Where a subvolume is linked and what it is: (subvolume, SUBVOL_ROOT, 0) in the index tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubvolRoot {
    /// Global id of the directory holding its entry.
    pub parent: u64,
    /// Its entry's name there.
    pub name: Vec<u8>,
    /// [`SUBVOL_READ_ONLY`].
    pub flags: u64,
    /// The subvolume it is a snapshot of, if any (that subvolume may be gone since).
    pub snapshot_of: Option<u64>,
    /// Transaction generation that made it.
    pub generation: u64,
    pub otime: Timespec,
}

impl SubvolRoot {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION];
        v.extend_from_slice(&self.parent.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&self.snapshot_of.unwrap_or(u64::MAX).to_le_bytes());
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(&self.otime.sec.to_le_bytes());
        v.extend_from_slice(&self.otime.nsec.to_le_bytes());
        put_name(&mut v, &self.name);
        v
    }

    pub fn decode(key: &Key, b: &[u8]) -> Result<Self> {
        let mut r = Rd::new(key, b, "subvolume root")?;
        let parent = r.u64()?;
        let flags = r.u64()?;
        if flags & !SUBVOL_READ_ONLY != 0 {
            return Err(Error::corrupt(key, format!("subvolume flags {flags:#x}")));
        }
        let snapshot_of = match r.u64()? {
            u64::MAX => None,
            n => Some(n),
        };
        let generation = r.u64()?;
        let sec = r.u64()? as i64;
        let nsec = r.u32()?;
        if nsec >= 1_000_000_000 {
            return Err(Error::corrupt(key, "nanoseconds out of range"));
        }
        let name = r.name()?.to_vec();
        r.done()?;
        Ok(SubvolRoot {
            parent,
            name,
            flags,
            snapshot_of,
            generation,
            otime: Timespec { sec, nsec },
        })
    }
}

/// The next subvolume number to hand out: (0, SUBVOL_COUNTER, 0) in the index tree. Numbers are
/// never reused, so a subvolume still being freed in the background never meets a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubvolCounter {
    pub next: u64,
}

impl SubvolCounter {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![VERSION];
        v.extend_from_slice(&self.next.to_le_bytes());
        v
    }

    pub fn decode(key: &Key, b: &[u8]) -> Result<Self> {
        let mut r = Rd::new(key, b, "subvolume counter")?;
        let next = r.u64()?;
        r.done()?;
        Ok(SubvolCounter { next })
    }
}

/// One name of an inode in a parent directory (part of an INODE_REF item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeRef {
    pub index: u64,
    pub name: Vec<u8>,
}

pub fn encode_inode_refs(refs: &[InodeRef]) -> Vec<u8> {
    let mut v = vec![VERSION];
    for r in refs {
        v.extend_from_slice(&r.index.to_le_bytes());
        put_name(&mut v, &r.name);
    }
    v
}

pub fn decode_inode_refs(key: &Key, b: &[u8]) -> Result<Vec<InodeRef>> {
    let mut r = Rd::new(key, b, "inode ref")?;
    let mut out = Vec::new();
    while !r.b.is_empty() {
        let index = r.u64()?;
        let name = r.name()?.to_vec();
        out.push(InodeRef { index, name });
    }
    if out.is_empty() {
        return Err(Error::corrupt(key, "empty inode ref"));
    }
    Ok(out)
}

/// A directory entry as DIR_ITEM (a list of these per hash) and DIR_INDEX (one) store it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntryItem {
    /// On disk: the child's object id in the directory's tree, or for a subvolume link the
    /// subvolume's number. In memory above the item helpers: the child's global id.
    pub child: u64,
    pub kind: FileKind,
    pub index: u64,
    pub name: Vec<u8>,
    /// A link to another subvolume's root directory (kind code [`SUBVOL_LINK_CODE`] on disk).
    pub subvol: bool,
}

/// Kind code of an entry that links a subvolume (it reads as a directory).
pub const SUBVOL_LINK_CODE: u8 = 64;

fn put_entry(v: &mut Vec<u8>, e: &DirEntryItem) {
    v.extend_from_slice(&e.child.to_le_bytes());
    v.push(if e.subvol {
        SUBVOL_LINK_CODE
    } else {
        e.kind.code()
    });
    v.extend_from_slice(&e.index.to_le_bytes());
    put_name(v, &e.name);
}

fn get_entry(r: &mut Rd<'_>) -> Result<DirEntryItem> {
    let child = r.u64()?;
    let subvol = r.b.first() == Some(&SUBVOL_LINK_CODE);
    let kind = if subvol {
        r.u8()?;
        FileKind::Dir
    } else {
        r.kind()?
    };
    Ok(DirEntryItem {
        child,
        kind,
        index: r.u64()?,
        name: r.name()?.to_vec(),
        subvol,
    })
}

pub fn encode_dir_items(es: &[DirEntryItem]) -> Vec<u8> {
    let mut v = vec![VERSION];
    for e in es {
        put_entry(&mut v, e);
    }
    v
}

pub fn decode_dir_items(key: &Key, b: &[u8]) -> Result<Vec<DirEntryItem>> {
    let mut r = Rd::new(key, b, "dir item")?;
    let mut out = Vec::new();
    while !r.b.is_empty() {
        let e = get_entry(&mut r)?;
        if name_hash(&e.name) != key.offset {
            return Err(Error::corrupt(key, "name does not match its hash"));
        }
        out.push(e);
    }
    if out.is_empty() {
        return Err(Error::corrupt(key, "empty dir item"));
    }
    Ok(out)
}

pub fn encode_dir_index(e: &DirEntryItem) -> Vec<u8> {
    encode_dir_items(std::slice::from_ref(e))
}

pub fn decode_dir_index(key: &Key, b: &[u8]) -> Result<DirEntryItem> {
    let mut r = Rd::new(key, b, "dir index")?;
    let e = get_entry(&mut r)?;
    r.done()?;
    if e.index != key.offset {
        return Err(Error::corrupt(key, "index does not match its key"));
    }
    Ok(e)
}

/// One extended attribute (part of an XATTR item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

pub fn encode_xattrs(xs: &[Xattr]) -> Vec<u8> {
    let mut v = vec![VERSION];
    for x in xs {
        put_name(&mut v, &x.name);
        // Values are bounded by the node's item size (far below 64 KiB) before they get here.
        v.extend_from_slice(&(x.value.len() as u16).to_le_bytes());
        v.extend_from_slice(&x.value);
    }
    v
}

pub fn decode_xattrs(key: &Key, b: &[u8]) -> Result<Vec<Xattr>> {
    let mut r = Rd::new(key, b, "xattr")?;
    let mut out = Vec::new();
    while !r.b.is_empty() {
        let name = r.name()?.to_vec();
        let n = usize::from(r.u16()?);
        let value = r.take(n)?.to_vec();
        if name_hash(&name) != key.offset {
            return Err(Error::corrupt(key, "name does not match its hash"));
        }
        out.push(Xattr { name, value });
    }
    if out.is_empty() {
        return Err(Error::corrupt(key, "empty xattr item"));
    }
    Ok(out)
}

/// What a file extent item maps its range to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtentKind {
    /// Written data.
    Regular,
    /// Allocated by fallocate, never written: reads as zeros.
    Prealloc,
}

/// The longest crypt context a file extent item may carry.
pub const MAX_CRYPT_CONTEXT: usize = 64;

/// A file extent item: (object id, FILE_EXTENT, file offset). Maps `len` bytes of the file to
/// bytes `[offset, offset + len)` of the data extent at `bytenr` of `extent_len` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileExtent {
    pub kind: ExtentKind,
    pub bytenr: u64,
    pub extent_len: u64,
    pub offset: u64,
    pub len: u64,
    /// The extent's fscrypt context; `None` for plaintext.
    pub crypt: Option<Vec<u8>>,
}

impl FileExtent {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![
            VERSION,
            match self.kind {
                ExtentKind::Regular => 1,
                ExtentKind::Prealloc => 2,
            },
        ];
        for x in [self.bytenr, self.extent_len, self.offset, self.len] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        match &self.crypt {
            None => v.push(0),
            Some(c) => {
                // Contexts are bounded by MAX_CRYPT_CONTEXT when made.
                v.push(c.len() as u8);
                v.extend_from_slice(c);
            }
        }
        v
    }

    pub fn decode(key: &Key, b: &[u8]) -> Result<Self> {
        let mut r = Rd::new(key, b, "file extent")?;
        let kind = match r.u8()? {
            1 => ExtentKind::Regular,
            2 => ExtentKind::Prealloc,
            k => return Err(Error::corrupt(key, format!("extent kind {k}"))),
        };
        let (bytenr, extent_len, offset, len) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let n = usize::from(r.u8()?);
        let crypt = match n {
            0 => None,
            n if n <= MAX_CRYPT_CONTEXT => Some(r.take(n)?.to_vec()),
            n => return Err(Error::corrupt(key, format!("crypt context of {n} bytes"))),
        };
        r.done()?;
        let fits = offset.checked_add(len).is_some_and(|e| e <= extent_len);
        if bytenr == 0 || len == 0 || !fits || key.offset.checked_add(len).is_none() {
            return Err(Error::corrupt(key, "extent range out of bounds"));
        }
        Ok(FileExtent {
            kind,
            bytenr,
            extent_len,
            offset,
            len,
            crypt,
        })
    }
}

/// An orphan: (ORPHAN_OBJECTID, ORPHAN, object id) -> one version byte.
pub fn encode_orphan() -> Vec<u8> {
    vec![VERSION]
}

pub fn decode_orphan(key: &Key, b: &[u8]) -> Result<()> {
    Rd::new(key, b, "orphan")?.done()
}

/// A symlink target piece: (object id, SYMLINK, byte offset) -> version, bytes.
pub fn encode_symlink_piece(bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![VERSION];
    v.extend_from_slice(bytes);
    v
}

pub fn decode_symlink_piece<'a>(key: &Key, b: &'a [u8]) -> Result<&'a [u8]> {
    let Some((&v, rest)) = b.split_first() else {
        return Err(Error::corrupt(key, "empty symlink piece"));
    };
    if v != VERSION {
        return Err(Error::corrupt(key, format!("symlink version {v}")));
    }
    if rest.is_empty() || rest.len() > SYMLINK_CHUNK {
        return Err(Error::corrupt(key, "symlink piece length"));
    }
    Ok(rest)
}

/// Sector checksums: (extent bytenr, DATA_CSUM, offset in extent) in the checksum tree -> version,
/// 3 zero bytes, then one u32 per sector.
pub fn encode_csums(c: &[u32]) -> Vec<u8> {
    let mut v = vec![VERSION, 0, 0, 0];
    for x in c {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

pub fn decode_csums(key: &Key, b: &[u8]) -> Result<Vec<u32>> {
    let mut r = Rd::new(key, b, "checksums")?;
    if r.take(3)? != [0, 0, 0] {
        return Err(Error::corrupt(key, "reserved bytes set"));
    }
    let n = r.b.len();
    if n == 0 || n % 4 != 0 || n / 4 > CSUMS_PER_ITEM as usize {
        return Err(Error::corrupt(key, format!("{n} bytes of checksums")));
    }
    let mut out = Vec::with_capacity(n / 4);
    while !r.b.is_empty() {
        out.push(r.u32()?);
    }
    Ok(out)
}

/// Data unit MACs per DATA_MAC item (16 bytes each: 512 bytes, like a checksum item).
pub const MACS_PER_ITEM: u64 = 32;

/// Data unit MACs: (extent bytenr, DATA_MAC, offset in extent) in the checksum tree -> version,
/// 3 zero bytes, then one 16-byte MAC per 4096-byte data unit.
pub fn encode_macs(macs: &[u8]) -> Vec<u8> {
    let mut v = vec![VERSION, 0, 0, 0];
    v.extend_from_slice(macs);
    v
}

/// The MAC bytes of a DATA_MAC item (a whole number of MACs, 1..=[`MACS_PER_ITEM`]).
pub fn decode_macs(key: &Key, b: &[u8]) -> Result<Vec<u8>> {
    let mut r = Rd::new(key, b, "data unit MACs")?;
    if r.take(3)? != [0, 0, 0] {
        return Err(Error::corrupt(key, "reserved bytes set"));
    }
    let n = r.b.len();
    let size = fscrypt::extent::MAC_SIZE;
    if n == 0 || n % size != 0 || n / size > MACS_PER_ITEM as usize {
        return Err(Error::corrupt(key, format!("{n} bytes of MACs")));
    }
    Ok(r.b.to_vec())
}

/// Decodes any fs item by its type, for the fuzzer and the checker: whether it is well-formed.
pub fn decode_any(key: &Key, b: &[u8]) -> Result<()> {
    match key.item_type {
        ty::INODE => InodeItem::decode(key, b).map(drop),
        ty::SUBVOL_INFO => SubvolInfo::decode(key, b).map(drop),
        ty::INODE_REF => decode_inode_refs(key, b).map(drop),
        ty::XATTR => decode_xattrs(key, b).map(drop),
        ty::ORPHAN => decode_orphan(key, b),
        ty::DIR_ITEM => decode_dir_items(key, b).map(drop),
        ty::DIR_INDEX => decode_dir_index(key, b).map(drop),
        ty::DATA_CSUM => decode_csums(key, b).map(drop),
        ty::DATA_MAC => decode_macs(key, b).map(drop),
        ty::FILE_EXTENT => FileExtent::decode(key, b).map(drop),
        ty::SYMLINK => decode_symlink_piece(key, b).map(drop),
        ty::SUBVOL_ROOT => SubvolRoot::decode(key, b).map(drop),
        ty::CRYPT_CONTEXT => fscrypt::context::InodeContext::decode(b)
            .map(drop)
            .map_err(|e| Error::corrupt(key, e.to_string())),
        ty::SUBVOL_COUNTER => SubvolCounter::decode(key, b).map(drop),
        t => Err(Error::corrupt(key, format!("unknown item type {t}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inode() -> InodeItem {
        InodeItem {
            kind: FileKind::File,
            perm: 0o4755,
            nlink: 2,
            uid: 1000,
            gid: 100,
            rdev: 0,
            size: 12345,
            bytes: 16384,
            generation: 7,
            next_index: 3,
            flags: 0,
            atime: Timespec { sec: -5, nsec: 1 },
            mtime: Timespec {
                sec: 6,
                nsec: 999_999_999,
            },
            ctime: Timespec::default(),
            crtime: Timespec { sec: 1, nsec: 2 },
        }
    }

    #[test]
    fn inode_round_trips_and_has_its_size() {
        let k = Key::new(5, ty::INODE, 0);
        let v = inode().encode();
        assert_eq!(v.len(), InodeItem::SIZE);
        assert_eq!(InodeItem::decode(&k, &v).unwrap(), inode());
        let mut bad = v.clone();
        bad[0] = 2;
        assert!(InodeItem::decode(&k, &bad).is_err());
        assert!(InodeItem::decode(&k, &v[..111]).is_err());
    }

    #[test]
    fn extent_round_trips_with_and_without_context() {
        let k = Key::new(5, ty::FILE_EXTENT, 8192);
        for crypt in [None, Some(vec![1u8; 34])] {
            let e = FileExtent {
                kind: ExtentKind::Regular,
                bytenr: 1 << 20,
                extent_len: 65536,
                offset: 4096,
                len: 8192,
                crypt,
            };
            assert_eq!(FileExtent::decode(&k, &e.encode()).unwrap(), e);
        }
        let e = FileExtent {
            kind: ExtentKind::Prealloc,
            bytenr: 1 << 20,
            extent_len: 4096,
            offset: 0,
            len: 8192,
            crypt: None,
        };
        assert!(
            FileExtent::decode(&k, &e.encode()).is_err(),
            "len beyond extent"
        );
    }

    #[test]
    fn dir_items_check_their_hash() {
        let e = DirEntryItem {
            child: 9,
            kind: FileKind::Dir,
            index: 4,
            name: b"abc".to_vec(),
            subvol: false,
        };
        let v = encode_dir_items(std::slice::from_ref(&e));
        let k = Key::new(1, ty::DIR_ITEM, name_hash(b"abc"));
        assert_eq!(decode_dir_items(&k, &v).unwrap(), vec![e.clone()]);
        let wrong = Key::new(1, ty::DIR_ITEM, name_hash(b"abd"));
        assert!(decode_dir_items(&wrong, &v).is_err());
        assert_eq!(
            decode_dir_index(&Key::new(1, ty::DIR_INDEX, 4), &v).unwrap(),
            e
        );
        assert!(decode_dir_index(&Key::new(1, ty::DIR_INDEX, 5), &v).is_err());
    }

    #[test]
    fn name_hash_is_stable() {
        // Fixed value: changing the hash would orphan every directory entry on disk.
        assert_eq!(
            name_hash(b"hello") >> 32,
            0x9a71_bb4c,
            "CRC-32C of \"hello\""
        );
        assert_eq!(name_hash(b"hello"), 0x9a71_bb4c_20fc_3286);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(t in 0u8..128, off in any::<u64>(), v in proptest::collection::vec(any::<u8>(), 0..300)) {
            let k = Key::new(3, t, off);
            let _ = decode_any(&k, &v);
        }

        #[test]
        fn xattrs_round_trip(name in proptest::collection::vec(1u8..255, 1..255), value in proptest::collection::vec(any::<u8>(), 0..300)) {
            let x = Xattr { name: name.clone(), value };
            let k = Key::new(3, ty::XATTR, name_hash(&name));
            prop_assert_eq!(decode_xattrs(&k, &encode_xattrs(std::slice::from_ref(&x))).unwrap(), vec![x]);
        }

        #[test]
        fn inodes_round_trip(kind in 1u8..8, perm in 0u32..0o10000, n in any::<[u32; 4]>(), w in any::<[u64; 5]>(), t in any::<[(i64, u32); 4]>()) {
            let ts = |(sec, nsec): (i64, u32)| Timespec { sec, nsec: nsec % 1_000_000_000 };
            let it = InodeItem {
                kind: FileKind::from_code(kind).unwrap(),
                perm,
                nlink: n[0],
                uid: n[1],
                gid: n[2],
                rdev: n[3],
                size: w[0],
                bytes: w[1],
                generation: w[2],
                next_index: w[3],
                flags: w[4],
                atime: ts(t[0]),
                mtime: ts(t[1]),
                ctime: ts(t[2]),
                crtime: ts(t[3]),
            };
            let k = Key::new(9, ty::INODE, 0);
            prop_assert_eq!(InodeItem::decode(&k, &it.encode()).unwrap(), it);
        }

        #[test]
        fn file_extents_round_trip(prealloc in any::<bool>(), bytenr in 1u64.., offset in 0u64..1 << 40, len in 1u64..1 << 40, extra in 0u64..1 << 20, crypt in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=MAX_CRYPT_CONTEXT))) {
            let fe = FileExtent {
                kind: if prealloc { ExtentKind::Prealloc } else { ExtentKind::Regular },
                bytenr,
                extent_len: offset + len + extra,
                offset,
                len,
                crypt,
            };
            let k = Key::new(9, ty::FILE_EXTENT, offset + 4096);
            prop_assert_eq!(FileExtent::decode(&k, &fe.encode()).unwrap(), fe);
        }

        #[test]
        fn csums_round_trip(c in proptest::collection::vec(any::<u32>(), 1..128)) {
            let k = Key::new(1 << 20, ty::DATA_CSUM, 0);
            prop_assert_eq!(decode_csums(&k, &encode_csums(&c)).unwrap(), c);
        }
    }
}
