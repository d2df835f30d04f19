//! The values the filesystem's API speaks in: callers, attributes, directory entries, flags.
//! They are plain data; the rules that use them live in the modules that apply them.

use std::time::{SystemTime, UNIX_EPOCH};

/// An inode number: top 16 bits the subvolume, low 48 bits the object id inside its tree.
pub type Ino = u64;
/// A handle from `open`, `opendir` or `create`.
pub type Fh = u64;
/// The root directory of the mount (subvolume 0, object id 1).
pub const ROOT_INO: Ino = 1;
/// Longest name of a directory entry or xattr, in bytes (Linux's NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Who asks: permission checks run against this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub pid: u32,
    /// Applied to the mode of new inodes unless the parent has a default ACL.
    pub umask: u32,
}

impl Caller {
    /// uid 0, gid 0, umask 0.
    pub fn root() -> Caller {
        Caller {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            pid: 0,
            umask: 0,
        }
    }

    /// Whether the caller is in group `gid` (primary or supplementary).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    CharDev,
    BlockDev,
    Fifo,
    Socket,
}

impl FileKind {
    /// The S_IFMT bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => libc::S_IFREG,
            FileKind::Dir => libc::S_IFDIR,
            FileKind::Symlink => libc::S_IFLNK,
            FileKind::CharDev => libc::S_IFCHR,
            FileKind::BlockDev => libc::S_IFBLK,
            FileKind::Fifo => libc::S_IFIFO,
            FileKind::Socket => libc::S_IFSOCK,
        }
    }

    /// The kind named by the S_IFMT bits of `mode`.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFDIR => FileKind::Dir,
            libc::S_IFLNK => FileKind::Symlink,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }

    /// The on-disk code (docs/FORMAT-fs.md).
    pub(crate) fn code(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::CharDev => 4,
            FileKind::BlockDev => 5,
            FileKind::Fifo => 6,
            FileKind::Socket => 7,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<FileKind> {
        Some(match c {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::CharDev,
            5 => FileKind::BlockDev,
            6 => FileKind::Fifo,
            7 => FileKind::Socket,
            _ => return None,
        })
    }
}

/// A point in time, nanosecond resolution.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    /// The current wall-clock time.
    pub fn now() -> Timespec {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timespec {
                sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                let sec = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
                match d.subsec_nanos() {
                    0 => Timespec { sec, nsec: 0 },
                    n => Timespec {
                        sec: sec - 1,
                        nsec: 1_000_000_000 - n,
                    },
                }
            }
        }
    }
}

/// How `setattr` sets atime or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSet {
    Now,
    At(Timespec),
}

/// What `setattr` changes; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timespec>,
}

/// What stat shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// The 0o7777 bits.
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    /// In 512-byte units.
    pub blocks: u64,
    pub blksize: u32,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    pub crtime: Timespec,
    pub generation: u64,
}

/// One directory entry from `readdir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: Ino,
    pub kind: FileKind,
    pub name: Vec<u8>,
    /// Pass back to `readdir` to continue after this entry.
    pub cookie: u64,
}

/// What statfs shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// `lseek`'s SEEK_DATA and SEEK_HOLE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whence {
    Data,
    Hole,
}

/// fallocate's mode bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FallocMode {
    pub keep_size: bool,
    pub punch_hole: bool,
    pub zero_range: bool,
}

/// renameat2's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

/// The open(2) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags(pub i32);

impl OpenFlags {
    pub fn access_mode(self) -> i32 {
        self.0 & libc::O_ACCMODE
    }
    pub fn readable(self) -> bool {
        matches!(self.access_mode(), libc::O_RDONLY | libc::O_RDWR)
    }
    pub fn writable(self) -> bool {
        matches!(self.access_mode(), libc::O_WRONLY | libc::O_RDWR)
    }
    pub fn append(self) -> bool {
        self.0 & libc::O_APPEND != 0
    }
    pub fn truncate(self) -> bool {
        self.0 & libc::O_TRUNC != 0
    }
}

/// How to make a filesystem.
#[derive(Debug, Clone)]
pub struct MkfsOptions {
    pub label: String,
    /// Tree node size: a power of two in 4096..=65536.
    pub node_size: u32,
    pub uuid: [u8; 16],
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            label: String::new(),
            node_size: 16384,
            uuid: [0x5a; 16],
        }
    }
}

/// How to open a filesystem.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Refuse every change (EROFS); nothing is written, orphans are left for a writable mount.
    pub read_only: bool,
    /// How often the background thread commits a dirty transaction.
    pub commit_interval: std::time::Duration,
    /// Dirty file data buffered over all inodes. Half of it starts a flight to the flush
    /// thread (write-behind); writes wait for that flight once the buffer is full again.
    pub max_dirty_bytes: u64,
    /// The largest data extent a flush writes.
    pub max_extent_bytes: u64,
    /// Count kernel lookups (FUSE): an unlinked inode then lives until `forget` drops its count
    /// to zero as well as until its last handle is released. Library users leave this off.
    pub lookup_counts: bool,
    /// For tests: the flush thread waits this long before writing each flight, so that the
    /// operations after a write meet the flight in the air. Zero outside tests.
    #[doc(hidden)]
    pub flight_delay: std::time::Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            read_only: false,
            commit_interval: std::time::Duration::from_secs(5),
            max_dirty_bytes: 64 << 20,
            max_extent_bytes: 8 << 20,
            lookup_counts: false,
            flight_delay: std::time::Duration::ZERO,
        }
    }
}
