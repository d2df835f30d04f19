//! `cowcrypt reflink SOURCE DEST [--range SRC_OFFSET LENGTH DEST_OFFSET]`: shares extents on a
//! mount (the aligned middle of a range; its unaligned edges are copied). It goes through the
//! control channel rather than copy_file_range(2) because the kernel quietly copies when a
//! FUSE filesystem refuses: here a refusal (EXDEV across keys) is reported as one.

use std::fs::OpenOptions;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cowfs::control::{Request, Response};

pub fn run(source: &Path, dest: &Path, range: Option<(u64, u64, u64)>) -> Result<()> {
    let src =
        std::fs::metadata(source).with_context(|| format!("cannot find {}", source.display()))?;
    if !src.is_file() {
        bail!("{} is not a regular file", source.display());
    }
    // DEST is made if missing (as cp would), so the request has a file to go to.
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dest)
        .with_context(|| format!("cannot open {}", dest.display()))?;
    let dst = std::fs::metadata(dest).with_context(|| format!("cannot find {}", dest.display()))?;
    if src.dev() != dst.dev() {
        bail!(
            "{} and {} are not on the same cowcrypt mount",
            source.display(),
            dest.display()
        );
    }
    let (src_offset, len, dest_offset) = match range {
        Some((a, n, b)) => (a, Some(n), b),
        None => (0, None, 0),
    };
    let req = Request::Reflink {
        source: src.ino(),
        src_offset,
        len,
        dest_offset,
    };
    let r = control::call(dest, &req).with_context(|| {
        format!(
            "cannot reflink {} into {}",
            source.display(),
            dest.display()
        )
    })?;
    match r {
        Response::Reflinked { bytes } => {
            println!("{} -> {}: {bytes} bytes", source.display(), dest.display())
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(())
}

use crate::control;
