//! The control channel's protocol: what the `cowcrypt` command asks of a mounted filesystem and
//! what it gets back, for operations FUSE has no request for (subvolumes, keys, reflinks...).
//!
//! A request or response travels as one frame: a little-endian u32 length, then that many bytes
//! of JSON, an envelope `{"version": 1, "body": ...}`. The transport (a FUSE ioctl, see
//! docs/CONTROL.md) moves frames of at most [`FRAME_SIZE`] bytes and knows nothing of their
//! meaning; [`Filesystem::control`](crate::Filesystem::control) dispatches each request to the
//! ordinary library method that does the work. Responses that could outgrow a frame are paged
//! by a cursor in the request.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{KeyRemoval, KeyStatusReport, RawKey, parse_identifier};
use crate::{
    BalanceReport, Caller, DiskUsage, Filesystem, Ino, ScrubReport, SpaceReport, SubvolumeEntry,
};

/// Version of the envelope and of the meaning of its requests and responses. A daemon answers
/// a frame of another version with EPROTO, so an old CLI against a new daemon fails clearly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Size of the frame buffer the ioctl carries in both directions: the largest the 14-bit size
/// field of an ioctl number can say.
pub const FRAME_SIZE: usize = 16383;

/// Bytes of the length prefix.
const LEN_BYTES: usize = 4;

/// Largest encoded body a frame can hold.
pub const MAX_PAYLOAD: usize = FRAME_SIZE - LEN_BYTES;

/// The ioctl number of the channel: `_IOWR('C', 1, [u8; FRAME_SIZE])`.
pub const IOCTL_CMD: u32 = ioc_readwrite(b'C', 1, FRAME_SIZE as u32);

/// Linux's `_IOWR(ty, nr, size)`: direction read|write (3) in bits 30-31, size in bits 16-29,
/// type in bits 8-15, number in bits 0-7.
const fn ioc_readwrite(ty: u8, nr: u8, size: u32) -> u32 {
    (3 << 30) | ((size & 0x3fff) << 16) | ((ty as u32) << 8) | nr as u32
}

/// What a client asks of the filesystem. Every request is issued on an inode (the file or
/// directory the ioctl was issued on): "here" below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// The daemon's protocol and program versions.
    Version,
    /// Subvolumes of the filesystem, in id order, starting after id `after` (a page cursor:
    /// `None` for the first page, then the last id of the previous page).
    SubvolumeList { after: Option<u64> },
    /// The subvolume here belongs to.
    SubvolumeShow,
    /// A new empty subvolume `name` in the directory here, with mkdir's `mode`.
    SubvolumeCreate { name: Vec<u8>, mode: u32 },
    /// A snapshot of the subvolume whose root directory is inode `source`, as `name` in the
    /// directory here.
    SubvolumeSnapshot {
        source: Ino,
        name: Vec<u8>,
        read_only: bool,
    },
    /// Deletes the subvolume linked as `name` in the directory here; its space is released in
    /// the background.
    SubvolumeDelete { name: Vec<u8> },
    /// Sets or clears the read-only flag of the subvolume whose root directory is here.
    SubvolumeSetReadOnly { read_only: bool },
    /// Empties data chunks with at most `usage` percent in use (root only); answers when done.
    Balance { usage: u8 },
    /// Bytes of the file here, or of every file under the directory here.
    DiskUsage,
    /// The filesystem's space figures.
    Space,
    /// Verifies every checksum (root only); answers when done.
    Scrub,
    /// FS_IOC_ADD_ENCRYPTION_KEY: a raw master key, claimed for the caller.
    KeyAdd { key: RawKey },
    /// FS_IOC_REMOVE_ENCRYPTION_KEY(_ALL_USERS) of the key with this identifier (32 hex digits).
    KeyRemove { identifier: String, all_users: bool },
    /// FS_IOC_GET_ENCRYPTION_KEY_STATUS.
    KeyStatus { identifier: String },
    /// FS_IOC_SET_ENCRYPTION_POLICY on the directory here: a 24-byte v2 policy.
    SetPolicy { policy: Vec<u8> },
    /// The policy in force here, and for a subvolume root how many bytes are still plaintext.
    GetPolicy,
    /// Reflink into the file here from inode `source` (`len` none: all of it from `src_offset`,
    /// the file here truncated first). Refusals (EXDEV across keys) come back as they are.
    Reflink {
        source: Ino,
        src_offset: u64,
        len: Option<u64>,
        dest_offset: u64,
    },
}

/// The answer to a [`Request`]; errors travel as an errno instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// Done; nothing to say.
    Done,
    Version {
        protocol: u32,
        /// The cowfs crate version of the daemon.
        program: String,
    },
    /// One page of subvolumes; `more` says another page follows. `deleting` and
    /// `deleting_bytes` are the deleted subvolumes still releasing space (as of the last
    /// commit) and an estimate of the tree blocks they still hold (file data not counted).
    Subvolumes {
        subvolumes: Vec<SubvolumeEntry>,
        deleting: usize,
        deleting_bytes: u64,
        more: bool,
    },
    /// One subvolume (show, create, snapshot).
    Subvolume(SubvolumeEntry),
    /// What a balance did.
    Balance(BalanceReport),
    DiskUsage(DiskUsage),
    Space(SpaceReport),
    Scrub(ScrubReport),
    /// The identifier of an added key (32 hex digits).
    KeyAdded {
        identifier: String,
    },
    KeyRemoved(KeyRemoval),
    KeyStatus(KeyStatusReport),
    /// Bytes a reflink covered.
    Reflinked {
        bytes: u64,
    },
    /// The 24-byte v2 policy (none: not encrypted) and, for a subvolume root, the bytes of its
    /// files still stored as plaintext.
    Policy {
        policy: Option<Vec<u8>>,
        plaintext_bytes: Option<u64>,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    version: u32,
    body: T,
}

/// Writes into a vector without growing it: a frame is built in place, in room for the
/// largest, so no outgrown copy of it (a request may hold a master key) is left in freed memory.
struct InPlace<'a>(&'a mut Vec<u8>);

impl std::io::Write for InPlace<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.0.capacity() - self.0.len() < bytes.len() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn encode_frame<T: Serialize>(body: T) -> Result<Vec<u8>> {
    // Wiped if encoding fails half way.
    let mut frame = zeroize::Zeroizing::new(Vec::with_capacity(FRAME_SIZE));
    frame.extend_from_slice(&[0; LEN_BYTES]);
    let envelope = Envelope {
        version: PROTOCOL_VERSION,
        body,
    };
    match serde_json::to_writer(InPlace(&mut frame), &envelope) {
        Ok(()) => {}
        Err(e) if e.is_io() => return Err(Error::ValueTooBig),
        Err(_) => return Err(Error::Invalid("control message does not encode")),
    }
    if frame.len() > FRAME_SIZE {
        return Err(Error::ValueTooBig);
    }
    let len = (frame.len() - LEN_BYTES) as u32;
    frame[..LEN_BYTES].copy_from_slice(&len.to_le_bytes());
    Ok(std::mem::take(&mut *frame))
}

fn decode_frame<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T> {
    let Some((len, rest)) = frame.split_first_chunk::<LEN_BYTES>() else {
        return Err(Error::Invalid("control frame shorter than its length"));
    };
    let len = u32::from_le_bytes(*len) as usize;
    let Some(json) = rest.get(..len) else {
        return Err(Error::Invalid("control frame shorter than its length"));
    };
    // The version first, so a newer client's unknown request says "protocol", not "garbage".
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let v: VersionOnly =
        serde_json::from_slice(json).map_err(|_| Error::Invalid("control frame is not JSON"))?;
    if v.version != PROTOCOL_VERSION {
        return Err(Error::Protocol(v.version));
    }
    let env: Envelope<T> = serde_json::from_slice(json)
        .map_err(|_| Error::Invalid("control frame holds an unknown message"))?;
    Ok(env.body)
}

impl Request {
    /// The request as a frame (length prefix and JSON), at most [`FRAME_SIZE`] bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode_frame(self)
    }

    /// Decodes a frame; trailing bytes past the length are ignored (the ioctl buffer is fixed).
    pub fn decode(frame: &[u8]) -> Result<Request> {
        decode_frame(frame)
    }
}

impl Response {
    /// The response as a frame; [`Error::ValueTooBig`] if it does not fit one.
    pub fn encode(&self) -> Result<Vec<u8>> {
        encode_frame(self)
    }

    pub fn decode(frame: &[u8]) -> Result<Response> {
        decode_frame(frame)
    }
}

/// Builds the largest page of `items` that still fits a frame: `make(items, more)` is the
/// response for a page; fewer items are tried until one encodes within the frame.
pub(crate) fn fit_page<T: Clone>(
    items: Vec<T>,
    make: impl Fn(Vec<T>, bool) -> Response,
) -> Result<Response> {
    let mut n = items.len();
    loop {
        let more = n < items.len();
        let r = make(items[..n].to_vec(), more);
        match r.encode() {
            Ok(_) => return Ok(r),
            Err(Error::ValueTooBig) if n > 1 => n /= 2,
            Err(e) => return Err(e),
        }
    }
}

impl Filesystem {
    /// Runs one control request for `c`, issued on the inode `ino`: only a dispatcher, each arm
    /// calls the library method that does the work (and its permission checks).
    pub fn control(&self, ino: Ino, req: Request, c: &Caller) -> Result<Response> {
        match req {
            Request::Version => Ok(Response::Version {
                protocol: PROTOCOL_VERSION,
                program: env!("CARGO_PKG_VERSION").to_owned(),
            }),
            Request::SubvolumeList { after } => {
                let list = self.subvolume_list_for(c)?;
                let page: Vec<SubvolumeEntry> = list
                    .subvolumes
                    .into_iter()
                    .filter(|s| after.is_none_or(|a| s.id > a))
                    .collect();
                fit_page(page, |subvolumes, more| Response::Subvolumes {
                    subvolumes,
                    deleting: list.deleting,
                    deleting_bytes: list.deleting_bytes,
                    more,
                })
            }
            Request::SubvolumeShow => Ok(Response::Subvolume(self.subvolume_show(ino)?)),
            Request::SubvolumeCreate { name, mode } => {
                let attr = self.subvolume_create(ino, &name, mode, c)?;
                Ok(Response::Subvolume(self.subvolume_show(attr.ino)?))
            }
            Request::SubvolumeSnapshot {
                source,
                name,
                read_only,
            } => {
                let attr = self.subvolume_snapshot(source, ino, &name, read_only, c)?;
                Ok(Response::Subvolume(self.subvolume_show(attr.ino)?))
            }
            Request::SubvolumeDelete { name } => {
                self.subvolume_delete(ino, &name, c)?;
                Ok(Response::Done)
            }
            Request::SubvolumeSetReadOnly { read_only } => {
                self.subvolume_set_read_only(ino, read_only, c)?;
                Ok(Response::Done)
            }
            Request::Balance { usage } => {
                // It rewrites every subvolume's items: an administrator's act, as on btrfs.
                if c.uid != 0 {
                    return Err(Error::Perm);
                }
                Ok(Response::Balance(self.balance(usage, &mut |_, _| {})?))
            }
            Request::DiskUsage => {
                // As du: reading sizes needs search permission on the way, which the kernel
                // checked resolving the path the ioctl came through.
                Ok(Response::DiskUsage(self.disk_usage(ino)?))
            }
            Request::Space => Ok(Response::Space(self.space()?)),
            Request::KeyAdd { key } => Ok(Response::KeyAdded {
                identifier: self.add_key(&key.0, c)?.to_string(),
            }),
            Request::KeyRemove {
                identifier,
                all_users,
            } => {
                let id = parse_identifier(&identifier)?;
                Ok(Response::KeyRemoved(self.remove_key(&id, all_users, c)?))
            }
            Request::KeyStatus { identifier } => {
                let id = parse_identifier(&identifier)?;
                Ok(Response::KeyStatus(self.key_status(&id, c)))
            }
            Request::Reflink {
                source,
                src_offset,
                len,
                dest_offset,
            } => Ok(Response::Reflinked {
                bytes: self.reflink(source, src_offset, ino, dest_offset, len, c)?,
            }),
            Request::SetPolicy { policy } => {
                self.set_policy(ino, &policy, c)?;
                Ok(Response::Done)
            }
            Request::GetPolicy => {
                let policy = match self.get_policy(ino) {
                    Ok(p) => Some(p),
                    Err(Error::NoData) => None,
                    Err(e) => return Err(e),
                };
                // A subvolume's root: how much of it is still plaintext.
                let plaintext_bytes = if ino & ((1 << 48) - 1) == crate::items::ROOT_OBJECTID {
                    Some(self.plaintext_bytes(ino)?)
                } else {
                    None
                };
                Ok(Response::Policy {
                    policy,
                    plaintext_bytes,
                })
            }
            Request::Scrub => {
                // It reads every file's data and names paths anyone may not see: root only.
                if c.uid != 0 {
                    return Err(Error::Perm);
                }
                let mut r = self.scrub(&mut |_, _| {})?;
                // Keep the answer inside one frame: fewer listed sectors, the count stays.
                while r.bad.len() > 1 && encode_response_len(&r)? > MAX_PAYLOAD {
                    r.bad.truncate(r.bad.len() / 2);
                }
                Ok(Response::Scrub(r))
            }
        }
    }
}

/// Bytes a scrub report takes in a response frame.
fn encode_response_len(r: &ScrubReport) -> Result<usize> {
    serde_json::to_vec(r)
        .map(|v| v.len() + 64)
        .map_err(|_| Error::Invalid("scrub report does not encode"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timespec;

    fn entry(id: u64, path: &str) -> SubvolumeEntry {
        SubvolumeEntry {
            id,
            ino: id << 48 | 1,
            path: path.into(),
            parent: Some(1),
            read_only: true,
            snapshot_of: Some(0),
            generation: 9,
            otime: Timespec { sec: -5, nsec: 7 },
        }
    }

    #[test]
    fn the_ioctl_number_is_iowr_c_1() {
        // _IOWR('C', 1, 16383) as Linux's macros compute it.
        assert_eq!(IOCTL_CMD, 0xffff_4301);
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for r in [
            Request::Version,
            Request::SubvolumeList { after: Some(7) },
            Request::SubvolumeShow,
            Request::SubvolumeCreate {
                name: b"a\xff".to_vec(),
                mode: 0o755,
            },
            Request::SubvolumeSnapshot {
                source: 1 << 48 | 1,
                name: b"snap".to_vec(),
                read_only: true,
            },
            Request::SubvolumeDelete {
                name: b"x".to_vec(),
            },
            Request::SubvolumeSetReadOnly { read_only: false },
        ] {
            let f = r.encode().unwrap();
            let mut padded = f.clone();
            padded.resize(FRAME_SIZE, 0xaa);
            assert_eq!(Request::decode(&padded).unwrap(), r);
        }
        for r in [
            Response::Done,
            Response::Version {
                protocol: 1,
                program: "0.1.0".into(),
            },
            Response::Subvolumes {
                subvolumes: vec![entry(1, "a/b")],
                deleting: 2,
                deleting_bytes: 1 << 20,
                more: false,
            },
            Response::Subvolume(entry(3, "c")),
        ] {
            assert_eq!(Response::decode(&r.encode().unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        assert!(Request::decode(&[]).is_err());
        assert!(Request::decode(&[9, 0, 0, 0, b'{']).is_err());
        assert!(Request::decode(&[1, 0, 0, 0, b'{']).is_err());
        let other = br#"{"version":2,"body":"version"}"#;
        let mut f = (other.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(other);
        assert_eq!(Request::decode(&f).unwrap_err().errno(), libc::EPROTO);
        let unknown = br#"{"version":1,"body":"no_such_request"}"#;
        let mut f = (unknown.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(unknown);
        assert_eq!(Request::decode(&f).unwrap_err().errno(), libc::EINVAL);
    }

    /// A key is decoded into room for the largest from the start (no outgrown copies), and a
    /// frame is built in one buffer of a frame's size; a key too long, or a message too large
    /// for a frame, is an error.
    #[test]
    fn keys_decode_without_outgrown_copies() {
        let r = Request::KeyAdd {
            key: RawKey((1..=20).collect()),
        };
        let frame = r.encode().unwrap();
        assert_eq!(frame.capacity(), FRAME_SIZE);
        let Request::KeyAdd { key } = Request::decode(&frame).unwrap() else {
            panic!("not a key")
        };
        assert_eq!(key.0, (1..=20).collect::<Vec<u8>>());
        assert_eq!(key.0.capacity(), fscrypt::MAX_KEY_SIZE);
        let largest = Request::KeyAdd {
            key: RawKey(vec![7; fscrypt::MAX_KEY_SIZE]),
        };
        assert_eq!(
            Request::decode(&largest.encode().unwrap()).unwrap(),
            largest
        );
        let too_long = Request::KeyAdd {
            key: RawKey(vec![7; fscrypt::MAX_KEY_SIZE + 1]),
        };
        let err = Request::decode(&too_long.encode().unwrap()).unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL);
        let huge = Request::SubvolumeCreate {
            name: vec![b'a'; MAX_PAYLOAD],
            mode: 0,
        };
        assert!(matches!(huge.encode(), Err(Error::ValueTooBig)));
    }

    #[test]
    fn pages_shrink_to_fit_a_frame() {
        let many: Vec<SubvolumeEntry> = (0..1000).map(|id| entry(id, &"x".repeat(100))).collect();
        let r = fit_page(many, |subvolumes, more| Response::Subvolumes {
            subvolumes,
            deleting: 0,
            deleting_bytes: 0,
            more,
        })
        .unwrap();
        let Response::Subvolumes {
            subvolumes, more, ..
        } = &r
        else {
            panic!()
        };
        assert!(*more && !subvolumes.is_empty() && subvolumes.len() < 1000);
        assert!(r.encode().unwrap().len() <= FRAME_SIZE);
    }
}
