# Shared helpers for scripts that mount cowcrypt, ext4 loop images and gocryptfs (sourced, not
# run). Every mount and loop device made through these helpers is recorded and undone by
# `cleanup_mounts`, which callers run from an EXIT trap so a failure never leaves one behind.
#
# Expects: set -euo pipefail in the caller. Provides:
#   mnt_cowcrypt BIN IMAGE DIR [LOG]  start `BIN mount -f [-o $COWCRYPT_MOUNT_OPTS] IMAGE DIR` in
#                                  the background and wait until it is mounted
#   mnt_ext4 IMAGE DIR             mount an ext4 image through a loop device of our own
#   mnt_gocryptfs CIPHERDIR DIR    mount gocryptfs (password "pw")
#   umount_one DIR                 unmount one of ours (FUSE daemons are waited for)
#   cleanup_mounts                 unmount everything of ours, detach our loop devices

_OUR_MOUNTS=()      # mount points, in mount order
_OUR_LOOPS=()       # loop devices we attached
declare -A _OUR_PIDS=()   # mount point -> daemon pid (foreground FUSE daemons we started)

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# Waits up to $2 seconds (default 30) for $1 to become a mount point.
wait_mounted() {
    local dir=$1 secs=${2:-30} i
    for ((i = 0; i < secs * 10; i++)); do
        mountpoint -q "$dir" && return 0
        sleep 0.1
    done
    return 1
}

mnt_cowcrypt() {
    local bin=$1 image=$2 dir=$3 logf=${4:-/dev/null} opts=()
    [ -n "${COWCRYPT_MOUNT_OPTS:-}" ] && opts=(-o "$COWCRYPT_MOUNT_OPTS")
    mkdir -p "$dir"
    "$bin" mount -f "${opts[@]}" "$image" "$dir" >>"$logf" 2>&1 &
    local pid=$!
    _OUR_MOUNTS+=("$dir")
    _OUR_PIDS[$dir]=$pid
    if ! wait_mounted "$dir" 30; then
        log "cowcrypt mount of $image on $dir did not appear (daemon log: $logf)"
        kill "$pid" 2>/dev/null || true
        return 1
    fi
}

mnt_ext4() {
    local image=$1 dir=$2 dev
    mkdir -p "$dir"
    dev=$(losetup --find --show "$image")
    _OUR_LOOPS+=("$dev")
    mount -t ext4 "$dev" "$dir"
    _OUR_MOUNTS+=("$dir")
}

mnt_gocryptfs() {
    local cipher=$1 dir=$2
    mkdir -p "$dir"
    gocryptfs -q -nosyslog -extpass 'echo pw' "$cipher" "$dir"
    _OUR_MOUNTS+=("$dir")
}

# Aborts the FUSE connection behind $1 (used only when a normal unmount failed).
_fuse_abort() {
    local dir=$1 devno minor
    devno=$(mountpoint -d "$dir" 2>/dev/null) || return 0
    minor=${devno#*:}
    if [ -w "/sys/fs/fuse/connections/$minor/abort" ]; then
        echo 1 >"/sys/fs/fuse/connections/$minor/abort" || true
    fi
}

umount_one() {
    local dir=$1 pid=${_OUR_PIDS[$1]:-} i
    if mountpoint -q "$dir"; then
        # A filesystem stacked on this one may take a moment to let go (gocryptfs's daemon
        # exits after its own unmount): retry for up to 5 s before anything drastic.
        for ((i = 0; i < 50; i++)); do
            fusermount3 -u "$dir" 2>/dev/null || umount "$dir" 2>/dev/null || true
            mountpoint -q "$dir" || break
            sleep 0.1
        done
        if mountpoint -q "$dir"; then
            log "unmount of $dir failed; aborting the connection and detaching lazily"
            _fuse_abort "$dir"
            umount -l "$dir" 2>/dev/null || true
        fi
    fi
    if [ -n "$pid" ]; then
        # The daemon commits and closes the image after the kernel lets go: wait for it.
        for ((i = 0; i < 600; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "daemon $pid for $dir still running after 60 s; killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        unset "_OUR_PIDS[$dir]"
    fi
    local keep=() m
    for m in "${_OUR_MOUNTS[@]}"; do [ "$m" = "$dir" ] || keep+=("$m"); done
    _OUR_MOUNTS=("${keep[@]}")
}

cleanup_mounts() {
    local i
    for ((i = ${#_OUR_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount_one "${_OUR_MOUNTS[$i]}" || true
    done
    for dev in "${_OUR_LOOPS[@]}"; do
        losetup -d "$dev" 2>/dev/null || true
    done
    _OUR_LOOPS=()
}

# Absolute path of the cowcrypt binary: $COWCRYPT, else the release build of this repo.
find_cowcrypt() {
    local root=$1
    if [ -n "${COWCRYPT:-}" ]; then
        echo "$COWCRYPT"
    elif [ -x "$root/target/release/cowcrypt" ]; then
        echo "$root/target/release/cowcrypt"
    else
        echo "cowcrypt binary not found: cargo build --release -p cowcrypt, or set COWCRYPT" >&2
        return 1
    fi
}

# A scratch directory on the disk that holds the repository (never tmpfs).
scratch_dir() {
    local base=${COWCRYPT_SCRATCH:-/var/tmp}
    if [ "$(stat -f -c %T "$base")" = tmpfs ]; then
        echo "$base is tmpfs; set COWCRYPT_SCRATCH to a directory on a disk" >&2
        return 1
    fi
    mktemp -d "$base/cowcrypt-$1.XXXXXX"
}
