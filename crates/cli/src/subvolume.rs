//! `cowcrypt subvolume ...`: subvolume commands on a mounted filesystem, through the control
//! channel. Nothing is decided here: each command resolves its paths to (directory, name) or
//! an inode, sends requests, and prints the answers.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cowfs::SubvolumeEntry;
use cowfs::control::{Request, Response};

use crate::control;
use crate::progress::Progress;
use crate::size::human;

/// How often `delete --wait` asks how far the release is.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// Mode of a new subvolume's root directory, as btrfs gives it (umask not applied).
const NEW_SUBVOLUME_MODE: u32 = 0o755;

/// The directory that holds `path` (resolved, symlinks followed) and the last name of `path`.
fn split(path: &Path) -> Result<(PathBuf, Vec<u8>)> {
    let name = match path.file_name() {
        Some(n) if n != OsStr::new(".") && n != OsStr::new("..") => n,
        _ => bail!("{} does not end in a name", path.display()),
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent
        .canonicalize()
        .with_context(|| format!("cannot find {}", parent.display()))?;
    Ok((dir, name.as_bytes().to_vec()))
}

/// The errno a failed request came back with, if that is what failed.
fn errno(e: &anyhow::Error) -> Option<i32> {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(|e| e.raw_os_error())
}

/// Says in the domain's words what the errnos that mean something special here mean.
fn explain(e: anyhow::Error, path: &Path) -> anyhow::Error {
    match errno(&e) {
        Some(libc::EINVAL) => anyhow::anyhow!("{} is not a subvolume", path.display()),
        Some(libc::EBUSY) => anyhow::anyhow!("files in {} are open", path.display()),
        Some(libc::ENOTEMPTY) => anyhow::anyhow!(
            "{} holds other subvolumes: delete them first",
            path.display()
        ),
        _ => e,
    }
}

fn subvolume(r: Response) -> Result<SubvolumeEntry> {
    match r {
        Response::Subvolume(s) => Ok(s),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

fn done(r: Response) -> Result<()> {
    match r {
        Response::Done => Ok(()),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

/// `subvolume create PATH`.
pub fn create(path: &Path) -> Result<()> {
    let (dir, name) = split(path)?;
    let req = Request::SubvolumeCreate {
        name,
        mode: NEW_SUBVOLUME_MODE,
    };
    let s = control::call(&dir, &req)
        .and_then(subvolume)
        .with_context(|| format!("cannot create subvolume {}", path.display()))?;
    println!("Created subvolume {} (id {})", path.display(), s.id);
    Ok(())
}

/// `subvolume snapshot [-r] SOURCE DEST`: DEST names the snapshot, or is an existing directory
/// to put it in under SOURCE's name (as btrfs).
pub fn snapshot(source: &Path, dest: &Path, read_only: bool) -> Result<()> {
    let what = || format!("cannot snapshot {} to {}", source.display(), dest.display());
    let src = std::fs::metadata(source)
        .with_context(|| format!("cannot find {}", source.display()))
        .with_context(what)?;
    let (dir, name) = if dest.is_dir() {
        let src_name = source
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.as_bytes().to_vec()));
        match src_name {
            Some(n) => (dest.canonicalize().with_context(what)?, n),
            None => bail!("{}: {} has no name to use", what(), source.display()),
        }
    } else {
        split(dest).with_context(what)?
    };
    let dir_dev = std::fs::metadata(&dir).with_context(what)?.dev();
    if dir_dev != src.dev() {
        bail!("{}: not on the same mount", what());
    }
    let req = Request::SubvolumeSnapshot {
        source: src.ino(),
        name: name.clone(),
        read_only,
    };
    let s = control::call(&dir, &req)
        .and_then(subvolume)
        .map_err(|e| match errno(&e) {
            Some(libc::EINVAL) => explain(e, source),
            _ => e,
        })
        .with_context(what)?;
    let at = dir.join(OsStr::from_bytes(&name));
    let ro = if read_only { "read-only " } else { "" };
    println!(
        "Created {ro}snapshot {} of {} (id {})",
        at.display(),
        source.display(),
        s.id
    );
    Ok(())
}

/// `subvolume delete [--wait] PATH`: returns once the entry is gone; space is freed in the
/// background, or before returning with `wait`.
pub fn delete(path: &Path, wait: bool) -> Result<()> {
    let (dir, name) = split(path)?;
    control::call(&dir, &Request::SubvolumeDelete { name })
        .and_then(done)
        .map_err(|e| explain(e, path))
        .with_context(|| format!("cannot delete subvolume {}", path.display()))?;
    if !wait {
        println!(
            "Deleted subvolume {} (its space is freed in the background; see `cowcrypt subvolume list`)",
            path.display()
        );
        return Ok(());
    }
    wait_for_deletions(&dir)
        .with_context(|| format!("deleted {}, but cannot follow its release", path.display()))?;
    println!("Deleted subvolume {} and freed its space", path.display());
    Ok(())
}

/// Polls until no deleted subvolume of the mount at `mount` holds space any more, with a bar of
/// the tree blocks released (on a terminal).
fn wait_for_deletions(mount: &Path) -> Result<()> {
    let mut bar: Option<(Progress, u64)> = None;
    loop {
        let (_, deleting, left) = list_all(mount)?;
        if deleting == 0 {
            return Ok(());
        }
        let (p, total) = bar.get_or_insert_with(|| {
            (
                Progress::bytes("freeing deleted subvolumes", left.max(1)),
                left.max(1),
            )
        });
        *total = (*total).max(left);
        p.set(*total - left, *total);
        std::thread::sleep(POLL);
    }
}

/// `subvolume set-read-only [--off] PATH`.
pub fn set_read_only(path: &Path, read_only: bool) -> Result<()> {
    control::call(path, &Request::SubvolumeSetReadOnly { read_only })
        .and_then(done)
        .map_err(|e| explain(e, path))
        .with_context(|| format!("cannot change the read-only flag of {}", path.display()))?;
    let now = if read_only { "read-only" } else { "writable" };
    println!("{} is {now}", path.display());
    Ok(())
}

/// `subvolume show PATH [--json]`: the subvolume PATH is in.
pub fn show(path: &Path, json: bool) -> Result<()> {
    let s = control::call(path, &Request::SubvolumeShow)
        .and_then(subvolume)
        .with_context(|| format!("cannot show the subvolume of {}", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("Path:         {}", shown(&s.path));
    println!("Id:           {}", s.id);
    println!("Inode:        {:#x}", s.ino);
    match s.parent {
        Some(p) => println!("Parent dir:   {p:#x}"),
        None => println!("Parent dir:   - (the top subvolume)"),
    }
    println!("Read-only:    {}", if s.read_only { "yes" } else { "no" });
    match s.snapshot_of {
        Some(o) => println!("Snapshot of:  subvolume {o}"),
        None => println!("Snapshot of:  -"),
    }
    println!("Generation:   {}", s.generation);
    println!(
        "Created:      {}.{:09} (seconds since 1970)",
        s.otime.sec, s.otime.nsec
    );
    Ok(())
}

/// Every subvolume, fetching page after page, and the pending deletions.
fn list_all(mount: &Path) -> Result<(Vec<SubvolumeEntry>, usize, u64)> {
    let mut all: Vec<SubvolumeEntry> = Vec::new();
    loop {
        let after = all.last().map(|s| s.id);
        match control::call(mount, &Request::SubvolumeList { after })? {
            Response::Subvolumes {
                subvolumes,
                deleting,
                deleting_bytes,
                more,
            } => {
                let progressed = !subvolumes.is_empty();
                all.extend(subvolumes);
                if !more {
                    return Ok((all, deleting, deleting_bytes));
                }
                if !progressed {
                    bail!("the daemon sent an empty page of subvolumes");
                }
            }
            other => bail!("unexpected answer from the daemon: {other:?}"),
        }
    }
}

/// `subvolume list MOUNT [--json]`.
pub fn list(mount: &Path, json: bool) -> Result<()> {
    let (all, deleting, deleting_bytes) = list_all(mount)
        .with_context(|| format!("cannot list subvolumes of {}", mount.display()))?;
    if json {
        let v = serde_json::json!({
            "subvolumes": all,
            "deleting": deleting,
            "deleting_bytes": deleting_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:>6} {:>3} {:>8} {:>10}  PATH",
        "ID", "RO", "ORIGIN", "GEN"
    );
    for s in &all {
        let origin = s.snapshot_of.map_or("-".to_owned(), |p| p.to_string());
        let ro = if s.read_only { "yes" } else { "no" };
        println!(
            "{:>6} {ro:>3} {origin:>8} {:>10}  {}",
            s.id,
            s.generation,
            shown(&s.path)
        );
    }
    if deleting > 0 {
        println!(
            "Deleting: {deleting} subvolume(s) still freeing space (about {} of tree blocks left)",
            human(deleting_bytes)
        );
    }
    Ok(())
}
