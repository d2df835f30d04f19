//! Filename encryption exactly as Linux fscrypt does it (`fs/crypto/fname.c`).
//!
//! A name is padded with NUL bytes to `min(round_up(max(len, 16), padding), max_len)` bytes and
//! encrypted with the directory's filenames key and filename IV (the policy's IV with index 0).
//! Every name in a directory shares that IV, so the same name always encrypts to the same bytes,
//! which is what makes lookup by plaintext possible. Decryption keeps the bytes before the first
//! NUL (Linux's `strnlen`). On-disk names are the raw ciphertext bytes, 16 to 255 of them.
//!
//! Modes: AES-256-CTS (4) and AES-128-CTS (6) use the first 16 IV bytes; AES-256-HCTR2 (10) uses
//! all 32 as its tweak. SM4-CTS and Adiantum are not implemented.

use std::fmt;

use crate::cts;
use crate::error::{Error, Result};
use crate::hctr2;
use crate::iv::FscryptIv;
use crate::policy::{FilenamesMode, Padding};
use crate::secret::Secret;

/// Longest name in a directory entry (and longest encrypted name).
pub const NAME_MAX: usize = 255;

/// Shortest ciphertext: one cipher block (Linux's `FSCRYPT_FNAME_MIN_MSG_LEN`).
pub const MIN_CIPHERTEXT_LEN: usize = 16;

/// Size of the encryption of a `len`-byte name: `min(round_up(max(len, 16), padding), max_len)`.
/// `None` if the name is empty or longer than `max_len`.
pub fn encrypted_size(len: usize, padding: Padding, max_len: usize) -> Option<usize> {
    if len == 0 || len > max_len {
        return None;
    }
    // Rounding up can only overflow past max_len, where the result is capped anyway.
    let padded = len
        .max(MIN_CIPHERTEXT_LEN)
        .checked_next_multiple_of(padding.bytes())
        .unwrap_or(max_len);
    Some(padded.min(max_len))
}

#[derive(Clone)]
enum NameKey {
    Aes256(Secret<32>),
    Aes128(Secret<16>),
}

/// A directory's (or a symlink's) filenames key and IV, ready to encrypt names.
#[derive(Clone)]
pub struct FilenameCipher {
    mode: FilenamesMode,
    key: NameKey,
    iv: FscryptIv,
}

impl fmt::Debug for FilenameCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FilenameCipher({}, key redacted)", self.mode.info().name)
    }
}

impl FilenameCipher {
    /// A cipher for `mode` with the filenames key `key` (exactly the mode's key size) and the
    /// filename IV `iv` (index 0 of the policy's IV scheme).
    pub fn new(mode: FilenamesMode, key: &[u8], iv: &FscryptIv) -> Result<Self> {
        let expected = mode.info().key_size;
        let bad_len = || Error::BadLength {
            what: "filenames key",
            got: key.len(),
            expected,
        };
        let key = match mode {
            FilenamesMode::Aes256Cts | FilenamesMode::Aes256Hctr2 => {
                NameKey::Aes256(Secret::from_slice(key).ok_or_else(bad_len)?)
            }
            FilenamesMode::Aes128Cts => {
                NameKey::Aes128(Secret::from_slice(key).ok_or_else(bad_len)?)
            }
            other => return Err(Error::UnsupportedMode(other.number())),
        };
        Ok(FilenameCipher { mode, key, iv: *iv })
    }

    /// The filenames mode.
    pub fn mode(&self) -> FilenamesMode {
        self.mode
    }

    /// Encrypts `name` for a directory entry of at most `max_len` bytes: NUL-padded to
    /// [`encrypted_size`], then encrypted. `.` and `..` are never encrypted; that is the caller's
    /// business.
    pub fn encrypt(&self, name: &[u8], padding: Padding, max_len: usize) -> Result<Vec<u8>> {
        if name.is_empty() {
            return Err(Error::invalid("filename", "empty name"));
        }
        let size = encrypted_size(name.len(), padding, max_len).ok_or(Error::NameTooLong {
            len: name.len(),
            max: max_len,
        })?;
        if size < MIN_CIPHERTEXT_LEN {
            return Err(Error::invalid(
                "filename",
                format!("maximum length {max_len} is below one cipher block"),
            ));
        }
        let mut buf = vec![0u8; size];
        buf[..name.len()].copy_from_slice(name);
        self.crypt(&mut buf, true)?;
        Ok(buf)
    }

    /// Decrypts an on-disk name (16 to 255 bytes) and drops its NUL padding.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>> {
        if ciphertext.len() > NAME_MAX {
            return Err(Error::Corrupt(format!(
                "encrypted name of {} bytes, longer than {NAME_MAX}",
                ciphertext.len()
            )));
        }
        self.decrypt_any_len(ciphertext)
    }

    /// Decrypts a ciphertext of any length of at least 16 bytes (symlink targets run to a
    /// block) and keeps the bytes before the first NUL.
    pub(crate) fn decrypt_any_len(&self, ciphertext: &[u8]) -> Result<Vec<u8>> {
        if ciphertext.len() < MIN_CIPHERTEXT_LEN {
            return Err(Error::Corrupt(format!(
                "encrypted name of {} bytes, shorter than {MIN_CIPHERTEXT_LEN}",
                ciphertext.len()
            )));
        }
        let mut buf = ciphertext.to_vec();
        self.crypt(&mut buf, false)?;
        let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf.truncate(len);
        Ok(buf)
    }

    /// Encrypts a buffer already padded to its on-disk size (for symlink targets).
    pub(crate) fn encrypt_padded(&self, buf: &mut [u8]) -> Result<()> {
        self.crypt(buf, true)
    }

    fn crypt(&self, buf: &mut [u8], encrypt: bool) -> Result<()> {
        let iv16 = self.iv.first16();
        match (&self.key, self.mode, encrypt) {
            (NameKey::Aes256(k), FilenamesMode::Aes256Hctr2, true) => {
                hctr2::encrypt(k.expose(), &self.iv.0, buf)
            }
            (NameKey::Aes256(k), FilenamesMode::Aes256Hctr2, false) => {
                hctr2::decrypt(k.expose(), &self.iv.0, buf)
            }
            (NameKey::Aes256(k), _, true) => cts::encrypt_aes256(k.expose(), &iv16, buf),
            (NameKey::Aes256(k), _, false) => cts::decrypt_aes256(k.expose(), &iv16, buf),
            (NameKey::Aes128(k), _, true) => cts::encrypt_aes128(k.expose(), &iv16, buf),
            (NameKey::Aes128(k), _, false) => cts::decrypt_aes128(k.expose(), &iv16, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hkdf;
    use crate::master_key::MasterKey;
    use crate::nokey;
    use crate::policy::{FLAG_IV_INO_LBLK_32, FLAG_IV_INO_LBLK_64};
    use crate::symlink;
    use proptest::prelude::*;
    use serde_json::Value;

    /// FSCRYPT.md 10.2: master key 01..40, nonce 00..0f, per-file key = HKDF ctx 2.
    fn spec_cipher(mode: FilenamesMode) -> FilenameCipher {
        let mk = MasterKey::from_raw(&(1..=64).collect::<Vec<u8>>()).unwrap();
        let nonce: Vec<u8> = (0..16).collect();
        let mut key = vec![0u8; mode.info().key_size];
        mk.hkdf()
            .expand(hkdf::CONTEXT_PER_FILE_ENC_KEY, &nonce, &mut key);
        FilenameCipher::new(mode, &key, &FscryptIv::from_index(0)).unwrap()
    }

    #[test]
    fn sizes_follow_linux() {
        use Padding::*;
        assert_eq!(encrypted_size(1, Pad4, 255), Some(16));
        assert_eq!(encrypted_size(16, Pad16, 255), Some(16));
        assert_eq!(encrypted_size(17, Pad4, 255), Some(20));
        assert_eq!(encrypted_size(17, Pad8, 255), Some(24));
        assert_eq!(encrypted_size(17, Pad16, 255), Some(32));
        assert_eq!(encrypted_size(1, Pad32, 255), Some(32));
        assert_eq!(encrypted_size(33, Pad32, 255), Some(64));
        assert_eq!(encrypted_size(254, Pad4, 255), Some(255));
        assert_eq!(encrypted_size(255, Pad32, 255), Some(255));
        assert_eq!(encrypted_size(256, Pad4, 255), None);
        assert_eq!(encrypted_size(0, Pad4, 255), None);
        assert_eq!(encrypted_size(100, Pad32, 4093), Some(128));
        assert_eq!(
            encrypted_size(usize::MAX - 3, Pad32, usize::MAX),
            Some(usize::MAX)
        );
    }

    #[test]
    fn spec_vectors_10_2() {
        let c = spec_cipher(FilenamesMode::Aes256Cts);
        let pad32 = c.encrypt(b"hello", Padding::Pad32, NAME_MAX).unwrap();
        assert_eq!(
            hex::encode(&pad32),
            "5cb2a7682a675ad009cc5401ce96209cb11b1123ab7c7f65ba62df02ba11140c"
        );
        let pad4 = c.encrypt(b"hello", Padding::Pad4, NAME_MAX).unwrap();
        assert_eq!(hex::encode(&pad4), "b11b1123ab7c7f65ba62df02ba11140c");
        let twenty = c
            .encrypt(b"a_twenty_byte_name__", Padding::Pad4, NAME_MAX)
            .unwrap();
        assert_eq!(
            hex::encode(&twenty),
            "2c195a965ba16eb91f9f3aa54b92339c24b6206f"
        );
        assert_eq!(c.decrypt(&pad32).unwrap(), b"hello");
        assert_eq!(c.decrypt(&pad4).unwrap(), b"hello");
        assert_eq!(c.decrypt(&twenty).unwrap(), b"a_twenty_byte_name__");
        assert_eq!(
            nokey::encode(&pad32, 0, 0),
            "AAAAAAAAAABcsqdoKmda0AnMVAHOliCcsRsRI6t8f2W6Yt8CuhEUDA"
        );
    }

    #[test]
    fn argument_errors() {
        let c = spec_cipher(FilenamesMode::Aes256Cts);
        assert!(matches!(
            c.encrypt(b"", Padding::Pad32, NAME_MAX),
            Err(Error::Invalid { .. })
        ));
        assert_eq!(
            c.encrypt(&[b'a'; 256], Padding::Pad32, NAME_MAX),
            Err(Error::NameTooLong { len: 256, max: 255 })
        );
        assert!(matches!(c.decrypt(&[0; 15]), Err(Error::Corrupt(_))));
        assert!(matches!(c.decrypt(&[0; 256]), Err(Error::Corrupt(_))));
        let iv = FscryptIv::from_index(0);
        assert!(matches!(
            FilenameCipher::new(FilenamesMode::Aes256Cts, &[0; 16], &iv),
            Err(Error::BadLength { .. })
        ));
        assert!(FilenameCipher::new(FilenamesMode::Aes128Cts, &[0; 16], &iv).is_ok());
        assert_eq!(
            FilenameCipher::new(FilenamesMode::Adiantum, &[0; 32], &iv).unwrap_err(),
            Error::UnsupportedMode(9)
        );
        assert_eq!(
            FilenameCipher::new(FilenamesMode::Sm4Cts, &[0; 16], &iv).unwrap_err(),
            Error::UnsupportedMode(8)
        );
        let text = format!("{c:?}");
        assert!(text.contains("redacted") && text.contains("CTS"), "{text}");
    }

    #[test]
    fn cipher_is_shareable() {
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<FilenameCipher>();
    }

    #[test]
    fn decrypt_stops_at_first_nul() {
        let c = spec_cipher(FilenamesMode::Aes256Cts);
        let ct = c.encrypt(b"ab\0cd", Padding::Pad4, NAME_MAX).unwrap();
        assert_eq!(c.decrypt(&ct).unwrap(), b"ab");
    }

    #[test]
    fn hctr2_names_use_the_whole_iv() {
        let mk = MasterKey::from_raw(&[7; 32]).unwrap();
        let mut key = [0u8; 32];
        mk.hkdf().expand(2, &[1; 16], &mut key);
        let a = FilenameCipher::new(
            FilenamesMode::Aes256Hctr2,
            &key,
            &FscryptIv::direct_key(0, &[1; 16]),
        )
        .unwrap();
        let b = FilenameCipher::new(
            FilenamesMode::Aes256Hctr2,
            &key,
            &FscryptIv::direct_key(0, &[2; 16]),
        )
        .unwrap();
        let ca = a.encrypt(b"name", Padding::Pad32, NAME_MAX).unwrap();
        assert_ne!(ca, b.encrypt(b"name", Padding::Pad32, NAME_MAX).unwrap());
        assert_eq!(a.decrypt(&ca).unwrap(), b"name");
    }

    fn hex_field(v: &Value, path: &[&str]) -> Option<Vec<u8>> {
        let mut cur = v;
        for p in path {
            cur = cur.get(p)?;
        }
        hex::decode(cur.as_str()?).ok()
    }

    /// The filenames key and IV (index 0) of inode `ino` with nonce `nonce` under `flags`.
    fn kernel_cipher(
        mk: &MasterKey,
        mode: FilenamesMode,
        flags: u8,
        uuid: &[u8],
        nonce: &[u8],
        ino: u64,
    ) -> FilenameCipher {
        let mut key = vec![0u8; mode.info().key_size];
        let per_mode_info = [&[mode.number()][..], uuid].concat();
        let iv = if flags & FLAG_IV_INO_LBLK_64 != 0 {
            mk.hkdf()
                .expand(hkdf::CONTEXT_IV_INO_LBLK_64_KEY, &per_mode_info, &mut key);
            FscryptIv::ino_lblk_64(0, u32::try_from(ino).unwrap())
        } else if flags & FLAG_IV_INO_LBLK_32 != 0 {
            mk.hkdf()
                .expand(hkdf::CONTEXT_IV_INO_LBLK_32_KEY, &per_mode_info, &mut key);
            let mut hash_key = [0u8; 16];
            mk.hkdf()
                .expand(hkdf::CONTEXT_INODE_HASH_KEY, &[], &mut hash_key);
            let k0 = u64::from_le_bytes(hash_key[..8].try_into().unwrap());
            let k1 = u64::from_le_bytes(hash_key[8..].try_into().unwrap());
            use std::hash::Hasher;
            let mut h = siphasher::sip::SipHasher24::new_with_keys(k0, k1);
            h.write(&ino.to_le_bytes());
            FscryptIv::ino_lblk_32(h.finish() as u32, 0)
        } else {
            mk.hkdf()
                .expand(hkdf::CONTEXT_PER_FILE_ENC_KEY, nonce, &mut key);
            FscryptIv::from_index(0)
        };
        FilenameCipher::new(mode, &key, &iv).unwrap()
    }

    /// Names and symlink targets written by this machine's Linux kernel (ext4), checked both
    /// ways: our encryption equals the kernel's on-disk bytes, and decrypts back.
    #[test]
    fn kernel_vectors() {
        let doc: Value =
            serde_json::from_str(include_str!("../tests/data/kernel-vectors.json")).unwrap();
        let mk = MasterKey::from_raw(&hex_field(&doc, &["master_key"]).unwrap()).unwrap();
        let uuid = hex_field(&doc, &["fs", "uuid_hex"]).unwrap();
        let block_size = doc["fs"]["block_size"].as_u64().unwrap() as usize;
        let (mut names, mut links) = (0usize, 0usize);
        for policy in doc["policies"].as_array().unwrap() {
            let status = policy["status"].as_str().unwrap();
            if status != "ok" && status != "partial" {
                continue;
            }
            let mode = FilenamesMode::from_number(
                policy["policy"]["filenames_mode"].as_u64().unwrap() as u8,
            )
            .unwrap();
            let flags = policy["policy"]["flags"].as_u64().unwrap() as u8;
            let padding = Padding::from_flags(flags);
            for obj in policy["objects"].as_array().unwrap() {
                if !obj.get("error").is_none_or(Value::is_null) {
                    continue;
                }
                let Some(disk_name) = hex_field(obj, &["name", "ciphertext_hex"]) else {
                    continue;
                };
                let name = hex_field(obj, &["name", "hex"]).unwrap();
                let parent_nonce = hex_field(obj, &["parent_nonce"]).unwrap();
                let parent_ino = obj["parent_ino"].as_u64().unwrap();
                let dir = kernel_cipher(&mk, mode, flags, &uuid, &parent_nonce, parent_ino);
                let ours = dir.encrypt(&name, padding, NAME_MAX).unwrap();
                assert_eq!(
                    hex::encode(&ours),
                    hex::encode(&disk_name),
                    "{} in {}",
                    obj["path"],
                    policy["name"]
                );
                assert_eq!(dir.decrypt(&disk_name).unwrap(), name);
                names += 1;

                if let Some(link) = obj.get("symlink").filter(|l| !l.is_null()) {
                    let target = hex_field(link, &["target", "hex"]).unwrap();
                    let disk = hex_field(link, &["disk_hex"]).unwrap();
                    let nonce = hex_field(obj, &["nonce"]).unwrap();
                    let ino = obj["ino"].as_u64().unwrap();
                    let own = kernel_cipher(&mk, mode, flags, &uuid, &nonce, ino);
                    let blob = symlink::encrypt_target(&own, &target, padding, block_size).unwrap();
                    assert_eq!(hex::encode(&blob), hex::encode(&disk), "{}", obj["path"]);
                    assert_eq!(
                        symlink::decrypt_target(&own, &disk, block_size).unwrap(),
                        target
                    );
                    links += 1;
                }
            }
        }
        assert!(names > 200, "only {names} kernel names checked");
        assert!(links >= 30, "only {links} kernel symlinks checked");
    }

    fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 1..=NAME_MAX)
    }

    fn padding_strategy() -> impl Strategy<Value = Padding> {
        prop_oneof![
            Just(Padding::Pad4),
            Just(Padding::Pad8),
            Just(Padding::Pad16),
            Just(Padding::Pad32)
        ]
    }

    proptest! {
        #[test]
        fn round_trip(name in name_strategy(), padding in padding_strategy(),
                      key in any::<[u8; 32]>(), iv in any::<[u8; 32]>(),
                      hctr2 in any::<bool>(), aes128 in any::<bool>()) {
            let mode = match (hctr2, aes128) {
                (true, _) => FilenamesMode::Aes256Hctr2,
                (false, true) => FilenamesMode::Aes128Cts,
                (false, false) => FilenamesMode::Aes256Cts,
            };
            let key = &key[..mode.info().key_size];
            let c = FilenameCipher::new(mode, key, &FscryptIv(iv)).unwrap();
            let ct = c.encrypt(&name, padding, NAME_MAX).unwrap();
            prop_assert_eq!(Some(ct.len()), encrypted_size(name.len(), padding, NAME_MAX));
            prop_assert!(ct.len() == NAME_MAX || ct.len().is_multiple_of(padding.bytes()));
            prop_assert_eq!(c.decrypt(&ct).unwrap(), name);
        }
    }
}
