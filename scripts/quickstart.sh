#!/usr/bin/env bash
# The main job (the README's first command): build cowcrypt and show what it does so far:
# keys, then the container workflow on a mount (encryption steps join as they land).
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
echo "== a filesystem: mkfs, mount (FUSE, as root), the container workflow so far, fsck"
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then
    echo "(skipped: mounting needs root and /dev/fuse)"
else
    mnt="$work/mnt"
    "$bin" mkfs --size 256M --label quickstart "$work/disk.img"
    mkdir "$mnt"
    "$bin" mount "$work/disk.img" "$mnt"
    trap 'umount "$mnt" 2>/dev/null; rm -rf "$work"' EXIT
    echo "-- 1. a base subvolume holds the image"
    "$bin" subvolume create "$mnt/base"
    mkdir -p "$mnt/base/etc"
    echo "base image v1" > "$mnt/base/etc/os-release"
    head -c 1M /dev/urandom > "$mnt/base/blob"
    echo "-- 2. per container: an O(1) snapshot; writes stay in the container"
    "$bin" subvolume snapshot "$mnt/base" "$mnt/container1"
    echo "container1 was here" >> "$mnt/container1/etc/os-release"
    echo "   base:       $(tail -1 "$mnt/base/etc/os-release")"
    echo "   container1: $(tail -1 "$mnt/container1/etc/os-release")"
    echo "-- 3. a package store reflinked in (copy_file_range shares the extents)"
    "$bin" subvolume create "$mnt/store"
    head -c 2M /dev/urandom > "$mnt/store/pkg.tar"
    cp --reflink=auto "$mnt/store/pkg.tar" "$mnt/container1/pkg.tar"
    cmp "$mnt/store/pkg.tar" "$mnt/container1/pkg.tar" && echo "   pkg.tar shared into container1"
    echo "-- 4. a read-only snapshot refuses writes"
    "$bin" subvolume snapshot -r "$mnt/container1" "$mnt/container1.ro"
    if (echo nope > "$mnt/container1.ro/etc/os-release") 2>/dev/null; then
        echo "unexpected write to a read-only snapshot" >&2
        exit 1
    fi
    echo "   write refused: read-only file system"
    "$bin" subvolume list "$mnt"
    echo "-- 5. the container is deleted; its space is freed in the background"
    "$bin" subvolume delete "$mnt/container1.ro"
    "$bin" subvolume delete "$mnt/container1"
    "$bin" subvolume list "$mnt"
    umount "$mnt"
    "$bin" fsck "$work/disk.img"
    "$bin" inspect "$work/disk.img" | head -12
fi
echo "quickstart: done"
