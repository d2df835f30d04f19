//! Byte-for-byte agreement with the Linux kernel's fscrypt.
//!
//! The vectors come from `../shared/tools/kernel-vectors`, which formats an ext4 image, lets the
//! running kernel encrypt files, names and symlinks under every policy it accepts, and reads the
//! results back from the raw image without the key. Two sources are checked:
//! - the vectors file committed in `tests/data/` (always; no privileges needed), and
//! - a fresh run against the live kernel (needs root and a loop device). With `CI=true` a missing
//!   requirement fails the test instead of skipping it. The live run also mounts the image
//!   without the key, so the kernel's own no-key names are compared with ours.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use fscrypt::contents::{FsParams, LinuxFileContents};
use fscrypt::context::InodeContext;
use fscrypt::inode::filenames_cipher;
use fscrypt::nokey::{self, NoKeyName};
use fscrypt::symlink;
use fscrypt::{MasterKey, PolicyV2};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("bad hex {s:?}: {e}"))
}

fn arr16(s: &str) -> [u8; 16] {
    hex(s).try_into().expect("16 bytes")
}

/// The plaintext rule of the vectors ("content_generator"): zero outside the segments, inside
/// them byte p = SHA-256(seed || be64(p / 32))[p % 32].
#[allow(clippy::big_endian_bytes)] // the generator defines this counter as big-endian
fn plaintext(contents: &Value) -> Vec<u8> {
    let size = contents["size"].as_u64().unwrap() as usize;
    let mut out = vec![0u8; size];
    let seed = contents["seed"].as_str().unwrap_or("");
    for seg in contents["segments"].as_array().unwrap() {
        let off = seg[0].as_u64().unwrap() as usize;
        let len = seg[1].as_u64().unwrap() as usize;
        for (p, byte) in out.iter_mut().enumerate().skip(off).take(len) {
            let mut h = Sha256::new();
            h.update(seed.as_bytes());
            h.update(((p / 32) as u64).to_be_bytes());
            *byte = h.finalize()[p % 32];
        }
    }
    out
}

/// Per directory: each entry's on-disk name ciphertext and, for a symlink, its target blob.
type DiskNames = BTreeMap<String, Vec<(Vec<u8>, Option<Vec<u8>>)>>;

/// What one vectors file proved, for the final assertions.
#[derive(Default, Debug)]
struct Counts {
    policies: usize,
    data_units: usize,
    files_hashed: usize,
    names: usize,
    symlinks: usize,
    nokey_names: usize,
    nokey_symlinks: usize,
    paddings: std::collections::BTreeSet<u8>,
    schemes: std::collections::BTreeSet<u8>,
    data_unit_sizes: std::collections::BTreeSet<u64>,
}

struct Vectors {
    master: MasterKey,
    fs: FsParams,
    json: Value,
}

impl Vectors {
    fn load(json: Value) -> Self {
        let master = MasterKey::from_raw(&hex(json["master_key"].as_str().unwrap())).unwrap();
        assert_eq!(
            master.identifier().to_string(),
            json["key_identifier"].as_str().unwrap(),
            "key identifier differs from the kernel's"
        );
        let bs = json["fs"]["block_size"].as_u64().unwrap();
        let fs = FsParams {
            uuid: arr16(json["fs"]["uuid_hex"].as_str().unwrap()),
            block_size_bits: bs.trailing_zeros() as u8,
        };
        Vectors { master, fs, json }
    }

    fn policies(&self) -> impl Iterator<Item = &Value> {
        self.json["policies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| matches!(p["status"].as_str(), Some("ok") | Some("partial")))
    }

    /// Checks every contents unit, name and symlink of every policy the kernel accepted.
    fn check_all(&self) -> Counts {
        let mut counts = Counts::default();
        for pol in self.policies() {
            let name = pol["name"].as_str().unwrap();
            let policy = PolicyV2::decode(&hex(pol["policy_ex"].as_str().unwrap()))
                .unwrap_or_else(|e| panic!("{name}: policy: {e}"));
            let dir_ctx = InodeContext::decode(&hex(pol["dir"]["context"].as_str().unwrap()))
                .unwrap_or_else(|e| panic!("{name}: dir context: {e}"));
            assert_eq!(dir_ctx.policy(), &policy, "{name}");
            counts.policies += 1;
            counts.paddings.insert(policy.padding().bytes() as u8);
            counts.schemes.insert(policy.flags() & 0x1c);
            // Parents by inode number: the policy directory and its subdirectories.
            let mut dirs: BTreeMap<u64, InodeContext> = BTreeMap::new();
            dirs.insert(pol["dir"]["ino"].as_u64().unwrap(), dir_ctx);
            for obj in pol["objects"].as_array().unwrap() {
                if obj["type"] == "dir" && obj.get("error").is_none() {
                    let ctx = InodeContext::decode(&hex(obj["context"].as_str().unwrap())).unwrap();
                    dirs.insert(obj["ino"].as_u64().unwrap(), ctx);
                }
            }
            for obj in pol["objects"].as_array().unwrap() {
                if obj.get("error").is_some() {
                    continue;
                }
                let path = obj["path"].as_str().unwrap();
                let ino = obj["ino"].as_u64().unwrap();
                let ctx = InodeContext::decode(&hex(obj["context"].as_str().unwrap()))
                    .unwrap_or_else(|e| panic!("{path}: context: {e}"));
                assert_eq!(ctx.policy(), &policy, "{path}: inherited policy");
                self.check_name(obj, &dirs, path);
                counts.names += 1;
                match obj["type"].as_str().unwrap() {
                    "file" => {
                        let (units, hashed) = self.check_contents(obj, &ctx, ino, path);
                        counts.data_units += units;
                        counts.files_hashed += hashed as usize;
                        counts
                            .data_unit_sizes
                            .insert(obj["contents"]["data_unit_size"].as_u64().unwrap());
                    }
                    "symlink" => {
                        self.check_symlink(obj, &ctx, ino, path);
                        counts.symlinks += 1;
                    }
                    _ => {}
                }
            }
        }
        counts
    }

    fn check_name(&self, obj: &Value, dirs: &BTreeMap<u64, InodeContext>, path: &str) {
        let parent_ino = obj["parent_ino"].as_u64().unwrap();
        let parent = dirs
            .get(&parent_ino)
            .unwrap_or_else(|| panic!("{path}: parent {parent_ino} unknown"));
        let cipher = filenames_cipher(&self.master, parent, parent_ino, &self.fs).unwrap();
        let plain = hex(obj["name"]["hex"].as_str().unwrap());
        let expected = hex(obj["name"]["ciphertext_hex"].as_str().unwrap());
        let ours = cipher
            .encrypt(&plain, parent.policy().padding(), fscrypt::fname::NAME_MAX)
            .unwrap();
        assert_eq!(hex::encode(&ours), hex::encode(&expected), "{path}: name");
        assert_eq!(
            cipher.decrypt(&expected).unwrap(),
            plain,
            "{path}: name back"
        );
    }

    /// Returns (units compared byte for byte, whether the whole-file hash was compared).
    fn check_contents(
        &self,
        obj: &Value,
        ctx: &InodeContext,
        ino: u64,
        path: &str,
    ) -> (usize, bool) {
        let c = &obj["contents"];
        let file = LinuxFileContents::new(&self.master, ctx, ino, &self.fs).unwrap();
        let du = file.data_unit_size();
        assert_eq!(du as u64, c["data_unit_size"].as_u64().unwrap(), "{path}");
        let plain = plaintext(c);
        assert_eq!(
            hex::encode(Sha256::digest(&plain)),
            c["plaintext_sha256"].as_str().unwrap(),
            "{path}: plaintext generator"
        );
        let mut all_ct = Sha256::new();
        let mut compared = 0;
        for unit in c["units"].as_array().unwrap() {
            let index = unit["index"].as_u64().unwrap();
            let start = (index as usize) * du;
            let mut buf = vec![0u8; du];
            if start < plain.len() {
                let end = plain.len().min(start + du);
                buf[..end - start].copy_from_slice(&plain[start..end]);
            }
            let want_plain = buf.clone();
            file.encrypt_unit(index, &mut buf).unwrap();
            all_ct.update(&buf);
            if let Some(ct) = unit["ciphertext"].as_str() {
                let ct = hex(ct);
                // The vectors store whole blocks; a block holds several data units when they are
                // smaller, listed separately, so compare exactly one data unit.
                assert_eq!(
                    hex::encode(&buf),
                    hex::encode(&ct[..du]),
                    "{path}: unit {index}"
                );
                let mut back = ct[..du].to_vec();
                file.decrypt_unit(index, &mut back).unwrap();
                assert_eq!(back, want_plain, "{path}: unit {index} decrypts");
                compared += 1;
            }
        }
        let hashed = if c["units"].as_array().unwrap().is_empty() {
            false
        } else {
            assert_eq!(
                hex::encode(all_ct.finalize()),
                c["ciphertext_sha256"].as_str().unwrap(),
                "{path}: hash of all ciphertext"
            );
            true
        };
        (compared, hashed)
    }

    fn check_symlink(&self, obj: &Value, ctx: &InodeContext, ino: u64, path: &str) {
        let s = &obj["symlink"];
        let cipher = filenames_cipher(&self.master, ctx, ino, &self.fs).unwrap();
        let target = hex(s["target"]["hex"].as_str().unwrap());
        let disk = hex(s["disk_hex"].as_str().unwrap());
        let max = 1usize << self.fs.block_size_bits;
        let ours = symlink::encrypt_target(&cipher, &target, ctx.policy().padding(), max).unwrap();
        assert_eq!(hex::encode(&ours), hex::encode(&disk), "{path}: symlink");
        assert_eq!(
            symlink::decrypt_target(&cipher, &disk, max).unwrap(),
            target,
            "{path}: symlink back"
        );
    }

    /// The on-disk ciphertext of each name, and of each symlink's target blob, by directory.
    fn disk_names(&self) -> DiskNames {
        let mut out = DiskNames::new();
        for pol in self.policies() {
            for obj in pol["objects"].as_array().unwrap() {
                if obj.get("error").is_some() {
                    continue;
                }
                let path = obj["path"].as_str().unwrap();
                let parent = Path::new(path)
                    .parent()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let link = obj["symlink"]["disk_hex"].as_str().map(hex);
                out.entry(parent)
                    .or_default()
                    .push((hex(obj["name"]["ciphertext_hex"].as_str().unwrap()), link));
            }
        }
        out
    }
}

fn assert_coverage(c: &Counts, what: &str) {
    eprintln!("{what}: {c:?}");
    assert!(c.policies >= 10, "{what}: policies {}", c.policies);
    assert!(c.data_units >= 100, "{what}: data units {}", c.data_units);
    assert!(c.names >= 200, "{what}: names {}", c.names);
    assert!(c.symlinks >= 20, "{what}: symlinks {}", c.symlinks);
    assert_eq!(c.paddings.len(), 4, "{what}: every padding");
    assert!(
        c.schemes.contains(&0x08) && c.schemes.contains(&0x10),
        "{what}: IV_INO_LBLK_*"
    );
    for du in [512, 1024, 4096] {
        assert!(
            c.data_unit_sizes.contains(&du),
            "{what}: data unit size {du}"
        );
    }
}

fn committed_vectors() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kernel-vectors.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[test]
fn committed_kernel_vectors() {
    let v = Vectors::load(committed_vectors());
    let counts = v.check_all();
    assert_coverage(&counts, "committed vectors");
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips (or, under CI, fails) when the live kernel cannot be used.
fn unavailable(why: &str) {
    if in_ci() {
        panic!("live kernel vectors are required under CI=true: {why}");
    }
    eprintln!("SKIPPED live kernel vectors: {why}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// The kernel vector tool: `COWCRYPT_KERNEL_VECTORS` when set (a checkout that does not sit
/// beside `shared/`, such as a worktree), else `shared/tools/` beside the checkout.
fn tool() -> PathBuf {
    match std::env::var_os("COWCRYPT_KERNEL_VECTORS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/tools/kernel-vectors"),
    }
}

/// Unmounts on drop, so a failing assertion never leaves a mount behind.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An entry the kernel lists without the key: its no-key name, and for a symlink what readlink
/// returns without the key.
type Listed = (Vec<u8>, Option<Vec<u8>>);

/// The names the kernel lists without the key, per policy directory (relative paths).
fn kernel_nokey_listing(
    image: &Path,
    dirs: &[String],
    mnt: &Path,
) -> BTreeMap<String, Vec<Listed>> {
    std::fs::create_dir_all(mnt).unwrap();
    let status = Command::new("mount")
        .args(["-t", "ext4", "-o", "ro,loop"])
        .arg(image)
        .arg(mnt)
        .status()
        .unwrap();
    assert!(status.success(), "mount of the kernel's image failed");
    let _guard = Mounted(mnt.to_path_buf());
    let mut out = BTreeMap::new();
    for d in dirs {
        let mut names = Vec::new();
        // A directory reached through a no-key name: find it by listing its parent.
        let full = resolve_nokey_path(mnt, d);
        for e in std::fs::read_dir(&full).unwrap() {
            use std::os::unix::ffi::OsStrExt;
            let e = e.unwrap();
            let link = if e.file_type().unwrap().is_symlink() {
                Some(
                    std::fs::read_link(e.path())
                        .unwrap()
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                )
            } else {
                None
            };
            names.push((e.file_name().as_bytes().to_vec(), link));
        }
        out.insert(d.clone(), names);
    }
    out
}

/// `p_x/d_sub` has an encrypted component; without the key it only exists under its no-key
/// name, so walk down choosing the one subdirectory.
fn resolve_nokey_path(mnt: &Path, rel: &str) -> PathBuf {
    let mut parts = rel.split('/');
    let mut cur = mnt.join(parts.next().unwrap());
    for _ in parts {
        let sub: Vec<_> = std::fs::read_dir(&cur)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(sub.len(), 1, "one subdirectory under {}", cur.display());
        cur = sub[0].clone();
    }
    cur
}

#[test]
fn live_kernel_vectors() {
    if !is_root() {
        return unavailable("not root");
    }
    if !tool().exists() {
        return unavailable(&format!("{} is missing", tool().display()));
    }
    let work = tempfile::tempdir().unwrap();
    let out_json = work.path().join("vectors.json");
    let out = Command::new(tool())
        .arg("--out")
        .arg(&out_json)
        .arg("--keep")
        .arg("--workdir")
        .arg(work.path())
        .output()
        .unwrap();
    if out.status.code() == Some(77) {
        return unavailable(&String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        out.status.success(),
        "kernel-vectors failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = Vectors::load(serde_json::from_slice(&std::fs::read(&out_json).unwrap()).unwrap());
    let mut counts = v.check_all();

    // No-key names: the kernel's readdir without the key against our encoder.
    let kept = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("kv-"))
        .expect("kernel-vectors kept its work dir");
    let disk = v.disk_names();
    let dirs: Vec<String> = disk.keys().cloned().collect();
    let listing = kernel_nokey_listing(&kept.join("fs.img"), &dirs, &work.path().join("mnt"));
    for (dir, disk_names) in &disk {
        let listed = &listing[dir];
        assert_eq!(listed.len(), disk_names.len(), "{dir}: entry count");
        let max_symlink = 1usize << v.fs.block_size_bits;
        for (shown, link) in listed {
            let nk = NoKeyName::decode(shown).unwrap_or_else(|| {
                panic!(
                    "{dir}: kernel no-key name {:?} does not decode",
                    String::from_utf8_lossy(shown)
                )
            });
            let matching: Vec<_> = disk_names.iter().filter(|(d, _)| nk.matches(d)).collect();
            assert_eq!(matching.len(), 1, "{dir}: exactly one on-disk name matches");
            let (disk_name, disk_link) = matching[0];
            let ours = nokey::encode(disk_name, nk.hash, nk.minor_hash);
            assert_eq!(ours.as_bytes(), &shown[..], "{dir}: no-key name");
            counts.nokey_names += 1;
            if let Some(link) = link {
                let blob = disk_link
                    .as_ref()
                    .expect("the kernel lists a symlink we know");
                let ours = symlink::nokey_target(blob, max_symlink).unwrap();
                assert_eq!(ours.as_bytes(), &link[..], "{dir}: no-key symlink target");
                counts.nokey_symlinks += 1;
            }
        }
    }
    assert_coverage(&counts, "live kernel");
    assert!(
        counts.nokey_names >= 200,
        "no-key names {}",
        counts.nokey_names
    );
    assert!(
        counts.nokey_symlinks >= 20,
        "no-key symlinks {}",
        counts.nokey_symlinks
    );
    let _ = std::fs::remove_dir_all(&kept);
}
