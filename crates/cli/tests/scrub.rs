//! `cowcrypt scrub` on an image and on a mount: clean exits 0; a flipped bit in a file's data
//! is reported as that file's path and offset, with exit status 1, both ways.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise, except under CI=true.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use fsx::harness::Scratch;

fn cowcrypt(bin: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin).args(args).output().expect("run cowcrypt")
}

#[test]
fn scrub_reports_the_path_and_offset_of_a_bad_sector() {
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    let Some(scratch) = Scratch::new(
        bin,
        "scrub_reports_the_path_and_offset_of_a_bad_sector",
        "256M",
    ) else {
        return;
    };
    let (image, dir) = (&scratch.image, &scratch.dir);
    let img = image.to_str().unwrap();
    let mut mount = scratch.mount(bin);
    std::fs::create_dir(dir.join("docs")).unwrap();
    let body: Vec<u8> = (0..65536u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(dir.join("docs/report"), &body).unwrap();
    let ok = cowcrypt(bin, &["scrub", dir.to_str().unwrap()]);
    assert!(ok.status.success(), "{ok:?}");
    mount.unmount().expect("unmount");
    let ok = cowcrypt(bin, &["scrub", img]);
    assert!(ok.status.success(), "{ok:?}");

    // Where the file's extent lies on the image.
    let ins = cowcrypt(bin, &["inspect", "--json", img]);
    let v: serde_json::Value = serde_json::from_slice(&ins.stdout).unwrap();
    let physical = v["subvolumes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["inodes"].as_array().unwrap().iter())
        .find(|i| i["size"] == 65536)
        .and_then(|i| i["extents"][0]["physical"].as_u64())
        .expect("the file's extent");
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(image)
        .unwrap();
    let mut b = [0u8; 1];
    let at = physical + 5 * 4096 + 77;
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    drop(f);

    let bad = cowcrypt(bin, &["scrub", img]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("/docs/report offset 20480"), "{out}");
    let mut mount = scratch.mount(bin);
    let bad = cowcrypt(bin, &["scrub", dir.to_str().unwrap()]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("/docs/report offset 20480"), "{out}");
    mount.unmount().expect("unmount");
}
