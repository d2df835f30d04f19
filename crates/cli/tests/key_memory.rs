//! A master key leaves no copy of itself in the daemon. Once `cowcrypt key add` has returned,
//! the daemon's memory (every mapping it can read: heap, thread stacks, the FUSE request
//! buffers) holds neither a piece of the key's bytes nor of the text the key crossed the
//! control channel in, while the key is in use and after it is removed. The daemon keeps only
//! the key's HKDF state, as Linux does.
//!
//! Needs root and /dev/fuse; skipped with a message otherwise, except under CI=true.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use common::{ok, run};
use fsx::harness::Scratch;

/// Bytes of the shortest piece of the key looked for.
const PIECE: usize = 16;
/// Key bytes in the shortest piece of its text looked for.
const TEXT_PIECE: usize = 8;

/// A piece of a key looked for, and which form of the key it is from.
struct Piece {
    kind: &'static str,
    bytes: Vec<u8>,
}

/// Every piece of `key` worth finding: each `PIECE` bytes of it ("bytes"), and each
/// `TEXT_PIECE` of its bytes as the control channel writes them, decimal and comma-separated
/// ("text").
fn pieces_of(key: &[u8]) -> Vec<Piece> {
    let numbers: Vec<String> = key.iter().map(u8::to_string).collect();
    let raw = key.windows(PIECE).map(|w| Piece {
        kind: "bytes",
        bytes: w.to_vec(),
    });
    let text = numbers.windows(TEXT_PIECE).map(|w| Piece {
        kind: "text",
        bytes: w.join(",").into_bytes(),
    });
    raw.chain(text).collect()
}

/// The offsets in `data` where one of `pieces` starts, each with that piece (a table of their
/// first two bytes keeps the scan of a few hundred MiB quick).
fn find_pieces<'p>(data: &[u8], pieces: &'p [Piece]) -> Vec<(usize, &'p Piece)> {
    let mut first_two = vec![false; 1 << 16];
    for p in pieces {
        first_two[usize::from(p.bytes[0]) << 8 | usize::from(p.bytes[1])] = true;
    }
    let mut found = Vec::new();
    for i in 0..data.len().saturating_sub(1) {
        if first_two[usize::from(data[i]) << 8 | usize::from(data[i + 1])]
            && let Some(piece) = pieces.iter().find(|p| data[i..].starts_with(&p.bytes))
        {
            found.push((i, piece));
        }
    }
    found
}

/// Where in process `pid`'s readable memory a piece of `key` is: "bytes|text mapping+offset"
/// each.
fn copies_in(pid: u32, key: &[u8]) -> Vec<String> {
    let pieces = pieces_of(key);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut copies = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name = fields.get(5).copied().unwrap_or("[anonymous]");
        // The kernel's own pages, read-only to the process and never holding its data.
        if !fields[1].starts_with('r') || name.starts_with("[v") {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut data = vec![0u8; (end - start) as usize];
        // A mapping may go away or be unreadable (a guard page) meanwhile: skipped.
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut data).is_err() {
            continue;
        }
        for (at, piece) in find_pieces(&data, &pieces) {
            copies.push(format!("{} {name} {}+{at:#x}", piece.kind, fields[0]));
        }
    }
    copies
}

#[test]
fn a_master_key_leaves_no_copy_in_the_daemon() {
    let bin = Path::new(env!("CARGO_BIN_EXE_cowcrypt"));
    let Some(scratch) = Scratch::new(bin, "key_memory", "256M") else {
        return;
    };
    let random_key = || {
        let mut key = vec![0u8; 64];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .unwrap();
        key
    };
    let key = random_key();

    let mut m = scratch.mount(bin);
    let mnt = m.dir().to_path_buf();
    let pid = m.daemon_pid().expect("daemon");
    // The scan finds what the daemon holds: a decoy key's bytes and text, written as the
    // contents of a plaintext file, are in its write buffers.
    let decoy = random_key();
    let decoy_text = decoy
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",");
    // Inside a block, away from the bytes an allocator writes into memory it frees.
    let decoy_file = [&[0u8; 1024][..], &decoy, decoy_text.as_bytes()].concat();
    std::fs::write(mnt.join("decoy"), decoy_file).unwrap();
    let found = copies_in(pid, &decoy);
    for kind in ["bytes", "text"] {
        let n = found.iter().filter(|c| c.starts_with(kind)).count();
        assert!(n > 0, "the decoy's {kind} not found: {found:?}");
    }

    // Straight after adding, before any other request could overwrite what it left.
    let mnt_arg = mnt.to_str().unwrap();
    let id = ok(run(bin, &["key", "add", mnt_arg], Some(&key)));
    let copies = copies_in(pid, &key);
    assert!(copies.is_empty(), "key added: copies at {copies:?}");
    std::fs::create_dir(mnt.join("enc")).unwrap();
    let enc = mnt.join("enc");
    ok(run(
        bin,
        &["encrypt", enc.to_str().unwrap(), "--key", &id],
        None,
    ));
    // Use the key: names and contents encrypted and read back, on every worker.
    for i in 0..64 {
        std::fs::write(mnt.join(format!("enc/f{i}")), vec![i as u8; 256 << 10]).unwrap();
    }
    for i in 0..64 {
        let got = std::fs::read(mnt.join(format!("enc/f{i}"))).unwrap();
        assert_eq!(got, vec![i as u8; 256 << 10]);
    }
    let copies = copies_in(pid, &key);
    assert!(copies.is_empty(), "key in use: copies at {copies:?}");

    let removed = ok(run(bin, &["key", "remove", mnt_arg, &id], None));
    assert!(removed.ends_with("removed"), "{removed}");
    let copies = copies_in(pid, &key);
    assert!(copies.is_empty(), "key removed: copies at {copies:?}");
    m.unmount().unwrap();
}
