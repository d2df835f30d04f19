//! The store's B-tree against redb, in one process, doing the same work with the same
//! durability: random inserts of 16-byte keys and 100-byte values with a durable commit every
//! 10k operations (the store's commit flushes; redb commits with `Durability::Immediate`), then
//! random point lookups, then range scans of 100 items. The two take turns chunk by chunk
//! within each phase, so a busy shared machine slows both alike. Both use a file in the same directory
//! under the target directory (on the build's disk, not tmpfs) and a node/page cache of the same
//! bound; the store's cache bounds its decoded nodes' memory in bytes, printed at the end.
//!
//! `cargo bench -p cowcrypt-store --bench btree_vs_redb`; `COWCRYPT_BENCH_OPS` sets the number
//! of operations per phase (default 1,000,000), `COWCRYPT_BENCH_NODE` the store's node size
//! (default 16384, the filesystem's default), `COWCRYPT_BENCH_ONLY` (`store` or `redb`) runs one
//! side only and `COWCRYPT_BENCH_CACHE_MIB` changes both caches' bound, for profiling.

use std::sync::Arc;
use std::time::Instant;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use store::crash::SplitMix64;
use store::{FileDevice, Key, MkfsOptions, Store};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");
const TREE: u64 = 256;
const COMMIT_EVERY: usize = 10_000;
const SCAN_LEN: usize = 100;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The cache bound of both: `COWCRYPT_BENCH_CACHE_MIB`, default 64 MiB.
fn cache_bytes() -> usize {
    env("COWCRYPT_BENCH_CACHE_MIB", 64) << 20
}

fn key_of(k: &[u8; 16]) -> Key {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&k[..8]);
    b.copy_from_slice(&k[8..]);
    // Big-endian halves keep the byte order of the 16-byte key, so both stores sort alike.
    #[allow(clippy::big_endian_bytes)]
    Key::new(u64::from_be_bytes(a), 0, u64::from_be_bytes(b))
}

fn workload(n: usize) -> (Vec<[u8; 16]>, Vec<u8>) {
    let mut rng = SplitMix64::new(42);
    let keys = (0..n)
        .map(|_| {
            let mut k = [0u8; 16];
            rng.fill(&mut k);
            k
        })
        .collect();
    let mut value = vec![0u8; 100];
    rng.fill(&mut value);
    (keys, value)
}

fn lookup_order(n: usize) -> Vec<usize> {
    let mut rng = SplitMix64::new(7);
    (0..n).map(|_| rng.below(n as u64) as usize).collect()
}

/// Accumulated seconds and operations of one engine in one phase.
#[derive(Default, Clone, Copy)]
struct Tally {
    secs: f64,
    ops: usize,
}

impl Tally {
    fn time(&mut self, ops: usize, f: impl FnOnce()) {
        let start = Instant::now();
        f();
        self.secs += start.elapsed().as_secs_f64();
        self.ops += ops;
    }

    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

const PHASES: [&str; 3] = ["random insert", "point lookup", "range scan (items)"];

fn open_store(dir: &std::path::Path, n: usize, node: u32) -> Store {
    // Room for the tree, its copies between commits and pinned space: sparse, so cheap.
    let size = ((n as u64 * 600).max(256 << 20)).next_multiple_of(1 << 20);
    let dev = Arc::new(FileDevice::create(&dir.join("store.img"), size).expect("image"));
    let opts = MkfsOptions {
        node_size: node,
        metadata_percent: 80,
        cache_bytes: cache_bytes(),
        ..MkfsOptions::default()
    };
    let store = Store::create(dev, opts).expect("mkfs");
    let mut t = store.begin().expect("begin");
    t.create_tree(TREE).expect("tree");
    t.commit().expect("commit");
    store
}

fn open_redb(dir: &std::path::Path) -> Database {
    Database::builder()
        .set_cache_size(cache_bytes())
        .create(dir.join("redb.db"))
        .expect("redb")
}

fn main() {
    let n = env("COWCRYPT_BENCH_OPS", 1_000_000);
    let node = env("COWCRYPT_BENCH_NODE", 16384) as u32;
    let only = std::env::var("COWCRYPT_BENCH_ONLY").unwrap_or_default();
    let (run_store, run_redb) = (only != "redb", only != "store");
    // Same directory for both, on the disk the build lives on.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (keys, value) = workload(n);
    println!(
        "{n} ops per phase, 16-byte keys, 100-byte values, commit+fsync every {COMMIT_EVERY}, \
         store node size {node}, cache {} MiB each, files in {}",
        cache_bytes() >> 20,
        dir.path().display()
    );
    let store = run_store.then(|| open_store(dir.path(), n, node));
    let db = run_redb.then(|| open_redb(dir.path()));
    // [phase][engine]. The engines take turns chunk by chunk (one commit's worth of inserts,
    // 10k lookups, 100 scans), so noise from a shared machine falls on both alike.
    let mut t = [[Tally::default(); 2]; 3];

    for chunk in keys.chunks(COMMIT_EVERY) {
        if let Some(store) = &store {
            t[0][0].time(chunk.len(), || {
                let mut w = store.begin().expect("begin");
                for k in chunk {
                    w.insert(TREE, key_of(k), &value).expect("insert");
                }
                w.commit().expect("commit");
            });
        }
        if let Some(db) = &db {
            t[0][1].time(chunk.len(), || {
                let mut w = db.begin_write().expect("begin");
                // fsync before the commit returns, like the store's commit.
                w.set_durability(Durability::Immediate).expect("durability");
                {
                    let mut tbl = w.open_table(TABLE).expect("table");
                    for k in chunk {
                        tbl.insert(&k[..], &value[..]).expect("insert");
                    }
                }
                w.commit().expect("commit");
            });
        }
    }

    let order = lookup_order(n);
    let sr = store.as_ref().map(|s| s.read());
    let rr = db.as_ref().map(|d| d.begin_read().expect("read"));
    let rt = rr.as_ref().map(|r| r.open_table(TABLE).expect("table"));
    for part in order.chunks(COMMIT_EVERY) {
        if let Some(r) = &sr {
            t[1][0].time(part.len(), || {
                for &i in part {
                    let v = r.get(TREE, &key_of(&keys[i])).expect("get");
                    assert_eq!(v.as_deref().map(<[u8]>::len), Some(100));
                }
            });
        }
        if let Some(r) = &rt {
            t[1][1].time(part.len(), || {
                for &i in part {
                    let v = r.get(&keys[i][..]).expect("get").expect("present");
                    assert_eq!(v.value().to_vec().len(), 100);
                }
            });
        }
    }

    let scans: Vec<usize> = order.iter().take(n / SCAN_LEN).copied().collect();
    for part in scans.chunks(100) {
        if let Some(r) = &sr {
            let mut items = 0;
            t[2][0].time(0, || {
                for &i in part {
                    for x in r
                        .range(TREE, key_of(&keys[i])..)
                        .expect("range")
                        .take(SCAN_LEN)
                    {
                        let (_, v) = x.expect("scan");
                        items += v.len() / 100;
                    }
                }
            });
            t[2][0].ops += items;
        }
        if let Some(r) = &rt {
            let mut items = 0;
            t[2][1].time(0, || {
                for &i in part {
                    for x in r.range(&keys[i][..]..).expect("range").take(SCAN_LEN) {
                        let (_, v) = x.expect("scan");
                        items += v.value().to_vec().len() / 100;
                    }
                }
            });
            t[2][1].ops += items;
        }
    }
    drop((sr, rt, rr));
    if let Some(store) = &store {
        println!(
            "store: node cache holds {} bytes of decoded nodes (bound {})",
            store.cache_bytes(),
            cache_bytes()
        );
        assert!(store.cache_bytes() <= cache_bytes(), "cache over its bound");
    }
    println!();
    println!("| phase | store (ops/s) | redb (ops/s) | store/redb |");
    println!("|---|---:|---:|---:|");
    for (what, [s, r]) in PHASES.iter().zip(t) {
        let (a, b) = (s.rate(), r.rate());
        println!("| {what} | {a:.0} | {b:.0} | {:.2} |", a / b);
    }
}
