//! `cowcrypt-fsx`: run the fsx tester on a directory from the command line.
//!
//! ```text
//! cowcrypt-fsx /mnt/x --seed 7 --ops 50000 --remount-every 5000 \
//!     --remount-cmd 'umount /mnt/x && cowcrypt mount img /mnt/x'
//! ```
//! Exit status 0 when every compare matched, 1 on a mismatch or error (seed and the last
//! operations are printed), 2 on bad arguments.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use fsx::{Config, DirTarget, FallocMode, Fsx, OpSet};

#[derive(Parser)]
#[command(
    name = "cowcrypt-fsx",
    about = "fsx-style random file I/O tester with an in-memory model"
)]
struct Args {
    /// Directory to run in (files fsx.0, fsx.1, ... are created there).
    dir: PathBuf,
    /// Seed (default: derived from the clock, and printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Number of operations.
    #[arg(long, default_value_t = 10_000)]
    ops: u64,
    /// Number of files.
    #[arg(long, default_value_t = 4)]
    files: usize,
    /// Largest file size in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_size: u64,
    /// Largest single operation length in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_len: u64,
    /// Run --remount-cmd (with all files closed) and compare everything every K operations.
    #[arg(long, default_value_t = 0)]
    remount_every: u64,
    /// Shell command that unmounts and mounts the directory again.
    #[arg(long)]
    remount_cmd: Option<String>,
    /// Run --crash-cmd (with all files closed) every K operations; files fsync'd and unchanged
    /// since must read back exactly afterwards.
    #[arg(long, default_value_t = 0)]
    crash_every: u64,
    /// Shell command that crashes the filesystem (e.g. kill -9 its daemon) and mounts it again.
    #[arg(long)]
    crash_cmd: Option<String>,
    /// Operations shown on failure.
    #[arg(long, default_value_t = 40)]
    history: usize,
    /// Treat EOPNOTSUPP as a failure instead of dropping the operation.
    #[arg(long)]
    strict: bool,
    /// No fallocate at all.
    #[arg(long)]
    no_fallocate: bool,
    /// No FALLOC_FL_PUNCH_HOLE.
    #[arg(long)]
    no_punch_hole: bool,
    /// No FALLOC_FL_ZERO_RANGE.
    #[arg(long)]
    no_zero_range: bool,
    /// No copy_file_range.
    #[arg(long)]
    no_copy_range: bool,
    /// No SEEK_DATA/SEEK_HOLE checks.
    #[arg(long)]
    no_seek: bool,
    /// fdatasync before every SEEK_DATA/SEEK_HOLE (works around seeks that misbehave with
    /// unflushed data).
    #[arg(long)]
    sync_before_seek: bool,
    /// No reads and writes through mmap.
    #[arg(long)]
    no_mmap: bool,
    /// No writes through an O_APPEND descriptor.
    #[arg(long)]
    no_append: bool,
    /// Progress line every N operations (0: none).
    #[arg(long, default_value_t = 0)]
    progress: u64,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let seed = a.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    if a.remount_every > 0 && a.remount_cmd.is_none() {
        eprintln!("cowcrypt-fsx: --remount-every needs --remount-cmd");
        return ExitCode::from(2);
    }
    if a.crash_every > 0 && a.crash_cmd.is_none() {
        eprintln!("cowcrypt-fsx: --crash-every needs --crash-cmd");
        return ExitCode::from(2);
    }
    let mut fallocate: BTreeSet<FallocMode> = FallocMode::ALL.into_iter().collect();
    if a.no_fallocate {
        fallocate.clear();
    }
    if a.no_punch_hole {
        fallocate.remove(&FallocMode::PunchHole);
    }
    if a.no_zero_range {
        fallocate.remove(&FallocMode::ZeroRange);
        fallocate.remove(&FallocMode::ZeroRangeKeepSize);
    }
    let cfg = Config {
        seed,
        ops: a.ops,
        files: a.files,
        max_file_size: a.max_size,
        max_op_len: a.max_len,
        remount_every: a.remount_every,
        history: a.history,
        ops_enabled: OpSet {
            fallocate,
            copy_file_range: !a.no_copy_range,
            seek: !a.no_seek,
            mmap: !a.no_mmap,
            append: !a.no_append,
            ..OpSet::default()
        },
        strict: a.strict,
        progress_every: a.progress,
        sync_before_seek: a.sync_before_seek,
        crash_every: a.crash_every,
    };
    eprintln!(
        "cowcrypt-fsx: seed {seed}, {} ops on {}",
        a.ops,
        a.dir.display()
    );
    let mut target = DirTarget::new(&a.dir, a.files);
    let mut remount = shell_hook(a.remount_cmd.clone());
    let mut crash = shell_hook(a.crash_cmd.clone());
    match Fsx::new(cfg).run_with_crashes(&mut target, Some(&mut remount), Some(&mut crash)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::FAILURE
        }
    }
}

/// A hook running `cmd` with `sh -c` (a no-op when there is none).
fn shell_hook(cmd: Option<String>) -> impl FnMut() -> io::Result<()> {
    move || {
        let Some(cmd) = &cmd else { return Ok(()) };
        let status = Command::new("sh").arg("-c").arg(cmd).status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "command {cmd:?} failed: {status}"
            )))
        }
    }
}
