//! The `cowcrypt` command: a thin client of the library crates. It parses arguments, calls the
//! library, and turns every error into one clear line and exit status 1.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

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
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print the identifier of a raw master key (16 to 64 bytes), as the kernel's
    /// FS_IOC_ADD_ENCRYPTION_KEY returns it.
    Identifier {
        /// File holding the raw key; standard input when absent or "-".
        file: Option<PathBuf>,
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
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cowcrypt: {e:#}");
            ExitCode::FAILURE
        }
    }
}
