//! Helpers for tests that mount a real cowcrypt image: the skip-or-fail decision, and
//! [`CowcryptMount`], which mkfs'es, mounts (daemon in the foreground as a child process),
//! remounts, unmounts and fscks through the `cowcrypt` binary, and never leaves a mount behind
//! (unmounting on drop, aborting the FUSE connection when a plain unmount is refused).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Whether a test that needs root and `/dev/fuse` can run here. Returns false after printing
/// why when it cannot; panics instead when `CI=true`, where a skip would hide a broken setup.
pub fn mount_tests_can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    let why = match (root, fuse) {
        (true, true) => return true,
        (false, _) => "not running as root",
        (true, false) => "/dev/fuse is missing",
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Whether `bin` has the `mount`, `mkfs` and `fsck` subcommands (the binary had none before the
/// FUSE adapter landed). Returns false after printing why; panics under `CI=true`.
pub fn binary_can_mount(bin: &Path, test: &str) -> bool {
    let has = |sub: &str| {
        Command::new(bin)
            .args([sub, "--help"])
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has("mount") && has("mkfs") && has("fsck") {
        return true;
    }
    let why = format!("{} has no mount/mkfs/fsck subcommands", bin.display());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// One mount test's scratch directory (under `$COWCRYPT_SCRATCH`, default `/var/tmp`, never a
/// tmpfs), with a fresh image in it; removed on drop.
pub struct Scratch {
    tmp: tempfile::TempDir,
    /// The image file.
    pub image: PathBuf,
    /// Where it mounts.
    pub dir: PathBuf,
    /// The daemon's log.
    pub log: PathBuf,
}

impl Scratch {
    /// The checks of [`mount_tests_can_run`] and [`binary_can_mount`] (`None`: skip), then
    /// a scratch directory with an image of `size` (`512M`, `1G`...) made by `bin mkfs`.
    pub fn new(bin: &Path, test: &str, size: &str) -> Option<Scratch> {
        if !mount_tests_can_run(test) || !binary_can_mount(bin, test) {
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix(&format!("cowcrypt-{test}."))
            .tempdir_in(std::env::var("COWCRYPT_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("scratch dir");
        let image = tmp.path().join("test.img");
        CowcryptMount::mkfs(bin, &image, size).expect("mkfs");
        Some(Scratch {
            dir: tmp.path().join("mnt"),
            log: tmp.path().join("daemon.log"),
            image,
            tmp,
        })
    }

    /// The scratch directory itself.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Mounts the image on [`Scratch::dir`].
    pub fn mount(&self, bin: &Path) -> CowcryptMount {
        CowcryptMount::mount(bin, &self.image, &self.dir, &self.log).expect("mount")
    }
}

/// True when `dir` is a mount point (its path appears in /proc/self/mountinfo).
pub fn is_mount_point(dir: &Path) -> io::Result<bool> {
    let dir = fs::canonicalize(dir)?;
    let want = dir.to_string_lossy().replace(' ', "\\040");
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want)))
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

/// One cowcrypt image mounted on a directory by a `cowcrypt mount -f` child process.
#[derive(Debug)]
pub struct CowcryptMount {
    bin: PathBuf,
    image: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    /// `-o` options of every mount of this image.
    options: Option<String>,
    daemon: Option<Child>,
}

impl CowcryptMount {
    /// `cowcrypt mkfs IMAGE --size SIZE`.
    pub fn mkfs(bin: &Path, image: &Path, size: &str) -> io::Result<()> {
        run(Command::new(bin)
            .arg("mkfs")
            .arg(image)
            .arg("--size")
            .arg(size))
        .map(|_| ())
    }

    /// `cowcrypt fsck IMAGE`; Ok with its output when it exits 0 (no faults).
    pub fn fsck(bin: &Path, image: &Path) -> io::Result<Output> {
        run(Command::new(bin).arg("fsck").arg(image))
    }

    /// Mounts `image` on `dir` (created if missing); the daemon's output goes to `log`.
    pub fn mount(bin: &Path, image: &Path, dir: &Path, log: &Path) -> io::Result<CowcryptMount> {
        Self::mount_with(bin, image, dir, log, None)
    }

    /// [`CowcryptMount::mount`] with `-o options`, used again by every remount.
    pub fn mount_with(
        bin: &Path,
        image: &Path,
        dir: &Path,
        log: &Path,
        options: Option<&str>,
    ) -> io::Result<CowcryptMount> {
        fs::create_dir_all(dir)?;
        let mut m = CowcryptMount {
            bin: bin.to_path_buf(),
            image: image.to_path_buf(),
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
            options: options.map(str::to_owned),
            daemon: None,
        };
        m.start()?;
        Ok(m)
    }

    /// The mount point.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's process id, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// The daemon's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn start(&mut self) -> io::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("mount").arg("-f");
        if let Some(o) = &self.options {
            cmd.arg("-o").arg(o);
        }
        let child = cmd
            .arg(&self.image)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mount_point(&self.dir)? {
                return Ok(());
            }
            if let Some(status) = self
                .daemon
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.daemon = None;
                return Err(io::Error::other(format!(
                    "cowcrypt mount exited with {status} before mounting: {}",
                    self.log_text()
                )));
            }
            if Instant::now() > deadline {
                self.stop_hard();
                return Err(io::Error::other(format!(
                    "cowcrypt mount did not appear on {} within 30 s: {}",
                    self.dir.display(),
                    self.log_text()
                )));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Unmounts and waits for the daemon to exit (it commits on the way out); an error if the
    /// unmount is refused or the daemon exits non-zero or hangs.
    pub fn unmount(&mut self) -> io::Result<()> {
        if is_mount_point(&self.dir)? {
            let r = run(Command::new("fusermount3").arg("-u").arg(&self.dir))
                .or_else(|_| run(Command::new("umount").arg(&self.dir)));
            if let Err(e) = r {
                self.stop_hard();
                return Err(e);
            }
        }
        let Some(mut child) = self.daemon.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                return Err(io::Error::other(format!(
                    "cowcrypt daemon exited with {status} after unmount: {}",
                    self.log_text()
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::other(
                    "cowcrypt daemon still running 60 s after unmount",
                ));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Unmount then mount the same image on the same directory.
    pub fn remount(&mut self) -> io::Result<()> {
        self.unmount()?;
        self.start()
    }

    /// SIGKILL the daemon (nothing more reaches the image), clear the dead mount, then mount
    /// the image again: a crash at an arbitrary point, as far as the image can tell.
    pub fn crash_and_remount(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.daemon.take() {
            child.kill()?;
            child.wait()?;
        }
        if is_mount_point(&self.dir)? {
            run(Command::new("umount").arg(&self.dir))
                .or_else(|_| run(Command::new("umount").arg("-l").arg(&self.dir)))?;
        }
        self.start()
    }

    /// Last resort: abort the FUSE connection, detach lazily, kill the daemon.
    fn stop_hard(&mut self) {
        if is_mount_point(&self.dir).unwrap_or(false) {
            if let Ok(out) = Command::new("mountpoint").arg("-d").arg(&self.dir).output() {
                let devno = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if let Some((_, minor)) = devno.split_once(':') {
                    let _ = fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
                }
            }
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for CowcryptMount {
    fn drop(&mut self) {
        if (self.daemon.is_some() || is_mount_point(&self.dir).unwrap_or(false))
            && let Err(e) = self.unmount()
        {
            eprintln!("cowcrypt mount cleanup: {e}");
            self.stop_hard();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_knows_root_and_not_a_fresh_dir() {
        assert!(is_mount_point(Path::new("/")).unwrap());
        let d = tempfile::tempdir().unwrap();
        assert!(!is_mount_point(d.path()).unwrap());
    }
}
