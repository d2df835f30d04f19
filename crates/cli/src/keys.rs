//! `cowcrypt key add|remove|status` on a mounted filesystem, through the control channel (the
//! daemon learns the caller's uid from the kernel, so claims are per user as in Linux).

use std::path::Path;

use anyhow::{Context, Result, bail};
use cowfs::control::{Request, Response};
use cowfs::keys::RawKey;
use cowfs::{KeyPresence, KeyRemoval};

use crate::control;

/// Refuses what is not an identifier before asking the daemon (which could only say EINVAL).
fn check_identifier(identifier: &str) -> Result<()> {
    if identifier.parse::<fscrypt::KeyIdentifier>().is_err() {
        bail!("{identifier:?} is not a key identifier (32 hexadecimal digits)");
    }
    Ok(())
}

pub fn add(mount: &Path, raw: &[u8]) -> Result<()> {
    // The daemon would refuse it with EINVAL; the reason is clearer from here.
    fscrypt::MasterKey::from_raw(raw).context("invalid master key")?;
    let req = Request::KeyAdd {
        key: RawKey(raw.to_vec()),
    };
    match control::call(mount, &req)? {
        Response::KeyAdded { identifier } => println!("{identifier}"),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(())
}

pub fn remove(mount: &Path, identifier: &str, all_users: bool) -> Result<()> {
    check_identifier(identifier)?;
    let req = Request::KeyRemove {
        identifier: identifier.to_owned(),
        all_users,
    };
    match control::call(mount, &req)? {
        Response::KeyRemoved(KeyRemoval {
            other_users: true, ..
        }) => println!("{identifier}: your claim removed; other users still have it (OTHER_USERS)"),
        Response::KeyRemoved(KeyRemoval {
            files_busy: true, ..
        }) => println!(
            "{identifier}: removed, but files using it are open (FILES_BUSY): it is \
             INCOMPLETELY_REMOVED until they are closed; remove again then"
        ),
        Response::KeyRemoved(_) => println!("{identifier}: removed"),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(())
}

pub fn status(mount: &Path, identifier: &str) -> Result<()> {
    check_identifier(identifier)?;
    let req = Request::KeyStatus {
        identifier: identifier.to_owned(),
    };
    match control::call(mount, &req)? {
        Response::KeyStatus(s) => {
            let state = match s.state {
                KeyPresence::Present => "PRESENT",
                KeyPresence::IncompletelyRemoved => "INCOMPLETELY_REMOVED",
                KeyPresence::Absent => "ABSENT",
            };
            println!(
                "{identifier}: {state} (users: {}{})",
                s.user_count,
                if s.added_by_self {
                    ", including you"
                } else {
                    ""
                }
            );
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
    Ok(())
}
