//! `cowcrypt mount`: the life of a mount daemon.
//!
//! In the background (the default) the command re-runs itself as a daemon child in a new session
//! and waits on a pipe (the child's stdout) until the child reports the mount live or fails; the
//! parent then exits 0 or prints the child's error. Re-running the binary instead of fork(2)ing
//! keeps the daemon free of whatever threads the parent had. The daemon logs to a file (`-o
//! log=PATH`, by default beside the image) since it has no terminal.
//!
//! Either way the mounting process blocks SIGINT, SIGTERM and SIGHUP before any thread exists and
//! waits for them on a thread of its own: a signal syncs and unmounts the directory, which ends
//! the FUSE session like any other unmount, and cowfs's unmount then makes the last commit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{SigSet, Signal};

use crate::image;

/// What the command line asked for.
pub struct Request {
    pub image: PathBuf,
    pub dir: PathBuf,
    pub options: Vec<String>,
    pub foreground: bool,
    pub daemon_child: bool,
}

/// Options sorted into the adapter's and the command's own.
#[derive(Debug)]
struct Parsed {
    fuse: fusemount::MountOptions,
    log: Option<PathBuf>,
}

fn parse_options(lists: &[String]) -> Result<Parsed> {
    let mut fuse = fusemount::MountOptions::default();
    let mut log = None;
    for list in lists {
        for word in list.split(',') {
            match word.strip_prefix("log=") {
                Some("") => bail!("mount option 'log=': needs a path"),
                Some(path) => log = Some(PathBuf::from(path)),
                None => fuse.apply(word)?,
            }
        }
    }
    Ok(Parsed { fuse, log })
}

/// Line the daemon child writes on its stdout once the mount is live.
const READY: &str = "ready";
/// Prefix of the line the daemon child writes when it fails before that.
const FAILED: &str = "error: ";

pub fn run(req: Request) -> Result<()> {
    let parsed = parse_options(&req.options)?;
    if req.daemon_child {
        return run_daemon_child(&req, &parsed);
    }
    check_paths(&req.image, &req.dir)?;
    if req.foreground {
        let log = match &parsed.log {
            Some(path) => Some(open_log(path)?),
            None => None,
        };
        init_logging(log);
        abort_on_panic();
        let signals = block_signals()?;
        let mount = setup(&req.image, &req.dir, &parsed.fuse)?;
        return serve(mount, signals);
    }
    spawn_daemon(&req, &parsed)
}

/// Refuses what is certainly wrong before anything is mounted or spawned.
fn check_paths(image: &Path, dir: &Path) -> Result<()> {
    image::require(image)?;
    let meta = std::fs::metadata(dir).with_context(|| format!("mount point {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("mount point {}: not a directory", dir.display());
    }
    Ok(())
}

/// The mounted state the daemon keeps until the end.
struct Live {
    mount: fusemount::Mount,
    _lock: image::Lock,
}

/// Locks the image, opens the filesystem and mounts it.
fn setup(image: &Path, dir: &Path, opts: &fusemount::MountOptions) -> Result<Live> {
    let lock = image::lock(image)?;
    let fs = cowfs::Filesystem::open_image(image, &fusemount::open_options(opts))
        .with_context(|| format!("cannot open {}", image.display()))?;
    let source = image.display().to_string();
    let mount = fusemount::mount(fs, dir, &source, opts)?;
    Ok(Live { mount, _lock: lock })
}

/// A panic anywhere in a mounted daemon (a worker, cowfs's commit thread) ends the process.
/// Otherwise the panicking worker is gone and the callers it would have served hang on the mount;
/// with the process gone the kernel fails them (ENOTCONN), and the image keeps its last commit,
/// which copy-on-write leaves intact.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("fatal: {info}");
        default(info);
        std::process::abort();
    }));
}

/// Blocks the stop signals in this thread and so in every thread started after it.
fn block_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("cannot block signals")?;
    Ok(set)
}

/// Serves until unmounted; a stop signal syncs and unmounts.
fn serve(live: Live, signals: SigSet) -> Result<()> {
    let unmounter = live.mount.unmounter();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                match signals.wait() {
                    Ok(sig) => {
                        tracing::info!(
                            "{sig}: syncing and unmounting {}",
                            unmounter.dir().display()
                        );
                        if let Err(e) = unmounter.unmount() {
                            tracing::error!("{e}");
                        }
                    }
                    Err(e) => {
                        tracing::error!("waiting for signals: {e}");
                        return;
                    }
                }
            }
        })
        .context("cannot start the signal thread")?;
    let Live { mount, _lock } = live;
    let result = mount.serve();
    match &result {
        Ok(()) => tracing::info!("unmounted cleanly"),
        Err(e) => tracing::error!("{e}"),
    }
    Ok(result?)
}

/// Opens (appending) the log file a mount writes to.
fn open_log(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log file {}", path.display()))
}

/// Logs to `file`, or to stderr (the daemon's stderr already is its log file).
fn init_logging(file: Option<std::fs::File>) {
    use tracing::Level;
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::prelude::*;
    let level = match std::env::var("COWCRYPT_LOG").as_deref() {
        Ok("trace") => Level::TRACE,
        Ok("debug") => Level::DEBUG,
        Ok("warn") => Level::WARN,
        Ok("error") => Level::ERROR,
        _ => Level::INFO,
    };
    // fuser narrates its own mount and unmount (and warns when it finds the mount already gone,
    // which is how every external unmount ends): only its errors, unless debugging.
    let fuser_level = if level >= Level::DEBUG {
        level
    } else {
        Level::ERROR
    };
    let filter = Targets::new()
        .with_default(level)
        .with_target("fuser", fuser_level);
    // Fails only when a logger is already installed, which then keeps logging.
    let writer = match file {
        Some(f) => BoxMakeWriter::new(std::sync::Mutex::new(f)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level)
        .with_target(false)
        .finish()
        .with(filter)
        .try_init();
}

/// Where the daemon logs when `-o log=` does not say: beside an image file, under /var/log for a
/// block device (whose directory is /dev).
fn default_log(image: &Path) -> PathBuf {
    let is_blockdev = std::fs::metadata(image)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_owned());
    if is_blockdev {
        PathBuf::from(format!("/var/log/cowcrypt-{name}.log"))
    } else {
        let mut p = image.as_os_str().to_owned();
        p.push(".log");
        PathBuf::from(p)
    }
}

/// The parent side: start the daemon child, wait for its word, report it.
fn spawn_daemon(req: &Request, parsed: &Parsed) -> Result<()> {
    let image = std::path::absolute(&req.image)
        .with_context(|| format!("cannot resolve {}", req.image.display()))?;
    let dir = std::path::absolute(&req.dir)
        .with_context(|| format!("cannot resolve {}", req.dir.display()))?;
    let log_path = match &parsed.log {
        Some(p) => {
            std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))?
        }
        None => default_log(&image),
    };
    let log = open_log(&log_path)?;
    let exe = std::env::current_exe().context("cannot find the cowcrypt executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount").arg("--daemon-child");
    for list in &req.options {
        cmd.arg("-o").arg(list);
    }
    cmd.arg(&image)
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let mut child = cmd.spawn().context("cannot start the mount daemon")?;
    let Some(stdout) = child.stdout.take() else {
        bail!("cannot talk to the mount daemon");
    };
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("cannot read the mount daemon's answer")?;
    let line = line.trim_end();
    if line == READY {
        return Ok(());
    }
    if let Some(msg) = line.strip_prefix(FAILED) {
        let _ = child.wait();
        return Err(anyhow!("{msg}"));
    }
    let status = child.wait().context("cannot wait for the mount daemon")?;
    bail!(
        "the mount daemon exited ({status}) before the mount was live; see {}",
        log_path.display()
    )
}

/// The daemon child: detached from the terminal, stdout a pipe to the waiting parent.
fn run_daemon_child(req: &Request, parsed: &Parsed) -> Result<()> {
    // A new session: no controlling terminal, no SIGHUP or SIGINT from the parent's terminal.
    nix::unistd::setsid().context("cannot start a new session")?;
    // Do not keep the parent's working directory (and its filesystem) busy.
    std::env::set_current_dir("/").context("cannot change to /")?;
    init_logging(None);
    abort_on_panic();
    tracing::info!(
        "cowcrypt {} daemon (pid {}) mounting {} on {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        req.image.display(),
        req.dir.display()
    );
    let started = block_signals().and_then(|signals| {
        check_paths(&req.image, &req.dir)?;
        Ok((setup(&req.image, &req.dir, &parsed.fuse)?, signals))
    });
    let mut out = std::io::stdout();
    match started {
        Ok((live, signals)) => {
            writeln!(out, "{READY}").context("cannot report to the parent")?;
            out.flush().context("cannot report to the parent")?;
            // The parent stops reading now: anything later printed goes to the log.
            nix::unistd::dup2_stdout(std::io::stderr()).context("cannot redirect stdout")?;
            serve(live, signals)
        }
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            tracing::error!("{msg}");
            let _ = writeln!(out, "{FAILED}{msg}");
            let _ = out.flush();
            // Already reported to the parent; the exit status still says it failed.
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_option_is_ours_and_the_rest_goes_to_the_adapter() {
        let p = parse_options(&["ro,log=/tmp/x.log".into(), "allow_other".into()]).unwrap();
        assert_eq!(p.log.as_deref(), Some(Path::new("/tmp/x.log")));
        assert!(p.fuse.read_only && p.fuse.allow_other);
        assert!(parse_options(&["log=".into()]).is_err());
        let e = parse_options(&["rw,frobnicate".into()]).unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
    }

    #[test]
    fn default_log_is_beside_the_image() {
        assert_eq!(
            default_log(Path::new("/srv/disk.img")),
            PathBuf::from("/srv/disk.img.log")
        );
    }
}
