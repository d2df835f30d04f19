//! AES-256-XTS over 4 KiB data units and per-extent key setup, with the fastest implementations
//! measured in the same run printed beside ours: aws-lc's `EVP_aes_256_xts` called directly, and
//! `openssl speed -evp aes-256-xts -bytes 4096`. A plain `Instant` harness: each figure is the
//! best of several timed rounds, the fairest single number on a shared machine. Under
//! `cargo test --benches` it runs one short round to prove it still works.
//!
//! Run: `cargo bench -p cowcrypt-fscrypt --bench xts`. `XTS_BENCH_SECONDS` sets the openssl run
//! length (default 3) and scales our rounds.

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use fscrypt::common::CryptCommon;
use fscrypt::extent::ExtentCryptInfo;
use fscrypt::hkdf::{CONTEXT_PER_EXTENT_ENC_KEY, HkdfKey};
use fscrypt::keyring::{Caller, Keyring};
use fscrypt::secret::Secret;
use fscrypt::xts::Aes256Xts;
use fscrypt::{ContentsMode, FilenamesMode, MasterKey, PolicyV2};

const UNIT: usize = 4096;

/// Runs `f` in rounds of about `round` and returns the best rate seen, in calls per second.
fn best_rate(rounds: u32, round: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up caches, frequency and lazy CPU-feature detection.
    let warm = Instant::now();
    while warm.elapsed() < round / 4 {
        f();
    }
    let mut best = 0.0f64;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < round {
            for _ in 0..16 {
                f();
            }
            calls += 16;
        }
        best = best.max(calls as f64 / start.elapsed().as_secs_f64());
    }
    best
}

/// Like [`best_rate`] for several contenders at once, alternating their rounds so that load
/// from other processes on a shared machine falls on all of them alike.
fn best_rates(rounds: u32, round: Duration, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    for f in fs.iter_mut() {
        let warm = Instant::now();
        while warm.elapsed() < round / 4 {
            f();
        }
    }
    let mut best = vec![0.0f64; fs.len()];
    for _ in 0..rounds {
        for (f, best) in fs.iter_mut().zip(&mut best) {
            let start = Instant::now();
            let mut calls = 0u64;
            while start.elapsed() < round {
                for _ in 0..16 {
                    f();
                }
                calls += 16;
            }
            *best = best.max(calls as f64 / start.elapsed().as_secs_f64());
        }
    }
    best
}

/// `openssl speed -evp aes-256-xts -bytes 4096 -seconds N`, parsed into bytes per second.
fn openssl_speed(seconds: u32) -> Result<f64, String> {
    let out = Command::new("openssl")
        .args(["speed", "-evp", "aes-256-xts", "-bytes", "4096", "-seconds"])
        .arg(seconds.to_string())
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl speed failed: {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The result line reads "AES-256-XTS    6752672.43k" (thousands of bytes per second).
    let line = text
        .lines()
        .find(|l| l.to_ascii_uppercase().starts_with("AES-256-XTS"))
        .ok_or_else(|| format!("no AES-256-XTS line in openssl output:\n{text}"))?;
    let field = line.split_whitespace().last().ok_or("empty result line")?;
    let kbytes: f64 = field
        .trim_end_matches('k')
        .parse()
        .map_err(|e| format!("cannot parse {field:?}: {e}"))?;
    Ok(kbytes * 1000.0)
}

/// aws-lc's `EVP_aes_256_xts` (VAES/AVX-512 assembly), one data unit per call: set the unit's IV
/// on a keyed context, then one update over the unit — what a filesystem would do per unit.
mod aws_lc {
    use aws_lc_sys as sys;

    /// A keyed AES-256-XTS context for one direction.
    pub struct Xts {
        ctx: *mut sys::EVP_CIPHER_CTX,
        encrypt: bool,
    }

    impl Xts {
        pub fn new(key: &[u8; 64], encrypt: bool) -> Xts {
            // SAFETY: plain constructor; a null result is checked below.
            let ctx = unsafe { sys::EVP_CIPHER_CTX_new() };
            assert!(!ctx.is_null(), "EVP_CIPHER_CTX_new failed");
            // SAFETY: `ctx` is a fresh context, the cipher is a static table, and `key` is the
            // 64 bytes EVP_aes_256_xts reads; no IV yet (null is allowed).
            let ok = unsafe {
                let cipher = sys::EVP_aes_256_xts();
                if encrypt {
                    sys::EVP_EncryptInit_ex(
                        ctx,
                        cipher,
                        std::ptr::null_mut(),
                        key.as_ptr(),
                        std::ptr::null(),
                    )
                } else {
                    sys::EVP_DecryptInit_ex(
                        ctx,
                        cipher,
                        std::ptr::null_mut(),
                        key.as_ptr(),
                        std::ptr::null(),
                    )
                }
            };
            assert_eq!(ok, 1, "EVP init failed");
            Xts { ctx, encrypt }
        }

        /// Encrypts or decrypts one data unit in place.
        pub fn unit(&mut self, iv: &[u8; 16], data: &mut [u8]) {
            let len = i32::try_from(data.len()).expect("a data unit fits in i32");
            let mut out_len = 0;
            // SAFETY: `ctx` is keyed for this direction; the IV is 16 readable bytes; EVP allows
            // in == out, and both point at `len` valid bytes that we hold exclusively.
            let ok = unsafe {
                let null_cipher = std::ptr::null();
                let null_engine = std::ptr::null_mut();
                let null_key = std::ptr::null();
                let p = data.as_mut_ptr();
                if self.encrypt {
                    sys::EVP_EncryptInit_ex(
                        self.ctx,
                        null_cipher,
                        null_engine,
                        null_key,
                        iv.as_ptr(),
                    ) == 1
                        && sys::EVP_EncryptUpdate(self.ctx, p, &mut out_len, p, len) == 1
                } else {
                    sys::EVP_DecryptInit_ex(
                        self.ctx,
                        null_cipher,
                        null_engine,
                        null_key,
                        iv.as_ptr(),
                    ) == 1
                        && sys::EVP_DecryptUpdate(self.ctx, p, &mut out_len, p, len) == 1
                }
            };
            assert!(ok && out_len == len, "aws-lc XTS failed");
        }
    }

    impl Drop for Xts {
        fn drop(&mut self) {
            // SAFETY: `ctx` came from EVP_CIPHER_CTX_new and is freed exactly once.
            unsafe { sys::EVP_CIPHER_CTX_free(self.ctx) }
        }
    }
}

fn gbps(bytes_per_sec: f64) -> f64 {
    bytes_per_sec / 1e9
}

/// fscrypt's default IV: le64(index) || 0^8.
fn default_iv(index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&index.to_le_bytes());
    iv
}

/// Units per `*_data_units` call: 128 KiB, a typical FUSE write, still in L2.
const UNITS_PER_CALL: usize = 32;

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not. Under `cargo test` run
    // one short round only and skip openssl, to prove the bench still works.
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds: u32 = std::env::var("XTS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (rounds, round) = if quick {
        (1, Duration::from_millis(20))
    } else {
        (5, Duration::from_millis(200 * u64::from(seconds)))
    };

    let mut key_bytes: [u8; 64] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
    let key_copy = key_bytes;
    let key = Secret::new(&mut key_bytes);
    let xts = Aes256Xts::new(&key);
    let pure = Aes256Xts::new_pure_rust(&key);
    let iv = [0x11u8; 16];

    if quick {
        println!("(quick run, not under `cargo bench`: the figures below are not measurements)");
    }
    println!("AES-256-XTS, 4 KiB data units, single core, GB/s (best of {rounds} rounds)");
    let mut enc = aws_lc::Xts::new(&key_copy, true);
    let mut dec = aws_lc::Xts::new(&key_copy, false);
    let mut enc_many = aws_lc::Xts::new(&key_copy, true);
    let mut dec_many = aws_lc::Xts::new(&key_copy, false);
    {
        // Same answer as ours, or the comparison means nothing.
        let (mut a, mut b) = (vec![0x3cu8; UNIT], vec![0x3cu8; UNIT]);
        enc.unit(&iv, &mut a);
        pure.encrypt(&iv, &mut b).unwrap();
        assert_eq!(a, b, "aws-lc and the pure-Rust engine disagree");
    }
    let many = UNITS_PER_CALL * UNIT;
    let (mut u1, mut u2, mut u3, mut u4) = (
        vec![1u8; UNIT],
        vec![2u8; UNIT],
        vec![3u8; UNIT],
        vec![4u8; UNIT],
    );
    let (mut m1, mut m2, mut m3, mut m4) = (
        vec![1u8; many],
        vec![2u8; many],
        vec![3u8; many],
        vec![4u8; many],
    );
    // Ours and aws-lc called directly, doing the same work on the same amount of data: one unit
    // per call, and 32 consecutive units (ours in one `*_data_units` call, aws-lc unit by unit).
    let rates = best_rates(
        rounds,
        round,
        &mut [
            &mut || xts.encrypt(black_box(&iv), black_box(&mut u1)).unwrap(),
            &mut || xts.decrypt(black_box(&iv), black_box(&mut u2)).unwrap(),
            &mut || enc.unit(black_box(&iv), black_box(&mut u3)),
            &mut || dec.unit(black_box(&iv), black_box(&mut u4)),
            &mut || {
                xts.encrypt_data_units(black_box(7), UNIT, black_box(&mut m1))
                    .unwrap()
            },
            &mut || {
                xts.decrypt_data_units(black_box(7), UNIT, black_box(&mut m2))
                    .unwrap()
            },
            &mut || {
                for (i, unit) in black_box(&mut m3).chunks_exact_mut(UNIT).enumerate() {
                    enc_many.unit(&default_iv(7 + i as u64), unit);
                }
            },
            &mut || {
                for (i, unit) in black_box(&mut m4).chunks_exact_mut(UNIT).enumerate() {
                    dec_many.unit(&default_iv(7 + i as u64), unit);
                }
            },
        ],
    );
    let one = |r: f64| gbps(r * UNIT as f64);
    let lots = |r: f64| gbps(r * many as f64);
    let name = xts.implementation();
    println!("                                          encrypt  decrypt");
    println!(
        "  ours [{name}], one unit per call         {:6.2}   {:6.2}",
        one(rates[0]),
        one(rates[1])
    );
    println!(
        "  aws-lc EVP direct, one unit per call    {:6.2}   {:6.2}",
        one(rates[2]),
        one(rates[3])
    );
    println!(
        "  ours [{name}], 32 units per call         {:6.2}   {:6.2}",
        lots(rates[4]),
        lots(rates[5])
    );
    println!(
        "  aws-lc EVP direct, 32 units one by one  {:6.2}   {:6.2}",
        lots(rates[6]),
        lots(rates[7])
    );

    // The pure-Rust engine, and its ceiling: the `aes` crate without XTS (ECB over one unit per
    // call) and the fixed cost of one single-block call, which every unit pays for its tweak.
    let ecb_key = aes::Aes256::new(&Array::from([7u8; 32]));
    let mut blocks = vec![aes::Block::default(); UNIT / 16];
    let mut block = aes::Block::default();
    let pure_rates = best_rates(
        rounds,
        round,
        &mut [
            &mut || pure.encrypt(black_box(&iv), black_box(&mut u1)).unwrap(),
            &mut || pure.decrypt(black_box(&iv), black_box(&mut u2)).unwrap(),
            &mut || {
                pure.encrypt_data_units(black_box(7), UNIT, black_box(&mut m1))
                    .unwrap()
            },
            &mut || {
                pure.decrypt_data_units(black_box(7), UNIT, black_box(&mut m2))
                    .unwrap()
            },
            &mut || ecb_key.encrypt_blocks(black_box(&mut blocks)),
            &mut || ecb_key.encrypt_block(black_box(&mut block)),
        ],
    );
    println!(
        "  ours [pure Rust], one unit per call     {:6.2}   {:6.2}",
        one(pure_rates[0]),
        one(pure_rates[1])
    );
    println!(
        "  ours [pure Rust], 32 units per call     {:6.2}   {:6.2}",
        lots(pure_rates[2]),
        lots(pure_rates[3])
    );
    println!(
        "  `aes` crate ECB, 4 KiB per call         {:6.2}            (one-block call {:.0} ns)",
        one(pure_rates[4]),
        1e9 / pure_rates[5]
    );

    let mut fastest = ("aws-lc EVP direct", UNIT as f64 * rates[2].min(rates[3]));
    if quick {
        println!("  openssl speed skipped (only run under `cargo bench`)");
    } else {
        match openssl_speed(seconds) {
            Ok(bps) => {
                println!(
                    "  openssl speed -evp aes-256-xts -bytes 4096 -seconds {seconds}: {:6.2}",
                    gbps(bps)
                );
                if bps > fastest.1 {
                    fastest = ("openssl speed", bps);
                }
            }
            Err(e) => println!("  REFERENCE MISSING: openssl speed unavailable ({e})"),
        }
    }
    let many_direct = (
        "aws-lc EVP direct, 32 units",
        many as f64 * rates[6].min(rates[7]),
    );
    let many_best = if many_direct.1 >= fastest.1 {
        many_direct
    } else {
        fastest
    };
    for (what, ours, (best_name, best)) in [
        (
            "one unit per call",
            UNIT as f64 * rates[0].min(rates[1]),
            fastest,
        ),
        (
            "32 units per call",
            many as f64 * rates[4].min(rates[5]),
            many_best,
        ),
    ] {
        let ratio = ours / best;
        println!(
            "  ours [{name}] {what}, slower direction / fastest ({best_name}) = {:.1}% \
             (goal >= 95%: {})",
            ratio * 100.0,
            if ratio >= 0.95 { "met" } else { "NOT met" }
        );
    }

    println!("Per-extent key setup");
    let nonce = [0x24u8; 16];
    let derive = best_rate(rounds, round, || {
        let hk = HkdfKey::extract(black_box(&[0x42u8; 64]));
        let mut out = [0u8; 64];
        hk.expand(CONTEXT_PER_EXTENT_ENC_KEY, black_box(&nonce), &mut out);
        black_box(out);
    });
    let hk = HkdfKey::extract(&[0x42u8; 64]);
    let expand_only = best_rate(rounds, round, || {
        let mut out = [0u8; 64];
        hk.expand(CONTEXT_PER_EXTENT_ENC_KEY, black_box(&nonce), &mut out);
        black_box(out);
    });
    let schedule = best_rate(rounds, round, || {
        black_box(Aes256Xts::new(black_box(&key)));
    });
    let schedule_pure = best_rate(rounds, round, || {
        black_box(Aes256Xts::new_pure_rust(black_box(&key)));
    });
    let both = best_rate(rounds, round, || {
        let mut out = Secret::<64>::zeroed();
        hk.expand(
            CONTEXT_PER_EXTENT_ENC_KEY,
            black_box(&nonce),
            out.expose_mut(),
        );
        black_box(Aes256Xts::new(&out));
    });
    println!(
        "  HKDF extract + expand (ctx 9, 16-byte nonce, 64 B): {:7.3} M/s",
        derive / 1e6
    );
    println!(
        "  HKDF expand only (PRK cached per master key):      {:7.3} M/s",
        expand_only / 1e6
    );
    println!(
        "  Aes256Xts::new [{}]:                             {:7.3} M/s",
        xts.implementation(),
        schedule / 1e6
    );
    println!(
        "  Aes256Xts::new_pure_rust:                          {:7.3} M/s",
        schedule_pure / 1e6
    );
    println!(
        "  a new extent = expand + Aes256Xts::new:            {:7.3} M/s",
        both / 1e6
    );

    // What a flush pays per new extent, through the public API: a fresh nonce, its key (derived
    // uncached, counted live in the keyring), one 4 KiB unit encrypted, everything dropped.
    let ring = Keyring::new(1024);
    let admin = Caller {
        uid: 0,
        is_admin: true,
    };
    let id = ring
        .add_key(MasterKey::from_raw(&[0x42u8; 64]).expect("key"), admin)
        .expect("add key");
    let policy =
        PolicyV2::new(ContentsMode::Aes256Xts, FilenamesMode::Aes256Cts, 3, 0, id).expect("policy");
    let common = CryptCommon::new(policy, ring.unlock(&id).expect("unlock")).expect("common");
    let new_extent = best_rate(rounds, round, || {
        let info = ExtentCryptInfo::new_extent(&common, 12).expect("new extent");
        info.encrypt(0, black_box(&mut u1)).expect("encrypt");
        black_box(info);
    });
    println!(
        "  ExtentCryptInfo::new_extent + one 4 KiB unit:      {:7.3} M/s",
        new_extent / 1e6
    );
}
