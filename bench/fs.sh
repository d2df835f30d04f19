#!/usr/bin/env bash
# Filesystem benchmark: cowcrypt (plaintext and encrypted) vs gocryptfs vs ext4 (plain and with
# kernel fscrypt) vs the raw image file, all in the same run, on the same disk.
#
#   bench/fs.sh [--fs cowcrypt,cowcrypt-enc,gocryptfs,ext4,ext4-fscrypt,raw,image] [--size 1G]
#               [--runtime 20] [--files 10000] [--repeat 3]
#               [--out FILE]
#
# --fs picks and orders the columns (default cowcrypt,gocryptfs,ext4). Every filesystem is
# mounted at the start; each test then runs --repeat rounds, a round visiting every filesystem
# in turn, and keeps the median per filesystem (interleaving spreads the host's drift over all
# columns alike). The tests, in this order:
#   seq-write-nosync  fio, 1 MiB writes of a --size file, no fsync (then deleted)
#   seq-write   fio, 1 MiB writes of a --size file, fsync at the end
#   seq-read    fio, 1 MiB reads of that file after dropping every cache (cold)
#   rand-read   fio, 4 KiB random reads of that file for --runtime seconds (cold start)
#   rand-write  fio, 4 KiB random writes into that file for --runtime seconds, fsync at the end
#   create      --files new 4 KiB files in one directory (open, write, close each), then sync
# and the script prints a Markdown table with the ratios cowcrypt/gocryptfs and cowcrypt/ext4,
# also written to --out (default target/bench-last-run.md). With cowcrypt-enc a second table
# gives its ratios to plaintext cowcrypt, gocryptfs, the image file's own bytes, a raw file
# beside it and ext4-fscrypt. Ratios are judged against the goals in bench/goals (which
# bench/pool.py reads too).
#
# Setup: ext4 on a loop image; gocryptfs (-init -extpass 'echo pw') on a directory of a second
# ext4 loop image; ext4-fscrypt on a third (mkfs.ext4 -O encrypt), its files in a directory
# under a kernel fscrypt v2 policy (AES-256-XTS contents, AES-256-CTS names, a random 64-byte
# key added with FS_IOC_ADD_ENCRYPTION_KEY through bench/fscrypt.py); cowcrypt's image a plain
# file, one mount for both cowcrypt columns (plain/ and enc/ in it, an fscrypt v2 policy on
# enc/); raw a plain --size file written and read beside it (sequential rows only: the disk and
# host filesystem under cowcrypt's image); image (seq-read only, needs cowcrypt-enc) the bytes of
# cowcrypt's image file that hold enc/seq, read cold by the same fio job as raw, in file order
# (found with `cowcrypt inspect --json` on a remount before the read rows). All of it lives in
# one scratch directory under $COWCRYPT_SCRATCH (default /var/tmp; refused if tmpfs), so all
# share one disk.
# cowcrypt is $COWCRYPT or target/release/cowcrypt. Needs root, fio, gocryptfs, fuse3, python3.
# Every mount and loop device is removed on exit, also on failure or Ctrl-C, and the fscrypt
# key is removed before its filesystem is unmounted.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib-mounts.sh
. "$ROOT/scripts/lib-mounts.sh"
# shellcheck source=bench/lib-fio.sh
. "$ROOT/bench/lib-fio.sh"

FSLIST=cowcrypt,gocryptfs,ext4
REPEAT=3
SIZE=1G
RUNTIME=20
NFILES=10000
OUT=$ROOT/target/bench-last-run.md
while [ $# -gt 0 ]; do
    case $1 in
        --fs) FSLIST=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
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
has() { [[ ",$FSLIST," == *",$1,"* ]]; }
for fs in "${FSES[@]}"; do
    case $fs in
        cowcrypt | cowcrypt-enc) BIN=$(find_cowcrypt "$ROOT") ;;
        gocryptfs) command -v gocryptfs >/dev/null || { echo "missing gocryptfs" >&2; exit 1; } ;;
        ext4 | raw) ;;
        image)
            has cowcrypt-enc ||
                { echo "--fs image reads the bytes of cowcrypt-enc's file: list cowcrypt-enc too" >&2; exit 2; } ;;
        ext4-fscrypt)
            [ -e /sys/fs/ext4/features/encryption ] ||
                { echo "this kernel's ext4 has no encryption (CONFIG_FS_ENCRYPTION)" >&2; exit 1; } ;;
        *) echo "unknown filesystem $fs" >&2; exit 2 ;;
    esac
done

WORK=$(scratch_dir bench)
# The identifier of the fscrypt key added to ext4-fscrypt, while it is there.
FSCRYPT_KEY=
remove_fscrypt_key() {
    if [ -n "$FSCRYPT_KEY" ]; then
        # The kernel syncs and evicts the files the key unlocked. If this fails, the unmount
        # that follows drops the filesystem's keyring with it.
        python3 "$ROOT/bench/fscrypt.py" remove-key "$WORK/ext4-fscrypt.root" "$FSCRYPT_KEY" ||
            log "removing fscrypt key $FSCRYPT_KEY failed; the unmount drops it"
        FSCRYPT_KEY=
    fi
}
# This VM reports free memory to its host (virtio-balloon free page reporting): within seconds
# of being freed, say by drop_caches, pages go back to the host, and whoever touches memory next
# pays the host to fault them in again. A 1 GiB write through a FUSE mount, which touches two or
# three times the memory of a plain file's, ran about 1.7x slower as the first after 20 s of idle
# than straight after another (bench/RESULTS.md, run 33). Reporting is stopped for the run (an
# order above the largest makes no block eligible) and the free memory touched once, so every
# measurement finds it backed; the old order is restored on exit.
REPORTING=/sys/module/page_reporting/parameters/page_reporting_order
REPORTING_WAS=
stop_page_reporting() {
    [ -w "$REPORTING" ] || return 0
    local was
    was=$(cat "$REPORTING")
    if echo 11 >"$REPORTING" 2>/dev/null; then
        REPORTING_WAS=$was
        log "free page reporting stopped for the run (page_reporting_order $was -> 11)"
        # Touch what the run may use, so no page of it is still with the host.
        python3 -c 'b = bytearray(6 << 30)
for i in range(0, len(b), 4096): b[i] = 1'
    else
        log "free page reporting could not be stopped; measurements may pay for host page faults"
    fi
}
restore_page_reporting() {
    if [ -n "$REPORTING_WAS" ]; then
        echo "$REPORTING_WAS" >"$REPORTING" || log "could not restore page_reporting_order $REPORTING_WAS"
        REPORTING_WAS=
    fi
}
cleanup() {
    remove_fscrypt_key
    cleanup_mounts
    restore_page_reporting
    rm -rf "$WORK"
}
CHILD=
trap cleanup EXIT
trap '[ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null; exit 130' INT TERM
RAW=$WORK/raw
mkdir -p "$RAW"

# cowcrypt and cowcrypt-enc share one image and mount, each in a directory of its own (plain/
# and enc/): two images made a second apart in this directory read at speeds 1.5x apart on this
# host, whatever they hold (bench/RESULTS.md, run 28). Made by the first of the two set up.
cowcrypt_root() {
    if [ ! -e "$WORK/cowcrypt.img" ]; then
        "$BIN" mkfs "$WORK/cowcrypt.img" --size 16G >/dev/null
        mkdir -p "$WORK/cowcrypt.root"
        mount_cowcrypt_root
    fi
}
mount_cowcrypt_root() {
    mnt_cowcrypt "$BIN" "$WORK/cowcrypt.img" "$WORK/cowcrypt.root" "$RAW/cowcrypt-daemon.log"
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
            cowcrypt_root
            mkdir "$WORK/cowcrypt.root/plain"
            rmdir "$dir" 2>/dev/null || true
            ln -s "$WORK/cowcrypt.root/plain" "$dir"
            ;;
        cowcrypt-enc)
            # The benchmark's files in a directory encrypted with an fscrypt v2 policy
            # (AES-256-XTS contents, a key and nonce per extent).
            cowcrypt_root
            head -c 64 /dev/urandom > "$WORK/bench.key"
            local id
            id=$("$BIN" key add "$WORK/cowcrypt.root" "$WORK/bench.key")
            mkdir "$WORK/cowcrypt.root/enc"
            "$BIN" encrypt "$WORK/cowcrypt.root/enc" --key "$id" >/dev/null
            rmdir "$dir" 2>/dev/null || true
            ln -s "$WORK/cowcrypt.root/enc" "$dir"
            ;;
        ext4-fscrypt)
            # The kernel's own fscrypt on ext4, the same policy as cowcrypt-enc: v2,
            # AES-256-XTS contents, AES-256-CTS names padded to 32, a random 64-byte key.
            truncate -s 8G "$WORK/ext4-fscrypt.img"
            mkfs.ext4 -q -F -O encrypt "$WORK/ext4-fscrypt.img"
            mnt_ext4 "$WORK/ext4-fscrypt.img" "$WORK/ext4-fscrypt.root"
            head -c 64 /dev/urandom > "$WORK/ext4-fscrypt.key"
            FSCRYPT_KEY=$(python3 "$ROOT/bench/fscrypt.py" add-key "$WORK/ext4-fscrypt.root" \
                "$WORK/ext4-fscrypt.key")
            mkdir "$WORK/ext4-fscrypt.root/enc"
            python3 "$ROOT/bench/fscrypt.py" set-policy "$WORK/ext4-fscrypt.root/enc" "$FSCRYPT_KEY"
            rmdir "$dir" 2>/dev/null || true
            ln -s "$WORK/ext4-fscrypt.root/enc" "$dir"
            ;;
        raw)
            # No filesystem of ours: a directory in the scratch directory, so the file is on
            # the host filesystem and disk that hold cowcrypt's image.
            mkdir -p "$dir"
            ;;
        image) ;; # located by locate_image_bytes once enc/seq is written
    esac
}

# Sets IMAGE_RUNS to the byte ranges ("offset:length ...", in file order, adjacent ones merged)
# of cowcrypt's image file that hold the encrypted benchmark file enc/seq. inspect reads an
# unmounted image, so the mount goes away for a moment and comes back with the key added again.
# It is the largest file whose every extent is encrypted (the only one while the read rows run),
# and must be --size bytes long.
IMAGE_RUNS=
locate_image_bytes() {
    umount_one "$WORK/cowcrypt.root"
    "$BIN" inspect --json "$WORK/cowcrypt.img" >"$RAW/inspect.json"
    mount_cowcrypt_root
    "$BIN" key add "$WORK/cowcrypt.root" "$WORK/bench.key" >/dev/null
    IMAGE_RUNS=$(python3 - "$RAW/inspect.json" "$(numfmt --from=iec "$SIZE")" <<'PY'
import json, sys
image, size = json.load(open(sys.argv[1])), int(sys.argv[2])
files = [i for sv in image["subvolumes"] for i in sv["inodes"]
         if i["kind"] == "File" and i["extents"] and all(e["crypt_context"] for e in i["extents"])]
f = max(files, key=lambda i: i["size"])
if f["size"] != size:
    sys.exit(f"the largest encrypted file holds {f['size']} bytes, not {size}")
runs = []
for e in sorted(f["extents"], key=lambda e: e["file_offset"]):
    start = e["physical"] + e["offset_in_extent"]
    if runs and runs[-1][0] + runs[-1][1] == start:
        runs[-1][1] += e["length"]
    else:
        runs.append([start, e["length"]])
print(" ".join(f"{o}:{n}" for o, n in runs))
PY
    )
    log "enc/seq lies in $(wc -w <<<"$IMAGE_RUNS") run(s) of the image: $IMAGE_RUNS"
}

# Reads the image's bytes in IMAGE_RUNS in order, cold, as raw's seq-read reads its file (one
# fio job per run, each waiting for the one before); M is their total MiB/s.
measure_image_read() {
    local name=$1 args=() k=0 run
    for run in $IMAGE_RUNS; do
        args+=(--name="part$k" --filename="$WORK/cowcrypt.img" --offset="${run%:*}"
            --size="${run#*:}" --rw=read --bs=1M --ioengine=psync --stonewall)
        k=$((k + 1))
    done
    run_fio_jobs "$name" "${args[@]}"
    M=$(python3 - "$RAW/$name.json" <<'PY'
import json, sys
jobs = json.load(open(sys.argv[1]))["jobs"]
done, ms = sum(j["read"]["io_bytes"] for j in jobs), sum(j["read"]["runtime"] for j in jobs)
print(f"{done / (ms / 1000) / 2**20:.1f}")
PY
    )
}

# One measurement of test $1 on filesystem $2 in round $3, left in M (MiB/s, IOPS or files/s;
# not printed, so fio runs in this shell and the traps can stop it).
# The sequential-write rows leave $dir/seq behind for the read rows.
measure() {
    local t=$1 fs=$2 i=$3 dir=$WORK/$2.mnt t0 t1
    case $t in
        seq-write-nosync)
            run_fio "$fs-$t-$i" "$dir/seq0" --rw=write --bs=1M --size="$SIZE"
            M=$(fio_value "$fs-$t-$i" write bw)
            rm -f "$dir/seq0"
            drop_caches
            ;;
        seq-write)
            rm -f "$dir/seq"
            drop_caches
            run_fio "$fs-$t-$i" "$dir/seq" --rw=write --bs=1M --size="$SIZE" --end_fsync=1
            M=$(fio_value "$fs-$t-$i" write bw)
            ;;
        seq-read)
            drop_caches
            if [ "$fs" = image ]; then
                measure_image_read "$fs-$t-$i"
            else
                run_fio "$fs-$t-$i" "$dir/seq" --rw=read --bs=1M --size="$SIZE"
                M=$(fio_value "$fs-$t-$i" read bw)
            fi
            ;;
        rand-read)
            drop_caches
            run_fio "$fs-$t-$i" "$dir/seq" --rw=randread --bs=4k --size="$SIZE" \
                --runtime="$RUNTIME" --time_based --randrepeat=1
            M=$(fio_value "$fs-$t-$i" read iops)
            ;;
        rand-write)
            run_fio "$fs-$t-$i" "$dir/seq" --rw=randwrite --bs=4k --size="$SIZE" \
                --runtime="$RUNTIME" --time_based --end_fsync=1 --randrepeat=1
            M=$(fio_value "$fs-$t-$i" write iops)
            ;;
        create)
            drop_caches
            t0=$(date +%s.%N)
            python3 - "$dir/small$i" "$NFILES" <<'PY'
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
            M=$(python3 -c "print(f'{$NFILES / ($t1 - $t0):.0f}')")
            ;;
    esac
}

declare -A R=()
declare -A DESC=([seq-write-nosync]="sequential write ($SIZE), no fsync"
    [seq-write]="sequential write ($SIZE), fsync at the end" [seq-read]="sequential read, cold"
    [rand-read]="random 4 KiB reads (${RUNTIME}s)"
    [rand-write]="random 4 KiB writes (${RUNTIME}s), fsync at the end"
    [create]="creating $NFILES files of 4 KiB, then sync")
for fs in "${FSES[@]}"; do setup_fs "$fs"; done
stop_page_reporting
# Rounds interleave the filesystems (round 1 of every filesystem, then round 2...), so a change
# in the shared host's disk or load during the run falls on all columns alike; each value is
# the median of its $REPEAT rounds. Each round starts one filesystem further along the list, and
# even rounds go through it backwards, so no filesystem always runs right after the same
# neighbour (whose host writeback may still be going on: run 20's encrypted random writes ran at
# 12.9-17.5k IOPS right after plaintext cowcrypt's, 21.3k when they came first).
NFS=${#FSES[@]}
# The encryption goals compare cowcrypt-enc with plaintext cowcrypt, so that pair's order
# alternates exactly: plaintext first in odd rounds, encrypted first in even ones (the rotation
# alone put plaintext first in 5 of 7 rounds with 7 columns). Swaps the two in ORDER if needed.
pair_alternates() {
    local a=-1 b=-1 k
    for k in "${!ORDER[@]}"; do
        case ${ORDER[$k]} in
            cowcrypt) a=$k ;;
            cowcrypt-enc) b=$k ;;
        esac
    done
    if ((a < 0 || b < 0)); then return; fi
    if { (($1 % 2)) && ((b < a)); } || { ! (($1 % 2)) && ((a < b)); }; then
        ORDER[a]=cowcrypt-enc
        ORDER[b]=cowcrypt
    fi
}
for t in seq-write-nosync seq-write seq-read rand-read rand-write create; do
    if [ "$t" = seq-read ] && has image; then locate_image_bytes; fi
    declare -A VALS=()
    for ((i = 1; i <= REPEAT; i++)); do
        ORDER=()
        for ((k = 0; k < NFS; k++)); do
            if ((i % 2)); then step=$k; else step=$((NFS - 1 - k)); fi
            ORDER+=("${FSES[$(((i - 1 + step) % NFS))]}")
        done
        pair_alternates "$i"
        for fs in "${ORDER[@]}"; do
            # The raw file's bandwidth is an anchor for the sequential rows only, the image
            # file's bytes for the cold read.
            if [ "$fs" = raw ] && [[ $t != seq-* ]]; then continue; fi
            if [ "$fs" = image ] && [ "$t" != seq-read ]; then continue; fi
            measure "$t" "$fs" "$i"
            log "$fs: ${DESC[$t]} ($i/$REPEAT): $M"
            VALS[$fs]+=" $M"
        done
    done
    for fs in "${!VALS[@]}"; do
        # shellcheck disable=SC2086 # the values are words
        R[$fs,$t]=$(median ${VALS[$fs]})
    done
    unset VALS
done
remove_fscrypt_key

# The table: values per filesystem ("-" where a row does not apply, as raw's non-sequential
# rows), then the ratios where both sides ran.
TESTS=(seq-write-nosync seq-write seq-read rand-read rand-write create)
declare -A UNIT=([seq-write-nosync]="MiB/s" [seq-write]="MiB/s" [seq-read]="MiB/s" [rand-read]="IOPS" [rand-write]="IOPS" [create]="files/s")
# The least ratio of $1 to $2 in test $3 in bench/goals; empty if there is no goal.
goal_of() {
    awk -v s="$1" -v a="$2" -v t="$3" \
        '!/^#/ && NF == 4 && $1 == s && $2 == a && ($3 == t || $3 == "*") { print $4; exit }' \
        "$ROOT/bench/goals"
}
val() { echo "${R[$1,$2]:--}"; }
# $1/$2 with two decimals; "-" if either is missing.
ratio() {
    if [ "$1" = - ] || [ "$2" = - ]; then echo -; else python3 -c "print(f'{$1 / $2:.2f}')"; fi
}
# The verdict on $1's median against $2's in test $3 by bench/goals: "met (>= G$4)" or
# "MISSED (>= G$4)", on the exact ratio (as bench/pool.py judges), not the rounded one shown;
# "-" without a goal or a value.
judge() {
    local g a b
    g=$(goal_of "$1" "$2" "$3")
    a=$(val "$1" "$3")
    b=$(val "$2" "$3")
    if [ -z "$g" ] || [ "$a" = - ] || [ "$b" = - ]; then
        echo -
    elif python3 -c "import sys; sys.exit(0 if $a / $b >= $g else 1)"; then
        echo "met (>= $g$4)"
    else
        echo "MISSED (>= $g$4)"
    fi
}
# The driver behind the kernel's xts(aes): the one of highest priority in /proc/crypto (listed
# there once fscrypt has used it).
kernel_xts_driver() {
    python3 - <<'PY'
best = None
for entry in open("/proc/crypto").read().split("\n\n"):
    f = {k.strip(): v.strip() for k, v in (l.split(":", 1) for l in entry.splitlines() if ":" in l)}
    if f.get("name") == "xts(aes)" and (best is None or int(f["priority"]) > int(best["priority"])):
        best = f
print(best["driver"] if best else "unknown")
PY
}
{
    echo "| test | unit |$(for fs in "${FSES[@]}"; do printf ' %s |' "$fs"; done) cowcrypt/gocryptfs | cowcrypt/ext4 | goal |"
    echo "|---|---|$(for _ in "${FSES[@]}"; do printf -- '---:|'; done)---:|---:|---|"
    for t in "${TESTS[@]}"; do
        row="| $t | ${UNIT[$t]} |"
        for fs in "${FSES[@]}"; do row+=" $(val "$fs" "$t") |"; done
        cg=-; ce=-; goal=-
        if has cowcrypt && has gocryptfs; then
            cg=$(ratio "$(val cowcrypt "$t")" "$(val gocryptfs "$t")")
            goal=$(judge cowcrypt gocryptfs "$t" "x gocryptfs")
        fi
        if has cowcrypt && has ext4; then ce=$(ratio "$(val cowcrypt "$t")" "$(val ext4 "$t")"); fi
        echo "$row $cg | $ce | $goal |"
    done
    if has cowcrypt-enc; then
        # Encryption's own goals, against plaintext cowcrypt, gocryptfs and the image file's
        # own bytes (the very bytes the cold read decrypts). raw (a file of its own beside the
        # image) and ext4-fscrypt are shown, without a goal.
        echo
        echo "| test | cowcrypt-enc/cowcrypt | goal | cowcrypt-enc/gocryptfs | goal | cowcrypt-enc/image | goal | cowcrypt-enc/raw | cowcrypt-enc/ext4-fscrypt |"
        echo "|---|---:|---|---:|---|---:|---|---:|---:|"
        for t in "${TESTS[@]}"; do
            ep=-; epg=-; eg=-; egg=-; ei=-; eig=-; er=-; ef=-
            enc=$(val cowcrypt-enc "$t")
            if has cowcrypt; then
                ep=$(ratio "$enc" "$(val cowcrypt "$t")")
                epg=$(judge cowcrypt-enc cowcrypt "$t" "")
            fi
            if has gocryptfs; then
                eg=$(ratio "$enc" "$(val gocryptfs "$t")")
                egg=$(judge cowcrypt-enc gocryptfs "$t" x)
            fi
            if has image; then
                ei=$(ratio "$enc" "$(val image "$t")")
                eig=$(judge cowcrypt-enc image "$t" "")
            fi
            if has raw; then er=$(ratio "$enc" "$(val raw "$t")"); fi
            if has ext4-fscrypt; then ef=$(ratio "$enc" "$(val ext4-fscrypt "$t")"); fi
            echo "| $t | $ep | $epg | $eg | $egg | $ei | $eig | $er | $ef |"
        done
    fi
    echo
    echo "size $SIZE, every value the median of $REPEAT rounds interleaved across the filesystems, random-I/O runtime ${RUNTIME}s, $NFILES files; $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; kernel $(uname -r)"
    if has raw; then
        echo
        echo "raw: a plain $SIZE file in the scratch directory (the host filesystem and disk under cowcrypt's image), sequential rows only."
    fi
    if [ -n "$REPORTING_WAS" ]; then
        echo
        echo "free page reporting to the VM's host was stopped during the run (page_reporting_order $REPORTING_WAS -> 11, restored)."
    elif [ -e "$REPORTING" ]; then
        echo
        echo "free page reporting to the VM's host stayed on: freed memory went back to the host within seconds, and measurements paid to fault it in again."
    fi
    if has image; then
        echo
        echo "image: the bytes of cowcrypt's image file that hold enc/seq ($(wc -w <<<"$IMAGE_RUNS") run(s)), read cold in file order by the same fio job as raw; cold read only."
    fi
    if has ext4-fscrypt; then
        drv=$(kernel_xts_driver)
        echo
        case $drv in
            *aes-fixed-time* | *aes-generic*)
                echo "ext4-fscrypt: this kernel's xts(aes) is $drv, plain C without AES-NI: the column is a floor for kernel encryption here, not a bar for cowcrypt-enc." ;;
            *)
                echo "ext4-fscrypt: this kernel's xts(aes) is $drv." ;;
        esac
    fi
} | tee "$OUT"
log "table written to $OUT"
