#!/usr/bin/env python3
"""Kernel fscrypt v2 through its ioctls, for bench/fs.sh (this machine's Debian has no fscryptctl).

    fscrypt.py add-key MOUNTPOINT KEYFILE   add the raw key (64 bytes) with
                                            FS_IOC_ADD_ENCRYPTION_KEY; prints its identifier
    fscrypt.py set-policy DIR ID            FS_IOC_SET_ENCRYPTION_POLICY on the empty directory:
                                            v2, AES-256-XTS contents, AES-256-CTS filenames,
                                            names padded to 32 bytes (fscryptctl's and
                                            `cowcrypt encrypt`'s defaults)
    fscrypt.py remove-key MOUNTPOINT ID     FS_IOC_REMOVE_ENCRYPTION_KEY (the kernel syncs and
                                            evicts the files unlocked by it)

Root only (keys added by identifier for all users). Standard library only. The structs are
those of include/uapi/linux/fscrypt.h.
"""

import fcntl
import os
import struct
import sys

_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction, kind, nr, size):
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


FS_IOC_SET_ENCRYPTION_POLICY = _ioc(_IOC_READ, "f", 19, 12)
FS_IOC_ADD_ENCRYPTION_KEY = _ioc(_IOC_READ | _IOC_WRITE, "f", 23, 80)
FS_IOC_REMOVE_ENCRYPTION_KEY = _ioc(_IOC_READ | _IOC_WRITE, "f", 24, 64)
FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER = 2
FSCRYPT_POLICY_V2 = 2
FSCRYPT_MODE_AES_256_XTS = 1
FSCRYPT_MODE_AES_256_CTS = 4
FSCRYPT_POLICY_FLAGS_PAD_32 = 0x03


def add_key(mountpoint, keyfile):
    with open(keyfile, "rb") as f:
        key = f.read()
    if len(key) != 64:
        sys.exit(f"{keyfile}: {len(key)} bytes, want 64")
    # struct fscrypt_add_key_arg: key_spec {type, reserved, u.identifier[32]}, raw_size,
    # key_id, reserved[8] (u32), then raw[].
    arg = bytearray(struct.pack("<II32sII32s", FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER, 0, b"",
                                len(key), 0, b"") + key)
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_ADD_ENCRYPTION_KEY, arg, True)
    finally:
        os.close(fd)
    print(bytes(arg[8:24]).hex())


def set_policy(directory, ident):
    # struct fscrypt_policy_v2: version, contents mode, filenames mode, flags,
    # log2_data_unit_size (0: the filesystem block), reserved[3], master_key_identifier[16].
    policy = struct.pack("<BBBBB3s16s", FSCRYPT_POLICY_V2, FSCRYPT_MODE_AES_256_XTS,
                         FSCRYPT_MODE_AES_256_CTS, FSCRYPT_POLICY_FLAGS_PAD_32, 0, b"",
                         bytes.fromhex(ident))
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, policy)
    finally:
        os.close(fd)


def remove_key(mountpoint, ident):
    # struct fscrypt_remove_key_arg: key_spec, removal_status_flags, reserved[5].
    arg = bytearray(struct.pack("<II32sI20s", FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER, 0,
                                bytes.fromhex(ident), 0, b""))
    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_REMOVE_ENCRYPTION_KEY, arg, True)
    finally:
        os.close(fd)
    status = struct.unpack_from("<I", arg, 40)[0]
    if status:
        # 1: files still in use (the key stays until they are closed); 2: other users'
        # claims remain.
        print(f"key {ident} removal status 0x{status:x}", file=sys.stderr)


def main():
    commands = {"add-key": add_key, "set-policy": set_policy, "remove-key": remove_key}
    if len(sys.argv) != 4 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](sys.argv[2], sys.argv[3])


if __name__ == "__main__":
    main()
