//! The image a command works on: what it is (file or block device), how big, and the exclusive
//! lock that keeps two cowcrypt processes (a mount and an fsck, two mounts) off it at once.
//!
//! The lock is flock(2) on a descriptor of our own, held for as long as the returned [`Lock`]
//! lives; the kernel drops it when the process dies, so a crashed daemon never leaves a stale
//! lock behind.

use std::fs::{File, TryLockError};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Held exclusive lock on an image.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// How long a busy image is waited for: a daemon whose mount was just unmounted still holds
/// the lock while it makes its last commit, and `umount DIR && cowcrypt fsck IMAGE` must work.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Takes the image's exclusive lock, or says who may hold it.
pub fn lock(image: &Path) -> Result<Lock> {
    let file = File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock { _file: file }),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(TryLockError::WouldBlock) => bail!(
                "{} is in use by another cowcrypt process (mounted, or being checked)",
                image.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", image.display()));
            }
        }
    }
}

/// What an image path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    File { len: u64 },
    BlockDevice { len: u64 },
}

/// Looks at `image` without changing it.
pub fn kind(image: &Path) -> Result<Kind> {
    let meta = match std::fs::metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Kind::Missing),
        Err(e) => return Err(e).with_context(|| format!("cannot stat {}", image.display())),
    };
    let ft = meta.file_type();
    if ft.is_file() {
        Ok(Kind::File { len: meta.len() })
    } else if ft.is_block_device() {
        // A block device's stat size is 0; its end is where a seek to the end lands.
        let mut f =
            File::open(image).with_context(|| format!("cannot open {}", image.display()))?;
        let len = f
            .seek(SeekFrom::End(0))
            .with_context(|| format!("cannot read the size of {}", image.display()))?;
        Ok(Kind::BlockDevice { len })
    } else {
        bail!(
            "{} is neither a regular file nor a block device",
            image.display()
        )
    }
}

/// Fails unless `image` exists as a file or block device.
pub fn require(image: &Path) -> Result<()> {
    match kind(image)? {
        Kind::Missing => bail!("{}: no such file", image.display()),
        _ => Ok(()),
    }
}
