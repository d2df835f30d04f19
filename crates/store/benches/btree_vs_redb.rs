//! The store's B-tree against redb, in one process, doing the same work with the same
//! durability: random inserts of 16-byte keys and 100-byte values with a durable commit every
//! 10k operations (the store's commit flushes; redb commits with `Durability::Immediate`), then
//! random point lookups, then range scans of 100 items. Both use a file in the same directory
//! under the target directory (on the build's disk, not tmpfs) and a node/page cache of the same
//! bound; the store's cache bounds its decoded nodes' memory in bytes, printed at the end.
//!
//! `cargo bench -p cowcrypt-store --bench btree_vs_redb`; `COWCRYPT_BENCH_OPS` sets the number
//! of operations per phase (default 1,000,000), `COWCRYPT_BENCH_NODE` the store's node size
//! (default 16384, the filesystem's default), `COWCRYPT_BENCH_ONLY` (`store` or `redb`) runs one
//! side only, for profiling.

use std::sync::Arc;
use std::time::Instant;

use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use store::crash::SplitMix64;
use store::{FileDevice, Key, MkfsOptions, Store};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bench");
const TREE: u64 = 256;
const COMMIT_EVERY: usize = 10_000;
const SCAN_LEN: usize = 100;
const CACHE: usize = 64 << 20;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

struct Rates {
    insert: f64,
    lookup: f64,
    scan: f64,
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

fn bench_store(dir: &std::path::Path, keys: &[[u8; 16]], value: &[u8], node: u32) -> Rates {
    let n = keys.len();
    // Room for the tree, its copies between commits and pinned space: sparse, so cheap.
    let size = ((n as u64 * 600).max(256 << 20)).next_multiple_of(1 << 20);
    let dev = Arc::new(FileDevice::create(&dir.join("store.img"), size).expect("image"));
    let opts = MkfsOptions {
        node_size: node,
        metadata_percent: 80,
        cache_bytes: CACHE,
        ..MkfsOptions::default()
    };
    let store = Store::create(dev, opts).expect("mkfs");
    let mut t = store.begin().expect("begin");
    t.create_tree(TREE).expect("tree");
    t.commit().expect("commit");

    let start = Instant::now();
    for chunk in keys.chunks(COMMIT_EVERY) {
        let mut t = store.begin().expect("begin");
        for k in chunk {
            t.insert(TREE, key_of(k), value).expect("insert");
        }
        t.commit().expect("commit");
    }
    let insert = n as f64 / start.elapsed().as_secs_f64();

    let order = lookup_order(n);
    let r = store.read();
    let start = Instant::now();
    for &i in &order {
        let v = r.get(TREE, &key_of(&keys[i])).expect("get");
        assert_eq!(v.as_deref().map(<[u8]>::len), Some(100));
    }
    let lookup = n as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut items = 0;
    for &i in order.iter().take(n / SCAN_LEN) {
        for x in r
            .range(TREE, key_of(&keys[i])..)
            .expect("range")
            .take(SCAN_LEN)
        {
            let (_, v) = x.expect("scan");
            items += v.len() / 100;
        }
    }
    let scan = items as f64 / start.elapsed().as_secs_f64();
    println!(
        "store: node cache holds {} bytes of decoded nodes (bound {CACHE})",
        store.cache_bytes()
    );
    assert!(store.cache_bytes() <= CACHE, "cache over its bound");
    Rates {
        insert,
        lookup,
        scan,
    }
}

fn bench_redb(dir: &std::path::Path, keys: &[[u8; 16]], value: &[u8]) -> Rates {
    let n = keys.len();
    let db = Database::builder()
        .set_cache_size(CACHE)
        .create(dir.join("redb.db"))
        .expect("redb");
    let start = Instant::now();
    for chunk in keys.chunks(COMMIT_EVERY) {
        let mut w = db.begin_write().expect("begin");
        w.set_durability(Durability::Immediate).expect("durability");
        {
            let mut t = w.open_table(TABLE).expect("table");
            for k in chunk {
                t.insert(&k[..], value).expect("insert");
            }
        }
        // fsync before the commit returns, like the store's commit.
        w.commit().expect("commit");
    }
    let insert = n as f64 / start.elapsed().as_secs_f64();

    let order = lookup_order(n);
    let r = db.begin_read().expect("read");
    let t = r.open_table(TABLE).expect("table");
    let start = Instant::now();
    for &i in &order {
        let v = t.get(&keys[i][..]).expect("get").expect("present");
        assert_eq!(v.value().to_vec().len(), 100);
    }
    let lookup = n as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let mut items = 0;
    for &i in order.iter().take(n / SCAN_LEN) {
        for x in t.range(&keys[i][..]..).expect("range").take(SCAN_LEN) {
            let (_, v) = x.expect("scan");
            items += v.value().to_vec().len() / 100;
        }
    }
    let scan = items as f64 / start.elapsed().as_secs_f64();
    Rates {
        insert,
        lookup,
        scan,
    }
}

fn main() {
    let n = env("COWCRYPT_BENCH_OPS", 1_000_000);
    let node = env("COWCRYPT_BENCH_NODE", 16384) as u32;
    let only = std::env::var("COWCRYPT_BENCH_ONLY").unwrap_or_default();
    // Same directory for both, on the disk the build lives on.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (keys, value) = workload(n);
    println!(
        "{n} ops per phase, 16-byte keys, 100-byte values, commit+fsync every {COMMIT_EVERY}, \
         store node size {node}, cache {} MiB each, files in {}",
        CACHE >> 20,
        dir.path().display()
    );
    let s = (only != "redb").then(|| bench_store(dir.path(), &keys, &value, node));
    let r = (only != "store").then(|| bench_redb(dir.path(), &keys, &value));
    println!();
    println!("| phase | store (ops/s) | redb (ops/s) | store/redb |");
    println!("|---|---:|---:|---:|");
    let pick = |x: &Option<Rates>, f: fn(&Rates) -> f64| x.as_ref().map_or(f64::NAN, f);
    for (what, f) in [
        ("random insert", (|r: &Rates| r.insert) as fn(&Rates) -> f64),
        ("point lookup", |r: &Rates| r.lookup),
        ("range scan (items)", |r: &Rates| r.scan),
    ] {
        let (a, b) = (pick(&s, f), pick(&r, f));
        println!("| {what} | {a:.0} | {b:.0} | {:.2} |", a / b);
    }
}
