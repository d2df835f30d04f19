//! `cowcrypt scrub MOUNT|IMAGE [--json]`: every checksum verified, no key needed; on a mount
//! through the control channel, on an unmounted image directly. Exit status 1 on any fault.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cowfs::ScrubReport;
use cowfs::control::{Request, Response};

use crate::control;
use crate::image;
use crate::progress::Progress;
use crate::size::human;

pub fn run(target: &Path, json: bool) -> Result<()> {
    let meta =
        std::fs::metadata(target).with_context(|| format!("cannot find {}", target.display()))?;
    let r = if meta.is_dir() {
        let progress = Progress::start(&format!("scrubbing {}", target.display()));
        let r = control::call(target, &Request::Scrub)?;
        progress.finish();
        match r {
            Response::Scrub(r) => r,
            other => bail!("unexpected answer from the daemon: {other:?}"),
        }
    } else {
        offline(target)?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print(&r);
    }
    if !r.is_clean() {
        bail!(
            "{}: {} bad data sector(s), {} data unit(s) failing authentication, {} metadata \
             fault(s)",
            target.display(),
            r.bad_sectors,
            r.bad_macs,
            r.metadata_errors.len()
        );
    }
    Ok(())
}

fn print(r: &ScrubReport) {
    for e in &r.metadata_errors {
        println!("metadata: {e}");
    }
    for b in &r.bad {
        let what = if b.reason == "mac" {
            "tampered data unit (MAC mismatch)"
        } else {
            "bad sector"
        };
        if b.files.is_empty() {
            println!(
                "{what}: extent {} + {} ({} bytes), in no file",
                b.extent, b.offset_in_extent, b.len
            );
        }
        for f in &b.files {
            let path = if f.path.is_empty() {
                format!("(unlinked inode {:#x})", f.ino)
            } else {
                format!("/{}", f.path)
            };
            println!(
                "{what}: {path} offset {} ({} bytes; extent {} + {})",
                f.offset, b.len, b.extent, b.offset_in_extent
            );
        }
    }
    let listed = (r.bad_sectors + r.bad_macs) as usize;
    if listed > r.bad.len() {
        println!("... and {} more", listed - r.bad.len());
    }
    if r.mac_extents + r.mac_extents_without_key > 0 {
        println!(
            "authenticated extents: {} verified with their key, {} not verified (key not loaded)",
            r.mac_extents, r.mac_extents_without_key
        );
    }
    println!(
        "scrubbed {} tree nodes and {} data extents ({}): {}",
        r.metadata_nodes,
        r.data_extents,
        human(r.data_bytes),
        if r.is_clean() { "no errors" } else { "ERRORS" }
    );
}

/// Scrubs an image that is not mounted, read-only.
fn offline(image: &Path) -> Result<ScrubReport> {
    image::require(image)?;
    let _lock = image::lock(image)?;
    let opts = cowfs::OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let fs = cowfs::Filesystem::open_image(image, &opts)
        .with_context(|| format!("cannot open {}", image.display()))?;
    let progress = Progress::bytes(&format!("scrubbing {}", image.display()), 0);
    let r = fs
        .scrub(&mut |done, total| progress.set(done, total))
        .with_context(|| format!("scrubbing {}", image.display()))?;
    progress.finish();
    Ok(r)
}
