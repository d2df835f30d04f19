#!/usr/bin/env bash
# The main job (the README's first command): build cowcrypt and show what it does so far.
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
echo "== a filesystem: mkfs, mount (FUSE, as root), use it, unmount, fsck"
if [ "$(id -u)" -ne 0 ] || [ ! -e /dev/fuse ]; then
    echo "(skipped: mounting needs root and /dev/fuse)"
else
    "$bin" mkfs --size 256M --label quickstart "$work/disk.img"
    mkdir "$work/mnt"
    "$bin" mount "$work/disk.img" "$work/mnt"
    trap 'umount "$work/mnt" 2>/dev/null; rm -rf "$work"' EXIT
    mkdir -p "$work/mnt/docs"
    echo "hello from cowcrypt" > "$work/mnt/docs/hello.txt"
    ln -s docs/hello.txt "$work/mnt/hello"
    cp --reflink=auto "$work/container.key" "$work/mnt/docs/key.copy"
    ls -lR "$work/mnt"
    umount "$work/mnt"
    "$bin" fsck "$work/disk.img"
    "$bin" inspect "$work/disk.img" | head -20
fi
echo "quickstart: done"
