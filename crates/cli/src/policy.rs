//! `cowcrypt encrypt PATH --key ID ...` and `cowcrypt policy PATH`: fscrypt v2 policies on a
//! mount, through the control channel. The rules (empty directory or subvolume root, the
//! caller's own key) are the filesystem's; this builds the 24-byte policy and prints answers.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cowfs::control::{Request, Response};
use fscrypt::policy::{ContentsMode, FilenamesMode, Padding, PolicyV2};

use crate::control;
use crate::size::human;

/// Contents modes by name (only AES-256-XTS encrypts per extent).
fn contents_mode(name: &str) -> Result<ContentsMode> {
    match name {
        "aes-256-xts" => Ok(ContentsMode::Aes256Xts),
        other => bail!("contents mode {other:?} is not supported (use aes-256-xts)"),
    }
}

fn filenames_mode(name: &str) -> Result<FilenamesMode> {
    match name {
        "aes-256-cts" => Ok(FilenamesMode::Aes256Cts),
        "aes-256-hctr2" => Ok(FilenamesMode::Aes256Hctr2),
        other => bail!("filenames mode {other:?} is not supported (aes-256-cts or aes-256-hctr2)"),
    }
}

pub fn encrypt(
    path: &Path,
    key: &str,
    contents: &str,
    filenames: &str,
    padding: usize,
    authenticated: bool,
) -> Result<()> {
    let id: fscrypt::KeyIdentifier = key
        .parse()
        .ok()
        .with_context(|| format!("{key:?} is not a key identifier (32 hexadecimal digits)"))?;
    let Some(pad) = Padding::from_bytes(padding) else {
        bail!("padding must be 4, 8, 16 or 32, not {padding}");
    };
    let policy = PolicyV2::new(
        contents_mode(contents)?,
        filenames_mode(filenames)?,
        pad.flag_bits()
            | if authenticated {
                fscrypt::policy::FLAG_AUTHENTICATED
            } else {
                0
            },
        0,
        id,
    )
    .context("invalid policy")?;
    let req = Request::SetPolicy {
        policy: policy.encode().to_vec(),
    };
    match control::call(path, &req)? {
        Response::Done => println!("{}: encrypted ({policy})", path.display()),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(())
}

pub fn show(path: &Path) -> Result<()> {
    match control::call(path, &Request::GetPolicy)? {
        Response::Policy {
            policy,
            plaintext_bytes,
        } => {
            match policy {
                Some(p) => {
                    let p = PolicyV2::decode(&p).context("the daemon sent a bad policy")?;
                    println!("{}: {p}", path.display());
                }
                None => println!("{}: not encrypted", path.display()),
            }
            if let Some(n) = plaintext_bytes {
                println!("plaintext data still in this subvolume: {}", human(n));
            }
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(())
}
