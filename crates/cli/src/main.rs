//! The `cowcrypt` command: a thin client of the library crates. It parses arguments, calls the
//! library, and turns every error into one clear line and exit status 1 (argument errors
//! included: clap's several-line messages are folded into one).

mod balance;
mod control;
mod image;
mod keys;
mod mount;
mod offline;
mod policy;
mod progress;
mod reflink;
mod scrub;
mod size;
mod space;
mod subvolume;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cowcrypt",
    version,
    about = "A copy-on-write filesystem with per-extent encryption"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage fscrypt master keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Make a new filesystem on an image file or a block device.
    Mkfs {
        /// Size of a new image file, like 512M or 1G (binary units). Not for block devices,
        /// which are used whole; an existing image file keeps its size unless this is given.
        #[arg(long, value_name = "SIZE", value_parser = size::parse_size)]
        size: Option<u64>,
        /// A name for the filesystem.
        #[arg(long, value_name = "LABEL")]
        label: Option<String>,
        /// Image file or block device.
        image: PathBuf,
    },
    /// Mount a filesystem with FUSE (as root).
    ///
    /// In the background unless -f is given: the command returns once the mount is live, and
    /// the daemon logs to IMAGE.log (or -o log=PATH). Unmount with `umount DIR` or
    /// `fusermount3 -u DIR`; SIGTERM or SIGINT to the daemon also commits and unmounts. The
    /// image is locked while mounted: a second mount or an fsck of it is refused.
    Mount(MountArgs),
    /// Check a filesystem (not mounted) and list every fault; exit status 1 if any.
    Fsck {
        /// Image file or block device.
        image: PathBuf,
    },
    /// Show what a filesystem (not mounted) holds: subvolumes, inodes, names, extents.
    Inspect {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Image file or block device.
        image: PathBuf,
    },
    /// Manage subvolumes of a mounted filesystem.
    #[command(subcommand)]
    Subvolume(SubvolumeCommand),
    /// Move data out of little-used chunks so free space gathers in whole empty chunks.
    ///
    /// On a mount (any path inside it; root only) the daemon does it while the filesystem
    /// stays in use; on an image or device that is not mounted, it is done directly. Extents
    /// move whole and as stored: encrypted data needs no key, and sharing between snapshots
    /// and reflinks is kept. A crash at any point loses nothing. `cowcrypt resize` can then
    /// give the empty chunks back.
    Balance {
        /// Only chunks with at most this percentage in use (default 100: every chunk).
        #[arg(long, value_name = "PERCENT", default_value_t = 100,
              value_parser = clap::value_parser!(u8).range(0..=100))]
        usage: u8,
        /// A path on a cowcrypt mount, or an image file or block device that is not mounted.
        target: PathBuf,
    },
    /// Share a file's data with another file on the same mount (copy_file_range).
    ///
    /// Whole blocks are shared, not copied; unaligned edges of a range are copied. Writes to
    /// either file afterwards never change the other. Without --range DEST is created or
    /// truncated and receives all of SOURCE.
    Reflink {
        /// Share LENGTH bytes at SRC_OFFSET of SOURCE into DEST at DEST_OFFSET.
        #[arg(long, num_args = 3, value_names = ["SRC_OFFSET", "LENGTH", "DEST_OFFSET"],
              value_parser = size::parse_offset)]
        range: Option<Vec<u64>>,
        source: PathBuf,
        dest: PathBuf,
    },
    /// Bytes of files on a mount: total, exclusive (freed by deleting them), shared (with
    /// a reflink or a snapshot) and, as btrfs, set shared (the shared bytes counted once
    /// across all the files of PATH). A directory counts every file below it.
    Du {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Space of a mounted filesystem: size, data and metadata used, free, pending deletion.
    Df {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Any path on the mount.
        mount: PathBuf,
    },
    /// Verify every data and metadata checksum, with no key: on a mount (root only) or an
    /// unmounted image or device. Each bad sector is listed with the files and offsets that
    /// hold it; exit status 1 when anything is wrong.
    Scrub {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// A path on a cowcrypt mount, or an image file or block device that is not mounted.
        target: PathBuf,
    },
    /// Set an fscrypt v2 policy on an empty directory, or on a subvolume's root (empty or not:
    /// every extent written in it from then on is encrypted; older ones stay as they are).
    ///
    /// The key must have been added by you (`cowcrypt key add`). Errors as the kernel's
    /// FS_IOC_SET_ENCRYPTION_POLICY: not a directory, not empty, another policy already, no key.
    Encrypt {
        /// The directory.
        path: PathBuf,
        /// The master key's identifier (32 hex digits).
        #[arg(long, value_name = "ID")]
        key: String,
        /// Contents encryption mode.
        #[arg(long, default_value = "aes-256-xts")]
        contents: String,
        /// Filenames encryption mode (aes-256-cts or aes-256-hctr2).
        #[arg(long, default_value = "aes-256-cts")]
        filenames: String,
        /// Filename padding in bytes: 4, 8, 16 or 32.
        #[arg(long, default_value_t = 32)]
        padding: usize,
        /// Authenticated encryption (cowcrypt's own, beyond Linux fscrypt): every data unit of
        /// every new extent gets a MAC, and a read of tampered data fails with EIO.
        #[arg(long)]
        authenticated: bool,
    },
    /// Show the encryption policy of a path, and for a subvolume root how much of its data is
    /// still plaintext.
    Policy { path: PathBuf },
    /// Grow or shrink a filesystem that is not mounted.
    ///
    /// Growing extends the image file (a block device must already be that large) and adds
    /// the new space. Shrinking drops unused chunks past the new end and moves used ones,
    /// whole and as stored (encrypted data needs no key), below it, then cuts the image file;
    /// when the data cannot fit, nothing changes. A crash at any point leaves the filesystem
    /// either as it was or resized.
    Resize {
        /// Image file or block device.
        image: PathBuf,
        /// The new size, like 512M or 2G (binary units).
        #[arg(value_parser = size::parse_size)]
        size: u64,
    },
}

#[derive(Subcommand)]
enum SubvolumeCommand {
    /// Make a new, empty subvolume at PATH (a directory that is the root of its own tree).
    Create {
        /// Where the new subvolume goes; its parent directory must exist on a cowcrypt mount.
        path: PathBuf,
    },
    /// Snapshot a subvolume: O(1), sharing every block with SOURCE until either side changes.
    ///
    /// Not recursive: subvolumes nested in SOURCE show as empty directories in the snapshot.
    Snapshot {
        /// Make the snapshot read-only (writes into it fail with EROFS).
        #[arg(short = 'r', long = "read-only")]
        read_only: bool,
        /// The subvolume to snapshot (its top directory).
        source: PathBuf,
        /// The snapshot's path, or an existing directory to put it in under SOURCE's name.
        dest: PathBuf,
    },
    /// Delete a subvolume: returns at once; its space is freed in the background (progress in
    /// `subvolume list`), also after a remount or crash. Root, or the owner of its top
    /// directory; subvolumes nested in it must be deleted first.
    Delete {
        /// Wait until the space of every deleted subvolume is freed (a bar on a terminal).
        #[arg(long)]
        wait: bool,
        /// The subvolume's top directory.
        path: PathBuf,
    },
    /// Make a subvolume read-only (writes into it fail with EROFS), or writable again with
    /// --off (root only, as btrfs's `property set PATH ro`).
    SetReadOnly {
        /// Make it writable again.
        #[arg(long)]
        off: bool,
        /// The subvolume's top directory.
        path: PathBuf,
    },
    /// List the subvolumes of a mounted filesystem, and the deletions still freeing space.
    ///
    /// Root sees every subvolume; other users see the top one and those they own.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Any path in the mount (usually its top directory).
        mount: PathBuf,
    },
    /// Show the subvolume that PATH belongs to.
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Any path in the mount.
        path: PathBuf,
    },
}

#[derive(Args)]
struct MountArgs {
    /// Stay in the foreground and log to stderr (or to -o log=PATH).
    #[arg(short, long)]
    foreground: bool,
    /// Comma-separated options (may be repeated): ro, rw, allow_other, log=PATH, threads=N,
    /// readahead=KIB (default 8192; set when mounting as root), dirty=KIB (buffered file data,
    /// default 65536), fsname=NAME, and the kernel flags dev, nodev, suid, nosuid, exec, noexec, atime,
    /// noatime, sync, async, dirsync.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Internal: run as the background daemon started by `cowcrypt mount`.
    #[arg(long, hide = true)]
    daemon_child: bool,
    /// Image file or block device.
    image: PathBuf,
    /// Directory to mount on.
    dir: PathBuf,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the identifier of a raw master key (16 to 64 bytes), as the kernel's
    /// FS_IOC_ADD_ENCRYPTION_KEY returns it.
    Identifier {
        /// File holding the raw key; standard input when absent or "-".
        file: Option<PathBuf>,
    },
    /// Add a raw master key to a mounted filesystem and print its identifier (claimed for
    /// you, as FS_IOC_ADD_ENCRYPTION_KEY does; adding a removed key back restores it).
    Add {
        /// Any path on the mount.
        mount: PathBuf,
        /// File holding the raw key; standard input when absent or "-".
        keyfile: Option<PathBuf>,
    },
    /// Remove your claim on a key (or, as root with --all-users, every claim). Reports when
    /// other users still hold it, or when open files keep it incompletely removed.
    Remove {
        /// Any path on the mount.
        mount: PathBuf,
        /// The key's identifier (32 hex digits).
        identifier: String,
        /// Remove every user's claim (root only).
        #[arg(long)]
        all_users: bool,
    },
    /// Show a key's status: PRESENT, INCOMPLETELY_REMOVED or ABSENT, with its user count.
    Status {
        /// Any path on the mount.
        mount: PathBuf,
        /// The key's identifier (32 hex digits).
        identifier: String,
    },
}

/// Largest input read as a key: anything longer is an error, not a truncation.
const KEY_READ_LIMIT: u64 = fscrypt::master_key::MAX_KEY_SIZE as u64 + 1;

fn read_raw_key(file: Option<&PathBuf>) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut raw = zeroize::Zeroizing::new(Vec::with_capacity(KEY_READ_LIMIT as usize));
    match file {
        Some(path) if path.as_os_str() != "-" => {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot read key file {}", path.display()))?;
            f.take(KEY_READ_LIMIT)
                .read_to_end(&mut raw)
                .with_context(|| format!("cannot read key file {}", path.display()))?;
        }
        _ => {
            std::io::stdin()
                .take(KEY_READ_LIMIT)
                .read_to_end(&mut raw)
                .context("cannot read key from standard input")?;
        }
    }
    Ok(raw)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Key(KeyCommand::Identifier { file }) => {
            let raw = read_raw_key(file.as_ref())?;
            let key = fscrypt::MasterKey::from_raw(&raw).context("invalid master key")?;
            println!("{}", key.identifier());
        }
        Command::Key(KeyCommand::Add { mount, keyfile }) => {
            let raw = read_raw_key(keyfile.as_ref())?;
            keys::add(&mount, &raw)?;
        }
        Command::Key(KeyCommand::Remove {
            mount,
            identifier,
            all_users,
        }) => keys::remove(&mount, &identifier, all_users)?,
        Command::Key(KeyCommand::Status { mount, identifier }) => {
            keys::status(&mount, &identifier)?
        }
        Command::Mkfs { size, label, image } => offline::mkfs(&image, size, label)?,
        Command::Mount(a) => mount::run(mount::Request {
            image: a.image,
            dir: a.dir,
            options: a.options,
            foreground: a.foreground,
            daemon_child: a.daemon_child,
        })?,
        Command::Fsck { image } => offline::fsck(&image)?,
        Command::Inspect { json, image } => offline::inspect(&image, json)?,
        Command::Resize { image, size } => offline::resize(&image, size)?,
        Command::Balance { usage, target } => balance::run(&target, usage)?,
        Command::Reflink {
            range,
            source,
            dest,
        } => reflink::run(&source, &dest, range.map(|r| (r[0], r[1], r[2])))?,
        Command::Du { json, paths } => space::du(&paths, json)?,
        Command::Encrypt {
            path,
            key,
            contents,
            filenames,
            padding,
            authenticated,
        } => policy::encrypt(&path, &key, &contents, &filenames, padding, authenticated)?,
        Command::Policy { path } => policy::show(&path)?,
        Command::Scrub { json, target } => scrub::run(&target, json)?,
        Command::Df { json, mount } => space::df(&mount, json)?,
        Command::Subvolume(c) => match c {
            SubvolumeCommand::Create { path } => subvolume::create(&path)?,
            SubvolumeCommand::Snapshot {
                read_only,
                source,
                dest,
            } => subvolume::snapshot(&source, &dest, read_only)?,
            SubvolumeCommand::Delete { wait, path } => subvolume::delete(&path, wait)?,
            SubvolumeCommand::SetReadOnly { off, path } => subvolume::set_read_only(&path, !off)?,
            SubvolumeCommand::List { json, mount } => subvolume::list(&mount, json)?,
            SubvolumeCommand::Show { json, path } => subvolume::show(&path, json)?,
        },
    }
    Ok(())
}

/// Folds one of clap's messages ("error: ...", indented details, a usage block, a tip) into
/// one line: the error and its details, then where help is.
fn one_line_usage_error(rendered: &str) -> String {
    let mut parts = Vec::new();
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") || line.starts_with("For more information") {
            break;
        }
        if line.is_empty() || line.starts_with("tip:") {
            continue;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    format!("{} (see --help)", parts.join(" "))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                // Help and version go to stdout with status 0.
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                eprintln!("cowcrypt: a command is required (see --help)");
                return ExitCode::FAILURE;
            }
            let text = e.render().to_string();
            eprintln!("cowcrypt: {}", one_line_usage_error(&text));
            return ExitCode::FAILURE;
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("cowcrypt: {msg}");
            ExitCode::FAILURE
        }
    }
}
