//! `cowcrypt balance TARGET [--usage PERCENT]`: on a mount through the control channel, on an
//! unmounted image directly. The work is the fs library's; this prints what it did.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cowfs::BalanceReport;
use cowfs::control::{Request, Response};

use crate::control;
use crate::image;
use crate::progress::Progress;
use crate::size::human;

pub fn run(target: &Path, usage: u8) -> Result<()> {
    let meta =
        std::fs::metadata(target).with_context(|| format!("cannot find {}", target.display()))?;
    let report = if meta.is_dir() {
        let progress = Progress::start(&format!("balancing {}", target.display()));
        let r = control::call(target, &Request::Balance { usage })?;
        progress.finish();
        match r {
            Response::Balance(r) => r,
            other => bail!("unexpected answer from the daemon: {other:?}"),
        }
    } else {
        offline(target, usage)?
    };
    println!(
        "{}: {} chunk(s) at or below {usage}% in use, {} emptied; {} extent(s), {} moved",
        target.display(),
        report.chunks_considered,
        report.chunks_emptied,
        report.extents_moved,
        human(report.bytes_moved)
    );
    Ok(())
}

/// Balances an image that is not mounted (its lock says so).
fn offline(image: &Path, usage: u8) -> Result<BalanceReport> {
    image::require(image)?;
    let _lock = image::lock(image)?;
    let fs = cowfs::Filesystem::open_image(image, &cowfs::OpenOptions::default())
        .with_context(|| format!("cannot open {}", image.display()))?;
    let progress = Progress::bytes(&format!("balancing {}", image.display()), 0);
    let report = fs
        .balance(usage, &mut |done, total| progress.set(done, total))
        .with_context(|| format!("balancing {}", image.display()))?;
    progress.finish();
    fs.unmount()
        .with_context(|| format!("closing {}", image.display()))?;
    Ok(report)
}
