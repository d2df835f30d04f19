//! Reflinks through a mount: `cp --reflink=auto` and `cowcrypt reflink` share extents (as
//! `cowcrypt du` and `df` show), unaligned ranges share their middle and copy their edges,
//! writes to either side never change the other, and reflinks cross subvolumes.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise, except under CI=true.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use fsx::harness::{CowcryptMount, binary_can_mount, mount_tests_can_run};

fn cowcrypt(bin: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin).args(args).output().expect("run cowcrypt")
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// `cowcrypt du --json PATH`'s set shared bytes (each shared extent byte counted once).
fn set_shared(bin: &Path, path: &Path) -> u64 {
    let out = cowcrypt(bin, &["du", "--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["usage"]["set_shared"].as_u64().unwrap()
}

/// `cowcrypt du --json PATH` as (total, exclusive, shared).
fn du(bin: &Path, path: &Path) -> (u64, u64, u64) {
    let out = cowcrypt(bin, &["du", "--json", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let u = &v[0]["usage"];
    (
        u["total"].as_u64().unwrap(),
        u["exclusive"].as_u64().unwrap(),
        u["shared"].as_u64().unwrap(),
    )
}

fn data_used(bin: &Path, mount: &Path) -> u64 {
    let out = cowcrypt(bin, &["df", "--json", mount.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["data_used"].as_u64().unwrap()
}

#[test]
fn reflinks_share_until_written_and_du_df_show_it() {
    if !mount_tests_can_run("reflinks_share_until_written_and_du_df_show_it") {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    if !binary_can_mount(bin, "reflinks_share_until_written_and_du_df_show_it") {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("cowcrypt-reflink.")
        .tempdir_in(std::env::var("COWCRYPT_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("scratch dir");
    let image = tmp.path().join("reflink.img");
    let dir = tmp.path().join("mnt");
    CowcryptMount::mkfs(bin, &image, "512M").expect("mkfs");
    let mut mount =
        CowcryptMount::mount(bin, &image, &dir, &tmp.path().join("daemon.log")).expect("mount");
    let m = |p: &str| dir.join(p);
    let s = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    let store = cowcrypt(bin, &["subvolume", "create", &s("store")]);
    assert!(store.status.success(), "{store:?}");
    let pkg = data(8 << 20, 1);
    std::fs::write(m("store/pkg"), &pkg).unwrap();
    let used0 = data_used(bin, &dir);

    // cp --reflink=auto shares (it falls back to copy_file_range, which cowcrypt reflinks).
    let cp = Command::new("cp")
        .args(["--reflink=auto", &s("store/pkg"), &s("pkg.copy")])
        .status()
        .unwrap();
    assert!(cp.success());
    assert_eq!(std::fs::read(m("pkg.copy")).unwrap(), pkg);
    assert_eq!(du(bin, &m("pkg.copy")), (8 << 20, 0, 8 << 20));
    assert_eq!(du(bin, &m("store/pkg")), (8 << 20, 0, 8 << 20));
    assert_eq!(data_used(bin, &dir), used0, "no data copied");
    // The whole mount: both files' bytes are shared, the set shares them once.
    assert_eq!(du(bin, &dir), (16 << 20, 0, 16 << 20));
    assert_eq!(set_shared(bin, &dir), 8 << 20);
    let table = cowcrypt(bin, &["du", &s("pkg.copy")]);
    assert!(table.status.success(), "{table:?}");
    assert!(String::from_utf8_lossy(&table.stdout).contains("SET SHARED"));

    // cowcrypt reflink, whole file and an unaligned range.
    let whole = cowcrypt(bin, &["reflink", &s("store/pkg"), &s("whole")]);
    assert!(whole.status.success(), "{whole:?}");
    let part = cowcrypt(
        bin,
        &[
            "reflink",
            "--range",
            "1000",
            "300000",
            "5096",
            &s("store/pkg"),
            &s("part"),
        ],
    );
    assert!(part.status.success(), "{part:?}");
    let got = std::fs::read(m("part")).unwrap();
    assert_eq!(got.len(), 5096 + 300_000);
    assert!(got[..5096].iter().all(|&b| b == 0));
    assert!(got[5096..] == pkg[1000..301_000]);
    let (total, _, shared) = du(bin, &m("part"));
    assert!(shared > 0 && shared < total, "edges copied, middle shared");

    // Writes to either side never change the other.
    std::fs::File::options()
        .write(true)
        .open(m("whole"))
        .unwrap()
        .write_all_at(b"changed copy", 4096)
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(m("store/pkg"))
        .unwrap()
        .write_all_at(b"changed origin", 100)
        .unwrap();
    let mut want_origin = pkg.clone();
    want_origin[100..114].copy_from_slice(b"changed origin");
    let mut want_copy = pkg.clone();
    want_copy[4096..4108].copy_from_slice(b"changed copy");
    assert_eq!(std::fs::read(m("store/pkg")).unwrap(), want_origin);
    assert_eq!(std::fs::read(m("whole")).unwrap(), want_copy);
    assert_eq!(std::fs::read(m("pkg.copy")).unwrap(), pkg);

    let bad = cowcrypt(bin, &["reflink", &s("missing"), &s("x")]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr).trim().lines().count(),
        1
    );
    mount.unmount().expect("unmount");
    CowcryptMount::fsck(bin, &image).expect("fsck");
}

/// copy_file_range(2) through the kernel, errno or the count it returned.
fn cfr(
    src: &std::fs::File,
    off_in: u64,
    dst: &std::fs::File,
    off_out: u64,
    len: u64,
) -> Result<u64, i32> {
    use std::os::fd::AsRawFd;
    let mut a = off_in as i64;
    let mut b = off_out as i64;
    // SAFETY: both fds are open for the call; the offset pointers are to live locals.
    let n = unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut a,
            dst.as_raw_fd(),
            &mut b,
            len as usize,
            0,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    } else {
        Ok(n as u64)
    }
}

/// Random unaligned copy_file_range calls between files (one of them onto itself) and writes
/// to either side, checked byte for byte against a model; Linux's errors for the edge cases;
/// du of the directory; fsck clean after.
#[test]
fn random_ranges_through_the_kernel_match_a_model() {
    let name = "random_ranges_through_the_kernel_match_a_model";
    if !mount_tests_can_run(name) {
        return;
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    if !binary_can_mount(bin, name) {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("cowcrypt-reflink.")
        .tempdir_in(std::env::var("COWCRYPT_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()))
        .expect("scratch dir");
    let image = tmp.path().join("reflink.img");
    let dir = tmp.path().join("mnt");
    CowcryptMount::mkfs(bin, &image, "256M").expect("mkfs");
    let mut mount =
        CowcryptMount::mount(bin, &image, &dir, &tmp.path().join("daemon.log")).expect("mount");
    std::fs::create_dir(dir.join("d")).unwrap();
    const B: u64 = 4096;
    let mut model: Vec<Vec<u8>> = Vec::new();
    let mut files = Vec::new();
    for i in 0..3u8 {
        let init = data(40 * B as usize + 123 * i as usize, i);
        let p = dir.join(format!("d/f{i}"));
        std::fs::write(&p, &init).unwrap();
        files.push(
            std::fs::File::options()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap(),
        );
        model.push(init);
    }

    // Edge cases, answered by the kernel's checks or by cowcrypt, as on any Linux filesystem.
    let append = std::fs::File::options()
        .append(true)
        .open(dir.join("d/f1"))
        .unwrap();
    assert_eq!(cfr(&files[0], 0, &append, 0, B), Err(libc::EBADF));
    let read_only = std::fs::File::open(dir.join("d/f1")).unwrap();
    assert_eq!(cfr(&files[0], 0, &read_only, 0, B), Err(libc::EBADF));
    assert_eq!(cfr(&files[0], 0, &files[0], B, 4 * B), Err(libc::EINVAL));
    assert_eq!(cfr(&files[0], 100 * B, &files[1], 0, B), Ok(0));

    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for step in 0..300 {
        let (from, to) = (next(3) as usize, next(3) as usize);
        let phase = next(B);
        let off_in = next(48) * B + if next(4) == 0 { next(B) } else { phase };
        let off_out = next(64) * B + if next(4) == 0 { next(B) } else { phase };
        let len = 1 + next(16 * B);
        if next(5) == 0 {
            // A write to one side.
            let d = data(len as usize, step as u8);
            files[to].write_all_at(&d, off_out).unwrap();
            let m = &mut model[to];
            let end = (off_out + len) as usize;
            if m.len() < end {
                m.resize(end, 0);
            }
            m[off_out as usize..end].copy_from_slice(&d);
            continue;
        }
        let want = len.min((model[from].len() as u64).saturating_sub(off_in));
        let r = cfr(&files[from], off_in, &files[to], off_out, len);
        if from == to && off_in < off_out + want && off_out < off_in + want {
            assert_eq!(r, Err(libc::EINVAL), "step {step}");
            continue;
        }
        // The kernel may answer short; whatever it copied must be the model's bytes.
        let n = r.unwrap_or_else(|e| panic!("step {step}: errno {e}"));
        assert!(
            n <= want && (n > 0 || want == 0),
            "step {step}: {n} of {want}"
        );
        if n > 0 {
            let piece = model[from][off_in as usize..(off_in + n) as usize].to_vec();
            let m = &mut model[to];
            let end = (off_out + n) as usize;
            if m.len() < end {
                m.resize(end, 0);
            }
            m[off_out as usize..end].copy_from_slice(&piece);
        }
    }
    drop((files, append, read_only));
    for (i, want) in model.iter().enumerate() {
        let got = std::fs::read(dir.join(format!("d/f{i}"))).unwrap();
        assert_eq!(got.len(), want.len(), "f{i} size");
        assert!(&got == want, "f{i} differs from the model");
    }
    // cowcrypt reflink inside one file (to a hole past its end, so no old data is freed): a
    // non-overlapping range is shared; an overlapping one is refused in one line with
    // nothing changed.
    let f0 = dir.join("d/f0").to_str().unwrap().to_owned();
    let before = std::fs::read(&f0).unwrap();
    let free0 = data_used(bin, &dir);
    let same = cowcrypt(
        bin,
        &["reflink", "--range", "0", "65536", "8388608", &f0, &f0],
    );
    assert!(same.status.success(), "{same:?}");
    let mut want = before.clone();
    want.resize((8 << 20) + 65_536, 0);
    want.copy_within(0..65_536, 8 << 20);
    assert!(
        std::fs::read(&f0).unwrap() == want,
        "same-file reflink bytes"
    );
    assert_eq!(data_used(bin, &dir), free0, "same-file reflink shares");
    let bad = cowcrypt(bin, &["reflink", "--range", "0", "8192", "4096", &f0, &f0]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr).trim().lines().count(),
        1
    );
    assert!(
        std::fs::read(&f0).unwrap() == want,
        "refusal changed nothing"
    );

    let (total, exclusive, shared) = du(bin, &dir.join("d"));
    assert_eq!(total, exclusive + shared);
    assert!(shared > 0, "reflinks between the files are shared");
    let set = set_shared(bin, &dir.join("d"));
    assert!(set > 0 && set <= shared, "{set} of {shared}");
    mount.unmount().expect("unmount");
    CowcryptMount::fsck(bin, &image).expect("fsck");
}
