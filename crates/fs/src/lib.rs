//! cowcrypt's filesystem as a library: POSIX files, directories, links, special files, xattrs
//! and POSIX ACLs over the copy-on-write store, with no mount needed. The FUSE adapter and the
//! CLI are clients of this crate; so are the tests.
//!
//! The API is the contract of docs/FS-API.md; the items it writes are in docs/FORMAT-fs.md.
//!
//! ```
//! use cowfs::{Caller, Filesystem, MkfsOptions, OpenFlags, OpenOptions, ROOT_INO};
//!
//! let dir = tempfile::tempdir()?;
//! let image = dir.path().join("fs.img");
//! Filesystem::mkfs_image(&image, 64 << 20, &MkfsOptions::default())?;
//! let fs = Filesystem::open_image(&image, &OpenOptions::default())?;
//! let me = Caller::root();
//!
//! let (attr, fh) = fs.create(ROOT_INO, b"hello.txt", 0o644, OpenFlags(libc::O_RDWR), &me)?;
//! fs.write(attr.ino, fh, 0, b"hello, world", &me)?;
//! fs.fsync(attr.ino, fh, false)?; // durable from here on
//! assert_eq!(fs.read(attr.ino, fh, 7, 100)?, b"world");
//! fs.release(attr.ino, fh)?;
//!
//! let dh = fs.opendir(ROOT_INO, &me)?;
//! let names: Vec<Vec<u8>> = fs.readdir(ROOT_INO, dh, 0, 100)?.into_iter().map(|e| e.name).collect();
//! assert_eq!(names, [&b"."[..], b"..", b"hello.txt"]);
//! fs.releasedir(ROOT_INO, dh)?;
//! fs.unmount()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod acl;
mod balance;
mod check;
pub mod control;
mod crypt;
mod data;
mod error;
mod file;
mod filesystem;
mod inspect;
pub mod items;
pub mod keys;
mod namei;
mod perm;
pub mod scrub;
mod state;
mod subvol;
mod types;
mod usage;
mod xattr;

pub use balance::BalanceReport;
pub use check::FsckReport;
pub use error::{Error, Result};
pub use filesystem::Filesystem;
pub use inspect::{EntryInfo, ExtentInfo, InodeInfo, Inspection, SubvolumeInfo};
pub use keys::{KeyPresence, KeyRemoval, KeyStatusReport};
pub use scrub::ScrubReport;
pub use store::{ReadBuf, ResizeReport};
pub use subvol::{SubvolumeEntry, SubvolumeList};
pub use types::{
    Attr, Caller, DirEntry, FallocMode, Fh, FileKind, Ino, MkfsOptions, NAME_MAX, OpenFlags,
    OpenOptions, ROOT_INO, RenameFlags, SetAttr, StatFs, TimeSet, Timespec, Whence,
};
pub use usage::{DiskUsage, SpaceReport};
pub use xattr::{XATTR_CREATE, XATTR_REPLACE};
