#!/usr/bin/env bash
# Filesystem benchmark: cowcrypt (plaintext and encrypted) vs gocryptfs vs ext4, all in the same
# run, on the same disk.
#
#   bench/fs.sh [--fs cowcrypt,cowcrypt-enc,gocryptfs,ext4] [--size 1G] [--runtime 20] [--files 10000]
#               [--out FILE]
#
# Each filesystem gets, in this order:
#   seq-write-nosync  fio, 1 MiB writes of a --size file, no fsync (then deleted)
#   seq-write   fio, 1 MiB writes of a --size file, fsync at the end
#   seq-read    fio, 1 MiB reads of that file after dropping every cache (cold)
#   rand-read   fio, 4 KiB random reads of that file for --runtime seconds (cold start)
#   rand-write  fio, 4 KiB random writes into that file for --runtime seconds, fsync at the end
#   create      --files new 4 KiB files in one directory (open, write, close each), then sync
# and the script prints a Markdown table with the ratios cowcrypt/gocryptfs and cowcrypt/ext4
# against the goals (sequential >= 1.5x gocryptfs, file creation >= gocryptfs), also written to
# --out (default target/bench-last-run.md).
#
# Setup: ext4 on a loop image; gocryptfs (-init -extpass 'echo pw') on a directory of a second
# ext4 loop image; cowcrypt's image a plain file. All images live in one scratch directory
# under $COWCRYPT_SCRATCH (default /var/tmp; refused if tmpfs), so all three share one disk.
# cowcrypt is $COWCRYPT or target/release/cowcrypt. Needs root, fio, gocryptfs, fuse3, python3.
# Every mount and loop device is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib-mounts.sh
. "$ROOT/scripts/lib-mounts.sh"

FSLIST=cowcrypt,gocryptfs,ext4
SIZE=1G
RUNTIME=20
NFILES=10000
OUT=$ROOT/target/bench-last-run.md
while [ $# -gt 0 ]; do
    case $1 in
        --fs) FSLIST=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --files) NFILES=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/fs.sh needs root (loop devices, drop_caches)" >&2; exit 1; }
for tool in fio python3 mkfs.ext4 losetup; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install fio ...)" >&2; exit 1; }
done
IFS=, read -r -a FSES <<<"$FSLIST"
for fs in "${FSES[@]}"; do
    case $fs in
        cowcrypt | cowcrypt-enc) BIN=$(find_cowcrypt "$ROOT") ;;
        gocryptfs) command -v gocryptfs >/dev/null || { echo "missing gocryptfs" >&2; exit 1; } ;;
        ext4) ;;
        *) echo "unknown filesystem $fs" >&2; exit 2 ;;
    esac
done

WORK=$(scratch_dir bench)
cleanup() {
    cleanup_mounts
    rm -rf "$WORK"
}
CHILD=
trap cleanup EXIT
trap '[ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null; exit 130' INT TERM
RAW=$WORK/raw
mkdir -p "$RAW"

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# Mounts filesystem $1 on $WORK/$1.mnt.
setup_fs() {
    local fs=$1 dir=$WORK/$1.mnt
    case $fs in
        ext4)
            truncate -s 8G "$WORK/ext4.img"
            mkfs.ext4 -q -F "$WORK/ext4.img"
            mnt_ext4 "$WORK/ext4.img" "$dir"
            ;;
        gocryptfs)
            truncate -s 8G "$WORK/gocryptfs-backing.img"
            mkfs.ext4 -q -F "$WORK/gocryptfs-backing.img"
            mnt_ext4 "$WORK/gocryptfs-backing.img" "$WORK/gocryptfs-backing"
            mkdir -p "$WORK/gocryptfs-backing/cipher"
            gocryptfs -q -init -extpass 'echo pw' "$WORK/gocryptfs-backing/cipher" >/dev/null
            mnt_gocryptfs "$WORK/gocryptfs-backing/cipher" "$dir"
            ;;
        cowcrypt)
            "$BIN" mkfs "$WORK/cowcrypt.img" --size 8G >/dev/null
            mnt_cowcrypt "$BIN" "$WORK/cowcrypt.img" "$dir" "$RAW/cowcrypt-daemon.log"
            ;;
        cowcrypt-enc)
            # The same mount with the benchmark's files in a directory encrypted with an
            # fscrypt v2 policy (AES-256-XTS contents, a key and nonce per extent).
            "$BIN" mkfs "$WORK/cowcrypt-enc.img" --size 8G >/dev/null
            mkdir -p "$WORK/cowcrypt-enc.root"
            mnt_cowcrypt "$BIN" "$WORK/cowcrypt-enc.img" "$WORK/cowcrypt-enc.root" \
                "$RAW/cowcrypt-enc-daemon.log"
            head -c 64 /dev/urandom > "$WORK/bench.key"
            local id
            id=$("$BIN" key add "$WORK/cowcrypt-enc.root" "$WORK/bench.key")
            mkdir "$WORK/cowcrypt-enc.root/enc"
            "$BIN" encrypt "$WORK/cowcrypt-enc.root/enc" --key "$id" >/dev/null
            rmdir "$dir" 2>/dev/null || true
            ln -s "$WORK/cowcrypt-enc.root/enc" "$dir"
            ;;
    esac
}

# fio job on file $2 with name $1 and the remaining arguments; JSON to $RAW.
run_fio() {
    local name=$1 file=$2
    shift 2
    # In the background and waited for, so Ctrl-C or TERM cleans up at once (bash runs traps
    # only after a foreground child ends).
    fio --name="$name" --filename="$file" --ioengine=psync --numjobs=1 --fallocate=none \
        --output-format=json --output="$RAW/$name.json" "$@" >/dev/null &
    CHILD=$!
    wait "$CHILD"
    CHILD=
}

# Prints one fio result from $RAW/$1.json: $2 is read or write, $3 is bw (MiB/s) or iops.
fio_value() {
    python3 - "$RAW/$1.json" "$2" "$3" <<'PY'
import json, sys
job = json.load(open(sys.argv[1]))["jobs"][0][sys.argv[2]]
print(f"{job['bw_bytes'] / 2**20:.1f}" if sys.argv[3] == "bw" else f"{job['iops']:.0f}")
PY
}

declare -A R=()
bench_fs() {
    local fs=$1 dir=$WORK/$1.mnt t0 t1
    log "$fs: sequential write ($SIZE), no fsync"
    run_fio "$fs-seq-write-nosync" "$dir/seq0" --rw=write --bs=1M --size="$SIZE"
    R[$fs,seq-write-nosync]=$(fio_value "$fs-seq-write-nosync" write bw)
    rm -f "$dir/seq0"
    drop_caches
    log "$fs: sequential write ($SIZE), fsync at the end"
    run_fio "$fs-seq-write" "$dir/seq" --rw=write --bs=1M --size="$SIZE" --end_fsync=1
    R[$fs,seq-write]=$(fio_value "$fs-seq-write" write bw)
    drop_caches
    log "$fs: sequential read, cold"
    run_fio "$fs-seq-read" "$dir/seq" --rw=read --bs=1M --size="$SIZE"
    R[$fs,seq-read]=$(fio_value "$fs-seq-read" read bw)
    drop_caches
    log "$fs: random 4 KiB reads (${RUNTIME}s)"
    run_fio "$fs-rand-read" "$dir/seq" --rw=randread --bs=4k --size="$SIZE" \
        --runtime="$RUNTIME" --time_based --randrepeat=1
    R[$fs,rand-read]=$(fio_value "$fs-rand-read" read iops)
    log "$fs: random 4 KiB writes (${RUNTIME}s)"
    run_fio "$fs-rand-write" "$dir/seq" --rw=randwrite --bs=4k --size="$SIZE" \
        --runtime="$RUNTIME" --time_based --end_fsync=1 --randrepeat=1
    R[$fs,rand-write]=$(fio_value "$fs-rand-write" write iops)
    drop_caches
    log "$fs: creating $NFILES files of 4 KiB"
    t0=$(date +%s.%N)
    python3 - "$dir/small" "$NFILES" <<'PY'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
os.mkdir(d)
buf = b"\x5a" * 4096
for i in range(n):
    fd = os.open(f"{d}/f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, buf)
    os.close(fd)
PY
    sync
    t1=$(date +%s.%N)
    R[$fs,create]=$(python3 -c "print(f'{$NFILES / ($t1 - $t0):.0f}')")
}

for fs in "${FSES[@]}"; do
    setup_fs "$fs"
    bench_fs "$fs"
    if [ "$fs" = cowcrypt-enc ]; then
        umount_one "$WORK/cowcrypt-enc.root"
    else
        umount_one "$WORK/$fs.mnt"
    fi
    if [ "$fs" = gocryptfs ]; then umount_one "$WORK/gocryptfs-backing"; fi
done

# The table: values per filesystem, then the ratios where both sides ran.
TESTS=(seq-write-nosync seq-write seq-read rand-read rand-write create)
declare -A UNIT=([seq-write-nosync]="MiB/s" [seq-write]="MiB/s" [seq-read]="MiB/s" [rand-read]="IOPS" [rand-write]="IOPS" [create]="files/s")
declare -A GOAL=([seq-write]=1.5 [seq-read]=1.5 [create]=1.0)
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
has() { [[ ",$FSLIST," == *",$1,"* ]]; }
{
    echo "| test | unit |$(for fs in "${FSES[@]}"; do printf ' %s |' "$fs"; done) cowcrypt/gocryptfs | cowcrypt/ext4 | goal |"
    echo "|---|---|$(for _ in "${FSES[@]}"; do printf -- '---:|'; done)---:|---:|---|"
    for t in "${TESTS[@]}"; do
        row="| $t | ${UNIT[$t]} |"
        for fs in "${FSES[@]}"; do row+=" ${R[$fs,$t]} |"; done
        cg=-; ce=-; goal=-
        if has cowcrypt && has gocryptfs; then
            cg=$(ratio "${R[cowcrypt,$t]}" "${R[gocryptfs,$t]}")
            if [ -n "${GOAL[$t]:-}" ]; then
                if python3 -c "import sys; sys.exit(0 if $cg >= ${GOAL[$t]} else 1)"; then
                    goal="met (>= ${GOAL[$t]}x gocryptfs)"
                else
                    goal="MISSED (>= ${GOAL[$t]}x gocryptfs)"
                fi
            fi
        fi
        if has cowcrypt && has ext4; then ce=$(ratio "${R[cowcrypt,$t]}" "${R[ext4,$t]}"); fi
        echo "$row $cg | $ce | $goal |"
    done
    if has cowcrypt-enc; then
        # Encryption's own goals (the extent-encryption issue): at least 90% of plaintext
        # cowcrypt; sequential write at least 2x gocryptfs; cold read at least gocryptfs.
        echo
        echo "| test | cowcrypt-enc/cowcrypt | goal | cowcrypt-enc/gocryptfs | goal |"
        echo "|---|---:|---|---:|---|"
        declare -A EGOAL=([seq-write]=2.0 [seq-read]=1.0)
        for t in "${TESTS[@]}"; do
            ep=-; epg=-; eg=-; egg=-
            if has cowcrypt; then
                ep=$(ratio "${R[cowcrypt-enc,$t]}" "${R[cowcrypt,$t]}")
                if python3 -c "import sys; sys.exit(0 if $ep >= 0.9 else 1)"; then
                    epg="met (>= 0.9)"
                else
                    epg="MISSED (>= 0.9)"
                fi
            fi
            if has gocryptfs; then
                eg=$(ratio "${R[cowcrypt-enc,$t]}" "${R[gocryptfs,$t]}")
                if [ -n "${EGOAL[$t]:-}" ]; then
                    if python3 -c "import sys; sys.exit(0 if $eg >= ${EGOAL[$t]} else 1)"; then
                        egg="met (>= ${EGOAL[$t]}x)"
                    else
                        egg="MISSED (>= ${EGOAL[$t]}x)"
                    fi
                fi
            fi
            echo "| $t | $ep | $epg | $eg | $egg |"
        done
    fi
    echo
    echo "size $SIZE, random-I/O runtime ${RUNTIME}s, $NFILES files; $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; kernel $(uname -r)"
} | tee "$OUT"
log "table written to $OUT"
