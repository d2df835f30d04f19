//! Who is asking: builds the [`cowfs::Caller`] a request runs as.
//!
//! The FUSE request header carries uid, gid and the calling thread's id, but not the
//! supplementary groups that permission checks need (group-owned files, setgid directories,
//! ACL group entries); those are read from `/proc/<tid>/status`. A caller that has already exited
//! (or a request the kernel makes on its own, with pid 0) gets no supplementary groups: the check
//! then errs towards refusing, never towards granting.

/// Builds the caller of one request. `umask` is the request's where FUSE sends one (create,
/// mkdir, mknod), zero elsewhere (no other operation applies it).
pub(crate) fn caller(uid: u32, gid: u32, pid: u32, umask: u32) -> cowfs::Caller {
    // Root's requests never reach a group test (cowfs grants uid 0 before looking at groups),
    // so /proc is not read for them: that read is a large part of a small request's cost.
    let groups = if uid == 0 {
        Vec::new()
    } else {
        supplementary_groups(pid)
    };
    cowfs::Caller {
        uid,
        gid,
        groups,
        pid,
        umask,
    }
}

/// The supplementary groups of thread `pid`, empty when they cannot be read.
fn supplementary_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => parse_groups(&status),
        Err(e) => {
            tracing::debug!(pid, "no supplementary groups: /proc/{pid}/status: {e}");
            Vec::new()
        }
    }
}

/// Parses the `Groups:` line of a /proc status file (decimal ids separated by spaces or tabs).
/// A malformed id is skipped rather than failing the request.
fn parse_groups(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|ids| {
            ids.split_ascii_whitespace()
                .filter_map(|id| id.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_line_parses() {
        let status =
            "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 24 27 1000 \nNgid:\t0\n";
        assert_eq!(parse_groups(status), vec![4, 24, 27, 1000]);
        assert_eq!(parse_groups("Groups:\t\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Name:\tx\n"), Vec::<u32>::new());
        assert_eq!(parse_groups("Groups:\t5 x 6\n"), vec![5, 6]);
    }

    #[test]
    fn own_groups_match_the_kernel() {
        let tid = std::process::id();
        let c = caller(1, 2, tid, 0o22);
        let mut expected: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = c.groups.clone();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
        assert_eq!((c.uid, c.gid, c.pid, c.umask), (1, 2, tid, 0o22));
        assert!(caller(0, 0, 0, 0).groups.is_empty());
    }
}
