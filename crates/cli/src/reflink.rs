//! `cowcrypt reflink SOURCE DEST [--range SRC_OFFSET LENGTH DEST_OFFSET]`: copy_file_range on a
//! mount, which cowcrypt answers by sharing extents (the aligned middle of a range; its edges
//! are copied). FUSE never passes FICLONE on, so this is the reflink a mount offers.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Shares `len` bytes (everything from `src_off` to the source's end when `None`) of `source`
/// at `src_off` into `dest` at `dest_off`. Without a range, DEST is created or truncated.
pub fn run(source: &Path, dest: &Path, range: Option<(u64, u64, u64)>) -> Result<()> {
    let src = File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let src_len = src
        .metadata()
        .with_context(|| format!("cannot stat {}", source.display()))?
        .len();
    let (mut off_in, len, mut off_out) = match range {
        Some((a, n, b)) => (a, n, b),
        None => (0, src_len, 0),
    };
    let dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(range.is_none())
        .open(dest)
        .with_context(|| format!("cannot open {}", dest.display()))?;
    let mut left = len;
    while left > 0 {
        let mut a = i64::try_from(off_in).context("source offset too large")?;
        let mut b = i64::try_from(off_out).context("destination offset too large")?;
        let step = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both fds are open for the call; the offset pointers are to live locals.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut a, dst.as_raw_fd(), &mut b, step, 0)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            bail!(
                "cannot reflink {} into {}: {e}",
                source.display(),
                dest.display()
            );
        }
        if n == 0 {
            break; // the source ended
        }
        let n = n as u64;
        off_in += n;
        off_out += n;
        left -= n;
    }
    println!(
        "{} -> {}: {} bytes",
        source.display(),
        dest.display(),
        len - left
    );
    Ok(())
}
