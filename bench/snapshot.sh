#!/usr/bin/env bash
# Snapshot cost: cowcrypt vs btrfs, in the same run, on the same disk.
#
#   bench/snapshot.sh [--fs cowcrypt,btrfs] [--files 10000,100000] [--reps 5] [--out FILE]
#
# For each filesystem and each file count N: a fresh subvolume gets N files of 100 bytes (in
# directories of 1,000), `sync`, then the subvolume is snapshotted --reps times (each a new
# snapshot of the same source; `cowcrypt subvolume snapshot` vs `btrfs subvolume snapshot`,
# both durable on return) and the median wall time of the command is kept. The script prints a
# Markdown table with the medians, the ratio largest/smallest N per filesystem (the goal: within
# 1.5x, i.e. a snapshot costs O(1)), and cowcrypt/btrfs per N; also written to --out (default
# target/bench-snapshot-last-run.md).
#
# Setup: btrfs (mkfs.btrfs defaults) on an 8 GiB sparse image on a loop device; cowcrypt's
# image an 8 GiB sparse file mounted with `cowcrypt mount -f`. Both images live in one scratch
# directory under $COWCRYPT_SCRATCH (default /var/tmp; refused if tmpfs). cowcrypt is $COWCRYPT
# or target/release/cowcrypt. Needs root, btrfs-progs (apt-get install btrfs-progs), python3.
# Every mount and loop device is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib-mounts.sh
. "$ROOT/scripts/lib-mounts.sh"

FSLIST=cowcrypt,btrfs
COUNTS=10000,100000
REPS=5
OUT=$ROOT/target/bench-snapshot-last-run.md
while [ $# -gt 0 ]; do
    case $1 in
        --fs) FSLIST=$2; shift 2 ;;
        --files) COUNTS=$2; shift 2 ;;
        --reps) REPS=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/snapshot.sh needs root (loop devices, mounts)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }
IFS=, read -r -a FSES <<<"$FSLIST"
IFS=, read -r -a NS <<<"$COUNTS"
for fs in "${FSES[@]}"; do
    case $fs in
        cowcrypt) BIN=$(find_cowcrypt "$ROOT") ;;
        btrfs)
            for tool in mkfs.btrfs btrfs losetup; do
                command -v "$tool" >/dev/null ||
                    { echo "missing $tool (apt-get install btrfs-progs)" >&2; exit 1; }
            done
            ;;
        *) echo "unknown filesystem $fs" >&2; exit 2 ;;
    esac
done

WORK=$(scratch_dir snapshot)
cleanup() {
    cleanup_mounts
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mnt_btrfs() {
    local image=$1 dir=$2 dev
    mkdir -p "$dir"
    dev=$(losetup --find --show "$image")
    _OUR_LOOPS+=("$dev")
    mount -t btrfs "$dev" "$dir"
    _OUR_MOUNTS+=("$dir")
}

setup_fs() {
    local fs=$1 dir=$WORK/$1.mnt
    case $fs in
        btrfs)
            truncate -s 8G "$WORK/btrfs.img"
            mkfs.btrfs -q -f "$WORK/btrfs.img" >/dev/null
            mnt_btrfs "$WORK/btrfs.img" "$dir"
            ;;
        cowcrypt)
            "$BIN" mkfs "$WORK/cowcrypt.img" --size 8G >/dev/null
            mnt_cowcrypt "$BIN" "$WORK/cowcrypt.img" "$dir" "$WORK/cowcrypt-daemon.log"
            ;;
    esac
}

subvol_create() {
    case $1 in
        btrfs) btrfs -q subvolume create "$2" >/dev/null ;;
        cowcrypt) "$BIN" subvolume create "$2" >/dev/null ;;
    esac
}

snapshot() {
    case $1 in
        btrfs) btrfs -q subvolume snapshot "$2" "$3" >/dev/null ;;
        cowcrypt) "$BIN" subvolume snapshot "$2" "$3" >/dev/null ;;
    esac
}

# N files of 100 bytes under $1, 1,000 per directory.
fill() {
    python3 - "$1" "$2" <<'PY'
import os, sys
top, n = sys.argv[1], int(sys.argv[2])
data = b"x" * 100
for i in range(n):
    d = os.path.join(top, f"d{i // 1000:04}")
    if i % 1000 == 0:
        os.mkdir(d)
    with open(os.path.join(d, f"f{i:06}"), "wb") as f:
        f.write(data)
PY
}

# Median wall time in milliseconds of `snapshot FS SRC DST-k` for k = 1..REPS.
time_snapshots() {
    local fs=$1 src=$2 k t0 t1 times=()
    for ((k = 1; k <= REPS; k++)); do
        t0=$(date +%s%N)
        snapshot "$fs" "$src" "$src-snap$k"
        t1=$(date +%s%N)
        times+=("$(((t1 - t0) / 1000))")
    done
    python3 -c 'import statistics,sys; print(f"{statistics.median(map(int, sys.argv[1:])) / 1000:.1f}")' "${times[@]}"
}

declare -A R=()
for fs in "${FSES[@]}"; do
    log "$fs: mkfs and mount"
    setup_fs "$fs"
    for n in "${NS[@]}"; do
        src=$WORK/$fs.mnt/src$n
        subvol_create "$fs" "$src"
        log "$fs: $n files"
        t0=$(date +%s)
        fill "$src" "$n"
        sync
        log "$fs: filled in $(($(date +%s) - t0)) s; $REPS snapshots"
        R[$fs,$n]=$(time_snapshots "$fs" "$src")
        log "$fs: median snapshot of $n files: ${R[$fs,$n]} ms"
    done
    umount_one "$WORK/$fs.mnt"
done

ratio() { python3 -c 'import sys; a, b = map(float, sys.argv[1:]); print(f"{a / b:.2f}" if b > 0 else "-")' "$1" "$2"; }

{
    echo "Snapshot of a subvolume of N files: median of $REPS, milliseconds ($(date -u +%Y-%m-%dT%H:%MZ), $(uname -r))"
    echo
    printf '| files |'
    for fs in "${FSES[@]}"; do printf ' %s ms |' "$fs"; done
    [[ " ${FSES[*]} " == *" cowcrypt "* && " ${FSES[*]} " == *" btrfs "* ]] && printf ' cowcrypt/btrfs |'
    echo
    printf '|---|'
    for _ in "${FSES[@]}"; do printf -- '---|'; done
    [[ " ${FSES[*]} " == *" cowcrypt "* && " ${FSES[*]} " == *" btrfs "* ]] && printf -- '---|'
    echo
    for n in "${NS[@]}"; do
        printf '| %s |' "$n"
        for fs in "${FSES[@]}"; do printf ' %s |' "${R[$fs,$n]}"; done
        [[ " ${FSES[*]} " == *" cowcrypt "* && " ${FSES[*]} " == *" btrfs "* ]] &&
            printf ' %s |' "$(ratio "${R[cowcrypt,$n]}" "${R[btrfs,$n]}")"
        echo
    done
    first=${NS[0]}
    last=${NS[${#NS[@]}-1]}
    echo
    for fs in "${FSES[@]}"; do
        r=$(ratio "${R[$fs,$last]}" "${R[$fs,$first]}")
        verdict=
        if [ "$fs" = cowcrypt ]; then
            verdict=$(python3 -c 'import sys; r = float(sys.argv[1]); print("met" if max(r, 1 / r) <= 1.5 else "MISSED")' "$r" 2>/dev/null || echo "-")
            verdict=" (goal: within 1.5x either way: $verdict)"
        fi
        echo "- $fs: $last files / $first files = $r$verdict"
    done
} | tee "$OUT"
