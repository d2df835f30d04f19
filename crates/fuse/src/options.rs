//! Mount options: the `-o` vocabulary the mount accepts, parsed into [`MountOptions`].
//!
//! Owns which options exist and which are refused. Only `ro`/`rw` and `allow_other` change what
//! the adapter does; a short list of harmless kernel flags passes through to mount(2); anything
//! else is an error naming the option, never silently ignored. `default_permissions` is refused on
//! purpose: cowfs checks permissions itself (ACLs, sticky directories, setgid inheritance), and the
//! kernel's check would answer first with a different policy.

use std::fmt;

/// What a mount asks of the adapter and the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Mount read-only: the kernel refuses writes with EROFS and cowfs is opened read-only.
    pub read_only: bool,
    /// Let users other than the mounting one (root) use the mount.
    pub allow_other: bool,
    /// Kernel mount flags passed through unchanged (for example `nosuid`, `noatime`).
    pub flags: Vec<PassFlag>,
    /// The source name shown in /proc/mounts; the image path when absent.
    pub fsname: Option<String>,
    /// Worker threads answering requests (each runs one request at a time).
    pub threads: usize,
    /// The kernel's readahead window for the mount, in KiB (set when mounting as root).
    pub readahead_kib: u32,
    /// File data buffered before it is written, in KiB: half of it starts a flight to the
    /// flush thread (cowfs's `max_dirty_bytes`).
    pub dirty_kib: u64,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: false,
            flags: Vec::new(),
            fsname: None,
            threads: default_threads(),
            readahead_kib: DEFAULT_READAHEAD_KIB,
            dirty_kib: cowfs::OpenOptions::default().max_dirty_bytes >> 10,
        }
    }
}

/// Four workers keep one slow request (a commit, a large read, an fsync) from stalling every
/// other caller; workers mostly wait on I/O, so this does not depend on the number of cores.
fn default_threads() -> usize {
    4
}

/// 8 MiB of readahead keeps several 1 MiB reads in flight, so a cold sequential read overlaps
/// device reads with checksums and decryption (bench/RESULTS.md, run 17).
pub const DEFAULT_READAHEAD_KIB: u32 = 8192;

/// Largest `readahead=` accepted: 256 MiB.
pub const MAX_READAHEAD_KIB: u32 = 256 << 10;

/// `dirty=` accepted: from 16 KiB (four blocks: tests make every write meet a flight with it)
/// to 4 GiB.
pub const DIRTY_KIB: std::ops::RangeInclusive<u64> = 16..=(4 << 20);

/// Largest `threads=` accepted: each worker owns a 16 MiB request buffer.
pub const MAX_THREADS: usize = 64;

/// A kernel mount flag with no effect on the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PassFlag {
    Dev,
    NoDev,
    Suid,
    NoSuid,
    Exec,
    NoExec,
    Atime,
    NoAtime,
    Sync,
    Async,
    DirSync,
}

impl PassFlag {
    fn parse(word: &str) -> Option<PassFlag> {
        Some(match word {
            "dev" => PassFlag::Dev,
            "nodev" => PassFlag::NoDev,
            "suid" => PassFlag::Suid,
            "nosuid" => PassFlag::NoSuid,
            "exec" => PassFlag::Exec,
            "noexec" => PassFlag::NoExec,
            "atime" => PassFlag::Atime,
            "noatime" => PassFlag::NoAtime,
            "sync" => PassFlag::Sync,
            "async" => PassFlag::Async,
            "dirsync" => PassFlag::DirSync,
            _ => return None,
        })
    }
}

/// Why an option string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    option: String,
    reason: &'static str,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mount option '{}': {}", self.option, self.reason)
    }
}

impl std::error::Error for OptionError {}

impl MountOptions {
    /// Applies one comma-separated option list (as after `-o`) on top of `self`; later options
    /// win over earlier ones (`ro,rw` is read-write), as mount(8) does.
    pub fn apply(&mut self, list: &str) -> Result<(), OptionError> {
        for word in list.split(',') {
            self.apply_one(word)?;
        }
        Ok(())
    }

    /// Parses one comma-separated option list from defaults.
    pub fn parse(list: &str) -> Result<MountOptions, OptionError> {
        let mut opts = MountOptions::default();
        opts.apply(list)?;
        Ok(opts)
    }

    fn apply_one(&mut self, word: &str) -> Result<(), OptionError> {
        let refuse = |reason| {
            Err(OptionError {
                option: word.to_owned(),
                reason,
            })
        };
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        match (key, value) {
            ("", None) => return refuse("empty option (stray comma?)"),
            ("ro", None) => self.read_only = true,
            ("rw", None) => self.read_only = false,
            ("allow_other", None) => self.allow_other = true,
            ("fsname", Some(v)) if !v.is_empty() && !v.contains([',', ' ', '\t', '\n']) => {
                self.fsname = Some(v.to_owned())
            }
            ("fsname", _) => return refuse("needs a value without commas or spaces"),
            ("threads", Some(v)) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_THREADS).contains(&n) => self.threads = n,
                _ => return refuse("needs a number from 1 to 64"),
            },
            ("readahead", Some(v)) => match v.parse::<u32>() {
                Ok(n) if n <= MAX_READAHEAD_KIB => self.readahead_kib = n,
                _ => return refuse("needs a number of KiB from 0 to 262144"),
            },
            ("dirty", Some(v)) => match v.parse::<u64>() {
                Ok(n) if DIRTY_KIB.contains(&n) => self.dirty_kib = n,
                _ => return refuse("needs a number of KiB from 16 to 4194304"),
            },
            ("default_permissions", None) => {
                return refuse("not supported: cowcrypt checks permissions itself");
            }
            ("allow_root" | "auto_unmount", None) => {
                return refuse("not supported (needs fusermount3; use allow_other)");
            }
            (k, None) => match PassFlag::parse(k) {
                Some(flag) => {
                    self.flags.retain(|f| !conflicts(*f, flag));
                    self.flags.push(flag);
                }
                None => return refuse("unknown option"),
            },
            (_, Some(_)) => return refuse("unknown option"),
        }
        Ok(())
    }
}

/// Whether `new` overrides `old` (same flag, or its opposite).
fn conflicts(old: PassFlag, new: PassFlag) -> bool {
    use PassFlag::*;
    let pair = |f| match f {
        Dev | NoDev => 0,
        Suid | NoSuid => 1,
        Exec | NoExec => 2,
        Atime | NoAtime => 3,
        Sync | Async => 4,
        DirSync => 5,
    };
    pair(old) == pair(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_options_parse_and_later_wins() {
        let o = MountOptions::parse("ro,allow_other,nosuid,noatime,fsname=img").unwrap();
        assert!(o.read_only && o.allow_other);
        assert_eq!(o.flags, vec![PassFlag::NoSuid, PassFlag::NoAtime]);
        assert_eq!(o.fsname.as_deref(), Some("img"));
        let o = MountOptions::parse("ro,rw,suid,nosuid,threads=3,readahead=1024,dirty=64").unwrap();
        assert_eq!(o.readahead_kib, 1024);
        assert_eq!(o.dirty_kib, 64);
        assert_eq!(MountOptions::default().dirty_kib, 64 << 10);
        assert_eq!(crate::open_options(&o).max_dirty_bytes, 64 << 10);
        assert!(!o.read_only);
        assert_eq!(o.flags, vec![PassFlag::NoSuid]);
        assert_eq!(o.threads, 3);
    }

    #[test]
    fn unknown_and_refused_options_name_themselves() {
        for (list, needle) in [
            ("ro,bogus", "'bogus': unknown option"),
            ("default_permissions", "checks permissions itself"),
            ("ro,,rw", "empty option"),
            ("threads=0", "1 to 64"),
            ("threads=x", "1 to 64"),
            ("readahead=262145", "0 to 262144"),
            ("readahead=-1", "0 to 262144"),
            ("dirty=15", "16 to 4194304"),
            ("dirty=4194305", "16 to 4194304"),
            ("fsname=", "needs a value"),
            ("ro=1", "'ro=1': unknown option"),
            ("auto_unmount", "not supported"),
        ] {
            let e = MountOptions::parse(list).unwrap_err().to_string();
            assert!(e.contains(needle), "{list}: {e}");
        }
    }
}
