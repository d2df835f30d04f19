//! The FUSE adapter: mounts a [`cowfs::Filesystem`] with the kernel's FUSE driver.
//!
//! It owns the life of a mount and nothing of the filesystem: requests are translated to cowfs
//! calls in `glue` (the only module that knows fuser), the caller's identity is built in
//! `caller`, and the `-o` vocabulary lives in `options`. A mount ends one way whatever asks
//! for it (umount, `fusermount3 -u`, [`Unmounter::unmount`] from a signal handler): the FUSE
//! session stops, then cowfs is unmounted, which commits.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = fusemount::MountOptions::default();
//! let fs = cowfs::Filesystem::open_image("disk.img".as_ref(), &fusemount::open_options(&opts))?;
//! let mount = fusemount::mount(fs, "/mnt".as_ref(), "disk.img", &opts)?;
//! let unmounter = mount.unmounter(); // give it to whatever should be able to stop the mount
//! mount.serve()?;                    // until unmounted; the last commit's error comes back here
//! # drop(unmounter); Ok(()) }
//! ```

mod caller;
mod glue;
mod options;
mod readahead;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

pub use options::{MAX_THREADS, MountOptions, OptionError, PassFlag};

/// How to open a filesystem that is to be mounted: what `opts` asks (read-only) plus what the
/// kernel's protocol needs (cowfs counting the kernel's lookups, so that an unlinked inode the
/// kernel still knows lives until it is forgotten).
pub fn open_options(opts: &MountOptions) -> cowfs::OpenOptions {
    cowfs::OpenOptions {
        read_only: opts.read_only,
        lookup_counts: true,
        max_dirty_bytes: opts.dirty_kib << 10,
        ..Default::default()
    }
}

/// What can go wrong with a mount.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("mount on {}: {source}", dir.display())]
    Mount {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("serving FUSE requests: {0}")]
    Session(std::io::Error),
    #[error("sync before unmount: {0}")]
    Sync(cowfs::Error),
    #[error("unmount {}: {source}", dir.display())]
    Unmount { dir: PathBuf, source: nix::Error },
    #[error("final commit: {0}")]
    Commit(cowfs::Error),
}

/// A live mount whose requests are not served yet: hand out [`Mount::unmounter`]s, then call
/// [`Mount::serve`].
pub struct Mount {
    session: glue::Session,
    fs: Arc<cowfs::Filesystem>,
    dir: PathBuf,
}

/// Mounts `fs` (opened with [`open_options`]) on `dir` (as root, with mount(2)). `source` is
/// what /proc/mounts shows as the device unless the options name one. When this returns the kernel has accepted the mount:
/// calls on `dir` wait for [`Mount::serve`].
pub fn mount(
    fs: cowfs::Filesystem,
    dir: &Path,
    source: &str,
    opts: &MountOptions,
) -> Result<Mount, Error> {
    let fs = Arc::new(fs);
    let session = glue::Session::mount(Arc::clone(&fs), dir, source, opts).map_err(|source| {
        Error::Mount {
            dir: dir.to_path_buf(),
            source,
        }
    })?;
    tracing::info!(dir = %dir.display(), source, "mounted");
    Ok(Mount {
        session,
        fs,
        dir: dir.to_path_buf(),
    })
}

impl Mount {
    /// A handle that can end this mount from any thread (a signal handler's, typically).
    pub fn unmounter(&self) -> Unmounter {
        Unmounter {
            fs: Arc::downgrade(&self.fs),
            dir: self.dir.clone(),
        }
    }

    /// Serves requests until the mount goes away, then unmounts cowfs (its final commit).
    pub fn serve(self) -> Result<(), Error> {
        let Mount { session, fs, dir } = self;
        let served = session.run().map_err(Error::Session);
        tracing::info!(dir = %dir.display(), "FUSE session ended");
        let committed = match unwrap_shared(fs) {
            Ok(fs) => fs.unmount().map_err(Error::Commit),
            // An unmounter still syncing (a signal that came late) holds a reference; sync here
            // so the result is known, and the last reference's drop unmounts.
            Err(fs) => fs.sync().map_err(Error::Commit),
        };
        if committed.is_ok() {
            tracing::info!("filesystem committed and closed");
        }
        served.and(committed)
    }
}

/// Takes the filesystem back from the request handlers. They are gone when the session ends;
/// an [`Unmounter`] may hold a reference for the length of one sync, so wait for that a while.
fn unwrap_shared(
    mut fs: Arc<cowfs::Filesystem>,
) -> Result<cowfs::Filesystem, Arc<cowfs::Filesystem>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Arc::try_unwrap(fs) {
            Ok(fs) => return Ok(fs),
            Err(shared) if Instant::now() >= deadline => return Err(shared),
            Err(shared) => fs = shared,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Ends a mount from outside the FUSE session: commits, then unmounts the directory.
#[derive(Clone, Debug)]
pub struct Unmounter {
    fs: Weak<cowfs::Filesystem>,
    dir: PathBuf,
}

impl Unmounter {
    /// Syncs the filesystem, then unmounts its directory. A mount still in use (a shell's
    /// working directory inside it) is detached instead: it vanishes from the namespace now and
    /// the session ends when its last user leaves. Unmounting a mount that is already gone
    /// succeeds.
    pub fn unmount(&self) -> Result<(), Error> {
        if let Some(fs) = self.fs.upgrade() {
            let synced = fs.sync();
            drop(fs);
            synced.map_err(Error::Sync)?;
        }
        use nix::mount::{MntFlags, umount2};
        match umount2(&self.dir, MntFlags::empty()) {
            Ok(()) => Ok(()),
            // Not a mount point (any more): someone else unmounted it first.
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
            Err(nix::Error::EBUSY) => {
                tracing::warn!(dir = %self.dir.display(), "mount busy: detaching it");
                umount2(&self.dir, MntFlags::MNT_DETACH).map_err(|source| Error::Unmount {
                    dir: self.dir.clone(),
                    source,
                })
            }
            Err(source) => Err(Error::Unmount {
                dir: self.dir.clone(),
                source,
            }),
        }
    }

    /// The mounted directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
