//! The client side of the control channel: sends one [`Request`] to the filesystem mounted at a
//! path (any file or directory in the mount) and returns its [`Response`]. The frame is
//! docs/CONTROL.md's: one `_IOWR('C', 1, [u8; 16383])` ioctl, request in, response out.

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use cowfs::control::{FRAME_SIZE, IOCTL_CMD, Request, Response};

/// Sends `req` to the cowcrypt mount holding `path` and waits for the answer. An errno from the
/// daemon, or a path that is not on a cowcrypt mount, becomes a one-line error.
pub fn call(path: &Path, req: &Request) -> Result<Response> {
    // Only files and directories: a device node would take the ioctl to its driver, and a
    // FIFO would block the open.
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot find {}", path.display()))?;
    if !meta.is_file() && !meta.is_dir() {
        bail!("{} is not a file or directory", path.display());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // A request may carry a master key: both buffers are wiped when they go.
    let frame = zeroize::Zeroizing::new(
        req.encode()
            .context("request too large for the control channel")?,
    );
    let mut buf = zeroize::Zeroizing::new(vec![0u8; FRAME_SIZE]);
    buf[..frame.len()].copy_from_slice(&frame);
    // SAFETY: the fd is open for the call's length; the ioctl number encodes FRAME_SIZE bytes
    // read and written, which is exactly the length of `buf`, so the kernel touches no memory
    // past it.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            IOCTL_CMD as libc::Ioctl,
            buf.as_mut_ptr() as *mut libc::c_void,
        )
    };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOTTY) {
            bail!("{} is not on a cowcrypt mount", path.display());
        }
        if err.raw_os_error() == Some(libc::EPROTO) {
            bail!(
                "the cowcrypt daemon serving {} speaks another control protocol version",
                path.display()
            );
        }
        return Err(err).with_context(|| format!("{}", path.display()));
    }
    Response::decode(&buf).context("the daemon's answer does not decode")
}
