//! The kernel's readahead window for this mount.
//!
//! FUSE's INIT can only lower readahead below the kernel's 128 KiB default, and with 1 MiB
//! application reads that default leaves about one request in flight: a cold sequential read
//! then waits for each device read and decryption in turn. The window is the mount's backing
//! device info in sysfs (`/sys/class/bdi/MAJOR:MINOR/read_ahead_kb`), writable by root only;
//! where it cannot be set the mount goes on with the kernel's default.

use std::path::Path;

/// Sets the readahead window of the mount on `dir` to `kib` KiB. The mount must already be
/// live (its device is found in /proc/self/mountinfo, without touching the mount itself,
/// which would wait for a session that is not serving yet).
pub(crate) fn set(dir: &Path, kib: u32) -> std::io::Result<()> {
    let dir = dir.canonicalize()?;
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let device = device_of(&table, &dir).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not in /proc/self/mountinfo", dir.display()),
        )
    })?;
    std::fs::write(
        format!("/sys/class/bdi/{device}/read_ahead_kb"),
        kib.to_string(),
    )
}

/// The `MAJOR:MINOR` of the last mount on `dir` in a mountinfo table (the last: the one on
/// top when mounts are stacked).
fn device_of(table: &str, dir: &Path) -> Option<String> {
    let want = escape(&dir.to_string_lossy());
    table
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let device = fields.nth(2)?;
            let mount_point = fields.nth(1)?;
            (mount_point == want).then(|| device.to_owned())
        })
        .next_back()
        .filter(|d| {
            d.split_once(':').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
            })
        })
}

/// A path as mountinfo writes it: space, tab, newline and backslash in octal escapes.
fn escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
61 22 0:39 / /var/tmp/a\\040b rw,nosuid,nodev,relatime shared:33 - fuse.cowcrypt img rw,user_id=0
62 22 0:40 / /mnt rw,relatime shared:34 - fuse.cowcrypt one rw,user_id=0
63 62 0:41 / /mnt rw,relatime shared:35 - fuse.cowcrypt two rw,user_id=0
";

    #[test]
    fn finds_the_top_mount_on_a_directory() {
        assert_eq!(device_of(TABLE, Path::new("/mnt")).as_deref(), Some("0:41"));
        assert_eq!(
            device_of(TABLE, Path::new("/var/tmp/a b")).as_deref(),
            Some("0:39")
        );
        assert_eq!(device_of(TABLE, Path::new("/var/tmp")), None);
        assert_eq!(device_of("garbage\n\n1 2 3", Path::new("/")), None);
        assert_eq!(
            device_of("1 2 ../x / / rw", Path::new("/")),
            None,
            "a device that is not MAJOR:MINOR is not written into a sysfs path"
        );
    }

    #[test]
    fn escapes_as_mountinfo_does() {
        assert_eq!(escape("/a b\\c\td\ne"), "/a\\040b\\134c\\011d\\012e");
    }
}
