//! The commands that work on an unmounted image: `mkfs`, `fsck`, `inspect` and `resize`. Each takes the
//! image's exclusive lock first, so none of them runs under a live mount or beside another.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::image::{self, Kind};
use crate::progress::Progress;
use crate::size::human;

/// Makes a filesystem on `image`: a new sparse file of `size` bytes, an existing file (its
/// length unless `size` says otherwise), or a whole block device.
pub fn mkfs(image: &Path, size: Option<u64>, label: Option<String>) -> Result<()> {
    let kind = image::kind(image)?;
    let size = match (kind, size) {
        (Kind::BlockDevice { .. }, Some(_)) => {
            bail!(
                "{}: --size cannot be used with a block device (the whole device is used)",
                image.display()
            )
        }
        (Kind::BlockDevice { len }, None) => len,
        (Kind::Missing, None) => bail!(
            "{} does not exist: give --size to create it",
            image.display()
        ),
        (Kind::File { len: 0 }, None) => {
            bail!("{} is empty: give --size", image.display())
        }
        (Kind::File { len }, None) => len,
        (_, Some(size)) => size,
    };
    // An existing image may be mounted: the lock says so before anything is overwritten.
    let _lock = match kind {
        Kind::Missing => None,
        _ => Some(image::lock(image)?),
    };
    let mut opts = cowfs::MkfsOptions {
        label: label.unwrap_or_default(),
        ..Default::default()
    };
    getrandom::fill(&mut opts.uuid).context("cannot get random bytes for the UUID")?;
    let progress = Progress::start(&format!("making a {} filesystem", human(size)));
    cowfs::Filesystem::mkfs_image(image, size, &opts)
        .with_context(|| format!("mkfs {}", image.display()))?;
    progress.finish();
    println!(
        "{}: cowcrypt filesystem, {}, label '{}', uuid {}",
        image.display(),
        human(size),
        opts.label,
        uuid_text(&opts.uuid)
    );
    Ok(())
}

fn uuid_text(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Opens `image` read-only under its lock.
fn open_read_only(image: &Path) -> Result<(cowfs::Filesystem, image::Lock)> {
    image::require(image)?;
    let lock = image::lock(image)?;
    let opts = cowfs::OpenOptions {
        read_only: true,
        ..Default::default()
    };
    let fs = cowfs::Filesystem::open_image(image, &opts)
        .with_context(|| format!("cannot open {}", image.display()))?;
    Ok((fs, lock))
}

/// Checks `image`; every fault found is listed, and any fault makes the command fail.
pub fn fsck(image: &Path) -> Result<()> {
    let (fs, _lock) = open_read_only(image)?;
    let progress = Progress::bytes(&format!("checking {}", image.display()), 0);
    let report = fs
        .check_with_progress(&mut |done, total| progress.set(done, total))
        .with_context(|| format!("checking {}", image.display()))?;
    progress.finish();
    print_out(&report.to_string())?;
    if !report.is_clean() {
        bail!(
            "{}: {} fault(s) found",
            image.display(),
            report.faults.len()
        );
    }
    println!("{}: clean", image.display());
    Ok(())
}

/// Prints what `image` holds: for people, or as JSON.
pub fn inspect(image: &Path, json: bool) -> Result<()> {
    let progress = Progress::start(&format!("reading {}", image.display()));
    let (fs, _lock) = open_read_only(image)?;
    let inspection = fs
        .inspect()
        .with_context(|| format!("inspecting {}", image.display()))?;
    progress.finish();
    let text = if json {
        let mut t = serde_json::to_string_pretty(&inspection).context("cannot encode JSON")?;
        t.push('\n');
        t
    } else {
        inspection.to_string()
    };
    print_out(&text)
}

/// Writes a report to stdout. A reader that stops early (`| head`) is not an error.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

/// Grows or shrinks the filesystem on `image` to `size` bytes.
pub fn resize(image: &Path, size: u64) -> Result<()> {
    image::require(image)?;
    let _lock = image::lock(image)?;
    let progress = Progress::bytes(&format!("resizing {}", image.display()), 0);
    let r =
        cowfs::Filesystem::resize_image(image, size, &mut |done, total| progress.set(done, total))
            .with_context(|| format!("cannot resize {} to {}", image.display(), human(size)))?;
    progress.finish();
    println!(
        "{}: {} -> {} ({} chunks added, {} removed, {} moved, {} copied)",
        image.display(),
        human(r.old_size),
        human(r.new_size),
        r.chunks_added,
        r.chunks_removed,
        r.chunks_moved,
        human(r.bytes_moved)
    );
    Ok(())
}
