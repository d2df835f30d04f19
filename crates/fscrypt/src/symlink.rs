//! Encrypted symlink targets, as Linux's `struct fscrypt_symlink_data` (`fs/crypto/hooks.c`).
//!
//! The target is encrypted like a filename, but with the symlink inode's own filenames key and
//! IV (index 0) and padded within the filesystem's symlink size limit rather than NAME_MAX. The
//! stored blob is:
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | ciphertext length `n`, le16 |
//! | 2..2+n | the ciphertext |
//! | 2+n | one 0x00 byte (counted in the size limit, never read back) |
//!
//! With a limit of `max_size` bytes including that NUL (ext4: the block size), `n` is
//! `encrypted_size(target_len, padding, max_size - 3)`, so the longest encrypted target is two
//! bytes shorter than an unencrypted one.

use crate::error::{Error, Result};
use crate::fname::{FilenameCipher, MIN_CIPHERTEXT_LEN, encrypted_size};
use crate::nokey;
use crate::policy::Padding;

/// Bytes a blob adds to its ciphertext: the le16 length and the trailing NUL.
pub const SYMLINK_OVERHEAD: usize = 3;

/// Size of the on-disk blob (length word, ciphertext, NUL) for a `target_len`-byte target under
/// a symlink size limit of `max_size` bytes including the NUL. Equals what
/// [`encrypt_target`] returns.
pub fn encrypted_symlink_size(
    target_len: usize,
    padding: Padding,
    max_size: usize,
) -> Result<usize> {
    if target_len == 0 {
        return Err(Error::invalid("symlink target", "empty target"));
    }
    let max_ciphertext = max_size.saturating_sub(SYMLINK_OVERHEAD);
    let too_long = Error::NameTooLong {
        len: target_len,
        max: max_ciphertext,
    };
    let ciphertext_len =
        encrypted_size(target_len, padding, max_ciphertext).ok_or(too_long.clone())?;
    if ciphertext_len < MIN_CIPHERTEXT_LEN || ciphertext_len > usize::from(u16::MAX) {
        return Err(too_long);
    }
    Ok(ciphertext_len + SYMLINK_OVERHEAD)
}

/// Encrypts `target` into its on-disk blob. `cipher` holds the symlink inode's own filenames
/// key and IV.
pub fn encrypt_target(
    cipher: &FilenameCipher,
    target: &[u8],
    padding: Padding,
    max_size: usize,
) -> Result<Vec<u8>> {
    let total = encrypted_symlink_size(target.len(), padding, max_size)?;
    let ciphertext_len = total - SYMLINK_OVERHEAD;
    let mut blob = vec![0u8; total];
    // encrypted_symlink_size keeps the length within u16.
    blob[..2].copy_from_slice(&(ciphertext_len as u16).to_le_bytes());
    blob[2..2 + target.len()].copy_from_slice(target);
    cipher.encrypt_padded(&mut blob[2..2 + ciphertext_len])?;
    Ok(blob)
}

/// The ciphertext of a stored blob, checked as Linux's `fscrypt_get_symlink` checks it
/// (EUCLEAN on failure). `max_size` is the size limit the blob was read under.
fn stored_ciphertext(disk: &[u8], max_size: usize) -> Result<&[u8]> {
    if max_size < SYMLINK_OVERHEAD {
        return Err(Error::Corrupt(format!(
            "symlink size limit {max_size} leaves no room for a target"
        )));
    }
    let Some(len_word) = disk.get(..2) else {
        return Err(Error::Corrupt(
            "encrypted symlink shorter than its length word".into(),
        ));
    };
    let len = usize::from(u16::from_le_bytes([len_word[0], len_word[1]]));
    if len == 0 {
        return Err(Error::Corrupt("encrypted symlink of length 0".into()));
    }
    if len + 2 > max_size {
        return Err(Error::Corrupt(format!(
            "encrypted symlink of {len} bytes exceeds the limit of {max_size}"
        )));
    }
    let Some(ciphertext) = disk.get(2..2 + len) else {
        return Err(Error::Corrupt(format!(
            "encrypted symlink claims {len} bytes, {} stored",
            disk.len() - 2
        )));
    };
    if len < MIN_CIPHERTEXT_LEN {
        return Err(Error::Corrupt(format!(
            "encrypted symlink of {len} bytes, shorter than {MIN_CIPHERTEXT_LEN}"
        )));
    }
    Ok(ciphertext)
}

/// Decrypts a stored blob to the symlink's target. `cipher` holds the symlink inode's own
/// filenames key and IV.
pub fn decrypt_target(cipher: &FilenameCipher, disk: &[u8], max_size: usize) -> Result<Vec<u8>> {
    let ciphertext = stored_ciphertext(disk, max_size)?;
    let target = cipher.decrypt_any_len(ciphertext)?;
    if target.is_empty() {
        return Err(Error::Corrupt(
            "encrypted symlink decrypts to an empty target".into(),
        ));
    }
    Ok(target)
}

/// What readlink shows without the key: the no-key name of the ciphertext, hashes 0.
pub fn nokey_target(disk: &[u8], max_size: usize) -> Result<String> {
    let ciphertext = stored_ciphertext(disk, max_size)?;
    Ok(nokey::encode(ciphertext, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iv::FscryptIv;
    use crate::policy::FilenamesMode;
    use proptest::prelude::*;

    const EXT4_4K: usize = 4096;

    fn cipher() -> FilenameCipher {
        FilenameCipher::new(
            FilenamesMode::Aes256Cts,
            &[0x5a; 32],
            &FscryptIv::from_index(0),
        )
        .unwrap()
    }

    #[test]
    fn sizes() {
        assert_eq!(encrypted_symlink_size(10, Padding::Pad32, EXT4_4K), Ok(35));
        assert_eq!(encrypted_symlink_size(10, Padding::Pad4, EXT4_4K), Ok(19));
        // Longest encrypted target on 4K ext4: 4093 bytes (4095 unencrypted).
        assert_eq!(
            encrypted_symlink_size(4093, Padding::Pad32, EXT4_4K),
            Ok(4096)
        );
        assert_eq!(
            encrypted_symlink_size(4094, Padding::Pad4, EXT4_4K),
            Err(Error::NameTooLong {
                len: 4094,
                max: 4093
            })
        );
        assert!(matches!(
            encrypted_symlink_size(0, Padding::Pad4, EXT4_4K),
            Err(Error::Invalid { .. })
        ));
        assert!(
            encrypted_symlink_size(1, Padding::Pad4, 18).is_err(),
            "no room for a block"
        );
        assert_eq!(encrypted_symlink_size(1, Padding::Pad4, 19), Ok(19));
        assert!(encrypted_symlink_size(1, Padding::Pad4, 2).is_err());
    }

    #[test]
    fn blob_layout() {
        let c = cipher();
        let blob = encrypt_target(&c, b"target.txt", Padding::Pad32, EXT4_4K).unwrap();
        assert_eq!(blob.len(), 35);
        assert_eq!(blob[..2], [32, 0]);
        assert_eq!(blob[34], 0);
        assert_eq!(
            blob[2..34],
            c.encrypt(b"target.txt", Padding::Pad32, 4093).unwrap()[..]
        );
        assert_eq!(decrypt_target(&c, &blob, EXT4_4K).unwrap(), b"target.txt");
        // The trailing NUL is not needed to read the target back.
        assert_eq!(
            decrypt_target(&c, &blob[..34], EXT4_4K).unwrap(),
            b"target.txt"
        );
        assert_eq!(
            nokey_target(&blob, EXT4_4K).unwrap(),
            nokey::encode(&blob[2..34], 0, 0)
        );
    }

    #[test]
    fn long_target_round_trip_and_nokey_abbreviates() {
        let c = cipher();
        let target = vec![b'x'; 4000];
        let blob = encrypt_target(&c, &target, Padding::Pad32, EXT4_4K).unwrap();
        assert_eq!(blob.len(), 4000usize.next_multiple_of(32) + 3);
        assert_eq!(decrypt_target(&c, &blob, EXT4_4K).unwrap(), target);
        let shown = nokey_target(&blob, EXT4_4K).unwrap();
        assert_eq!(shown.len(), nokey::NOKEY_NAME_MAX_ENCODED);
        let n = nokey::NoKeyName::decode(shown.as_bytes()).unwrap();
        assert!(n.matches(&blob[2..blob.len() - 1]));
    }

    #[test]
    fn corrupt_blobs_are_rejected() {
        let c = cipher();
        let blob = encrypt_target(&c, b"somewhere", Padding::Pad16, EXT4_4K).unwrap();
        let corrupt = |disk: &[u8], max: usize| {
            matches!(decrypt_target(&c, disk, max), Err(Error::Corrupt(_)))
                && matches!(nokey_target(disk, max), Err(Error::Corrupt(_)))
        };
        assert!(corrupt(&blob, 2), "limit below 3");
        assert!(corrupt(&[], EXT4_4K), "empty");
        assert!(corrupt(&[16], EXT4_4K), "half a length word");
        let mut zero_len = blob.clone();
        zero_len[..2].copy_from_slice(&[0, 0]);
        assert!(corrupt(&zero_len, EXT4_4K), "length 0");
        assert!(corrupt(&blob, 17), "length + 2 beyond the limit");
        assert!(!corrupt(&blob, 18), "length + 2 exactly at the limit");
        assert!(corrupt(&blob[..10], EXT4_4K), "truncated");
        let mut short = vec![15, 0];
        short.extend_from_slice(&[1; 16]);
        assert!(corrupt(&short, EXT4_4K), "below one block");
        // A target whose first plaintext byte is NUL.
        let mut nul_first = vec![16, 0];
        let mut ct = [0u8; 16];
        crate::cts::encrypt_aes256(&[0x5a; 32], &[0; 16], &mut ct).unwrap();
        nul_first.extend_from_slice(&ct);
        nul_first.push(0);
        assert!(matches!(
            decrypt_target(&c, &nul_first, EXT4_4K),
            Err(Error::Corrupt(_))
        ));
        assert!(
            nokey_target(&nul_first, EXT4_4K).is_ok(),
            "no key: nothing to check"
        );
    }

    proptest! {
        #[test]
        fn decoders_are_total(disk in proptest::collection::vec(any::<u8>(), 0..80),
                              max in 0usize..100) {
            let c = cipher();
            if let Ok(t) = decrypt_target(&c, &disk, max) {
                prop_assert!(!t.is_empty());
            }
            if nokey_target(&disk, max).is_ok() {
                let len = usize::from(u16::from_le_bytes([disk[0], disk[1]]));
                prop_assert!((16..=disk.len() - 2).contains(&len) && len + 2 <= max);
            }
        }

        #[test]
        fn round_trip(target in proptest::collection::vec(1u8..=255, 1..600),
                      pad in 0u8..4) {
            let c = cipher();
            let padding = Padding::from_flags(pad);
            let blob = encrypt_target(&c, &target, padding, EXT4_4K).unwrap();
            prop_assert_eq!(Ok(blob.len()), encrypted_symlink_size(target.len(), padding, EXT4_4K));
            prop_assert_eq!(decrypt_target(&c, &blob, EXT4_4K).unwrap(), target);
        }
    }
}
