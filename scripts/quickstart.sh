#!/usr/bin/env bash
# The main job (the README's first command): build cowcrypt and show what it does so far:
# keys, then the container workflow on a mount, leaving no mount behind.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building cowcrypt (release)"
cargo build --release -q -p cowcrypt
bin=target/release/cowcrypt
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== a fresh 64-byte master key"
head -c 64 /dev/urandom > "$work/container.key"
echo "== its fscrypt key identifier (what the kernel's FS_IOC_ADD_ENCRYPTION_KEY returns)"
"$bin" key identifier "$work/container.key"

echo "== the xfstests test key (bytes 01..40) must give 69b2f6edeee720cce0577937eb8a6751"
python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(1, 65)))' | "$bin" key identifier

echo "== a bad key is refused with one line and status 1"
if head -c 8 /dev/urandom | "$bin" key identifier; then
    echo "unexpected success" >&2
    exit 1
fi
echo "== the container workflow on a mount (FUSE, as root)"
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then
    echo "(skipped: mounting needs root and /dev/fuse)"
else
    mnt="$work/mnt"
    "$bin" mkfs --size 256M --label quickstart "$work/disk.img"
    mkdir "$mnt"
    "$bin" mount "$work/disk.img" "$mnt"
    trap 'umount "$mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
    echo "-- 1. a base subvolume holds the image"
    "$bin" subvolume create "$mnt/base"
    mkdir -p "$mnt/base/etc"
    echo "base image v1" > "$mnt/base/etc/os-release"
    head -c 1M /dev/urandom > "$mnt/base/blob"
    echo "-- 2. per container: an O(1) snapshot, turned encrypted with the container's own key"
    "$bin" subvolume snapshot "$mnt/base" "$mnt/container1"
    id=$("$bin" key add "$mnt" "$work/container.key")
    echo "   key added: $id"
    "$bin" encrypt "$mnt/container1" --key "$id"
    echo "SECRET-QUICKSTART-MARKER container1 was here" >> "$mnt/container1/etc/os-release"
    head -c 256K /dev/urandom > "$mnt/container1/app.bin"
    echo "   base:       $(tail -1 "$mnt/base/etc/os-release")"
    echo "   container1: $(tail -1 "$mnt/container1/etc/os-release")"
    "$bin" policy "$mnt/container1"
    echo "-- 3. a package store reflinked in: plaintext extents stay shared in the encrypted scope"
    "$bin" subvolume create "$mnt/store"
    head -c 2M /dev/urandom > "$mnt/store/pkg.tar"
    cp --reflink=auto "$mnt/store/pkg.tar" "$mnt/container1/pkg.tar"
    "$bin" du "$mnt/container1/pkg.tar"
    echo "-- 4. a reflink across keys is refused (EXDEV), so cp copies, encrypted"
    head -c 64 /dev/urandom > "$work/other.key"
    other=$("$bin" key add "$mnt" "$work/other.key")
    mkdir "$mnt/container2"
    "$bin" encrypt "$mnt/container2" --key "$other"
    if "$bin" reflink "$mnt/container1/app.bin" "$mnt/container2/app.bin" 2>/dev/null; then
        echo "   unexpected: a cross-key reflink was allowed" >&2
        exit 1
    fi
    echo "   cowcrypt reflink: refused (cross-device link)"
    cp --reflink=auto "$mnt/container1/app.bin" "$mnt/container2/app.bin"
    "$bin" du "$mnt/container2/app.bin"
    echo "-- 5. removing the key while a file is open: it keeps working, new opens get ENOKEY"
    exec 3<"$mnt/container1/app.bin"
    "$bin" key remove "$mnt" "$id"
    "$bin" key status "$mnt" "$id"
    if cat "$mnt/container1/etc/os-release" 2>/dev/null; then
        echo "   unexpected: opened without the key" >&2
        exit 1
    fi
    echo "   new open: Required key not available; the open file still reads $(head -c 1M <&3 | wc -c) bytes"
    exec 3<&-
    "$bin" key status "$mnt" "$id"
    echo "-- 6. beyond fscrypt: authenticated encryption, a MAC per data unit (tampering is EIO)"
    mkdir "$mnt/ledger"
    "$bin" encrypt "$mnt/ledger" --key "$other" --authenticated
    echo "SECRET-QUICKSTART-MARKER ledger entry" > "$mnt/ledger/entries"
    head -c 512K /dev/urandom >> "$mnt/ledger/entries"
    "$bin" policy "$mnt/ledger"
    "$bin" scrub "$mnt" | tail -2
    echo "-- 7. a read-only snapshot refuses writes; deleting a container frees its space in the background"
    "$bin" subvolume snapshot -r "$mnt/base" "$mnt/base.ro"
    if (echo nope > "$mnt/base.ro/etc/os-release") 2>/dev/null; then
        echo "unexpected write to a read-only snapshot" >&2
        exit 1
    fi
    echo "   write refused: read-only file system"
    "$bin" subvolume delete "$mnt/base.ro"
    "$bin" subvolume list "$mnt"
    "$bin" df "$mnt"
    umount "$mnt"
    echo "-- 8. the raw image: no plaintext written in the encrypted container reaches it"
    if grep -q "SECRET-QUICKSTART-MARKER" "$work/disk.img"; then
        echo "   unexpected: the marker is in the raw image" >&2
        exit 1
    fi
    echo "   marker not found in $(du -h --apparent-size "$work/disk.img" | cut -f1) of image"
    echo "-- 9. keyless maintenance: fsck and scrub verify everything without any key"
    "$bin" fsck "$work/disk.img" | tail -1
    "$bin" scrub "$work/disk.img" | tail -1
fi
echo "quickstart: done"
