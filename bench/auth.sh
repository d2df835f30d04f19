#!/usr/bin/env bash
# Authenticated vs unauthenticated encryption on one cowcrypt mount, in the same run.
#
#   bench/auth.sh [--size 1G] [--repeat 5] [--out FILE]
#
# One image, one key, two directories: `plain` under an ordinary fscrypt v2 policy (AES-256-XTS
# per extent, as Linux) and `auth` under the same policy with --authenticated (plus a BLAKE3 MAC
# per 4 KiB data unit, checked on every read). Each round measures, for both directories in
# alternating order so that load on this shared machine falls on both alike:
#   seq-write   fio, 1 MiB writes of a --size file, fsync at the end
#   seq-read    fio, 1 MiB reads of that file after dropping every cache (cold)
# and keeps the median of --repeat rounds. The table gives auth/plain for each, against the goal
# (at most 15% slower: ratio >= 0.85), also written to --out (default target/bench-auth.md).
#
# Needs root (drop_caches), fio, python3, fuse3. cowcrypt is $COWCRYPT or
# target/release/cowcrypt. The image lives under $COWCRYPT_SCRATCH (default /var/tmp); every
# mount is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib-mounts.sh
. "$ROOT/scripts/lib-mounts.sh"
# shellcheck source=bench/lib-fio.sh
. "$ROOT/bench/lib-fio.sh"

SIZE=1G
REPEAT=5
OUT=$ROOT/target/bench-auth.md
while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --repeat) REPEAT=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "bench/auth.sh needs root (drop_caches)" >&2; exit 1; }
for tool in fio python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install $tool)" >&2; exit 1; }
done
BIN=$(find_cowcrypt "$ROOT")

WORK=$(scratch_dir bench-auth)
cleanup() {
    cleanup_mounts
    rm -rf "$WORK"
}
CHILD=
trap cleanup EXIT
trap '[ -n "$CHILD" ] && kill "$CHILD" 2>/dev/null; exit 130' INT TERM
RAW=$WORK/raw
MNT=$WORK/mnt
mkdir -p "$RAW" "$MNT"

"$BIN" mkfs "$WORK/cowcrypt.img" --size 8G >/dev/null
mnt_cowcrypt "$BIN" "$WORK/cowcrypt.img" "$MNT" "$RAW/daemon.log"
head -c 64 /dev/urandom >"$WORK/bench.key"
ID=$("$BIN" key add "$MNT" "$WORK/bench.key")
mkdir "$MNT/plain" "$MNT/auth"
"$BIN" encrypt "$MNT/plain" --key "$ID" >/dev/null
"$BIN" encrypt "$MNT/auth" --key "$ID" --authenticated >/dev/null

declare -A V=()
one() {
    local d=$1 i=$2
    rm -f "$MNT/$d/seq"
    drop_caches
    log "$d: sequential write ($SIZE), fsync at the end ($i/$REPEAT)"
    run_fio "$d-write-$i" "$MNT/$d/seq" --rw=write --bs=1M --size="$SIZE" --end_fsync=1
    V[$d,seq-write]+=" $(fio_value "$d-write-$i" write bw)"
    drop_caches
    log "$d: sequential read, cold ($i/$REPEAT)"
    run_fio "$d-read-$i" "$MNT/$d/seq" --rw=read --bs=1M --size="$SIZE"
    V[$d,seq-read]+=" $(fio_value "$d-read-$i" read bw)"
    rm -f "$MNT/$d/seq"
}

for ((i = 1; i <= REPEAT; i++)); do
    if ((i % 2)); then
        one plain "$i"
        one auth "$i"
    else
        one auth "$i"
        one plain "$i"
    fi
done
umount_one "$MNT"

{
    echo "| test | plain encrypted MiB/s | authenticated MiB/s | auth/plain | goal |"
    echo "|---|---:|---:|---:|---|"
    for t in seq-write seq-read; do
        # shellcheck disable=SC2086 # the values are a space-separated list on purpose
        p=$(median ${V[plain,$t]})
        # shellcheck disable=SC2086
        a=$(median ${V[auth,$t]})
        r=$(python3 -c "print(f'{$a / $p:.2f}')")
        if python3 -c "import sys; sys.exit(0 if $r >= 0.85 else 1)"; then
            g="met (>= 0.85)"
        else
            g="MISSED (>= 0.85)"
        fi
        echo "| $t | $p | $a | $r | $g |"
    done
    echo
    echo "size $SIZE, medians of $REPEAT alternating rounds (plain:${V[plain,seq-write]} / auth:${V[auth,seq-write]} write; plain:${V[plain,seq-read]} / auth:${V[auth,seq-read]} read); $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores; kernel $(uname -r)"
} | tee "$OUT"
log "table written to $OUT"
