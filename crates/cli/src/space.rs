//! `cowcrypt du PATH...` and `cowcrypt df MOUNT`: space figures from a mounted filesystem,
//! through the control channel. The figures are the fs library's; this prints them.

use std::path::Path;

use anyhow::{Result, bail};
use cowfs::control::{Request, Response};
use cowfs::{DiskUsage, SpaceReport};

use crate::control;
use crate::size::human;

/// `du`: one line per path (a file, or everything under a directory).
pub fn du(paths: &[std::path::PathBuf], json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for p in paths {
        let du = match control::call(p, &Request::DiskUsage)? {
            Response::DiskUsage(d) => d,
            other => bail!("unexpected answer from the daemon: {other:?}"),
        };
        rows.push((p.display().to_string(), du));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(p, d)| serde_json::json!({ "path": p, "usage": d }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:>10} {:>10} {:>10} {:>10}  PATH",
        "TOTAL", "EXCLUSIVE", "SHARED", "SET SHARED"
    );
    for (
        p,
        DiskUsage {
            total,
            exclusive,
            shared,
            set_shared,
            ..
        },
    ) in rows
    {
        println!(
            "{:>10} {:>10} {:>10} {:>10}  {p}",
            human(total),
            human(exclusive),
            human(shared),
            human(set_shared)
        );
    }
    Ok(())
}

/// `df`: the filesystem's size, data and metadata in use, free space, pending deletions.
pub fn df(mount: &Path, json: bool) -> Result<()> {
    let s: SpaceReport = match control::call(mount, &Request::Space)? {
        Response::Space(s) => s,
        other => bail!("unexpected answer from the daemon: {other:?}"),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("Size:              {}", human(s.size));
    println!(
        "Data:              {} used of {}",
        human(s.data_used),
        human(s.data_total)
    );
    println!(
        "Metadata:          {} used of {}",
        human(s.metadata_used),
        human(s.metadata_total)
    );
    println!("Free (data):       {}", human(s.free));
    println!(
        "Pending deletion:  {} ({} subvolume(s) being freed)",
        human(s.pending_deletion),
        s.deleting_subvolumes
    );
    Ok(())
}
