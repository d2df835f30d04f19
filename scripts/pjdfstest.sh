#!/usr/bin/env bash
# Runs pjdfstest (the Rust rewrite, crate `pjdfstest` 0.2.2) against a fresh cowcrypt mount and,
# with --fs both or --fs ext4, against an ext4 loop image for comparison.
#
#   scripts/pjdfstest.sh [--fs cowcrypt|ext4|both] [--results DIR] [--known FILE]
#                        [--mount-opts OPTS] [PATTERN...]
#
# --mount-opts adds cowcrypt mount options (for example dirty=16, so that nearly every write
# meets a write-behind flight).
# For each filesystem it writes DIR/<fs>.log (pjdfstest's output) and DIR/<fs>.results (one
# "STATUS NAME" line per test case, STATUS one of ok, FAILED, skipped) and prints a summary.
# For cowcrypt it then compares the failures with tests/pjdfstest-known-failures.txt and exits 1
# on a failure not listed there or on a listed failure that now passes; it also runs
# `cowcrypt fsck` on the image after unmounting and exits 1 if that reports faults. ext4 is a
# baseline: its failures are printed, never fatal.
#
# Needs root (pjdfstest switches to the users "nobody" and "tests"; "tests" is created here when
# missing), /dev/fuse, mkfs.ext4 and losetup. The cowcrypt binary is $COWCRYPT or
# target/release/cowcrypt. Images go under $COWCRYPT_SCRATCH (default /var/tmp). Every mount and
# loop device made here is removed on exit, also on failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/lib-mounts.sh
. "$ROOT/scripts/lib-mounts.sh"

PJDFSTEST_VERSION=0.2.2
FS=cowcrypt
RESULTS=
KNOWN=$ROOT/tests/pjdfstest-known-failures.txt
PATTERNS=()
EXTRA_OPTS=
while [ $# -gt 0 ]; do
    case $1 in
        --fs) FS=$2; shift 2 ;;
        --results) RESULTS=$2; shift 2 ;;
        --known) KNOWN=$2; shift 2 ;;
        --mount-opts) EXTRA_OPTS=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d'; exit 0 ;;
        *) PATTERNS+=("$1"); shift ;;
    esac
done
case $FS in cowcrypt|ext4|both) ;; *) echo "--fs must be cowcrypt, ext4 or both" >&2; exit 2 ;; esac

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v pjdfstest >/dev/null; then
    echo "pjdfstest not found: cargo install pjdfstest --version $PJDFSTEST_VERSION --locked" >&2
    exit 1
fi
[ "$(id -u)" = 0 ] || { echo "pjdfstest.sh needs root" >&2; exit 1; }

# The second unprivileged user pjdfstest switches to (the first is nobody).
if ! getent passwd tests >/dev/null; then
    useradd --system --no-create-home --user-group --shell /usr/sbin/nologin tests
fi
NOBODY_GROUP=$(id -gn nobody)

WORK=$(scratch_dir pjdfstest)
cleanup() {
    cleanup_mounts
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -n "$RESULTS" ] || RESULTS=$ROOT/target/pjdfstest
mkdir -p "$RESULTS" "$WORK/secondary"
chmod 0755 "$WORK"

# Features cowcrypt and ext4 both claim. Read-only remounts (the EROFS cases) get a pass of
# their own: in a full run some earlier case leaves a file open for writing and the remount
# answers EBUSY even on ext4, so the main pass skips them (allow_remount = false).
write_config() {
    cat >"$1" <<EOF
[features]
posix_fallocate = {}
utime_now = {}
utimensat = {}
rename_ctime = {}

[settings]
naptime = 0.01
allow_remount = $2

[dummy_auth]
entries = [["nobody", "$NOBODY_GROUP"], ["tests", "tests"]]
EOF
}
write_config "$WORK/pjdfstest.toml" false
# pjdfstest remounts with `mount -o remount,ro DIR`. For a mount of type "fuse" util-linux
# hands that to mount.fuse3, which runs the mount's source (our image path) as a program and
# fails; `mount -i` skips helpers and makes the plain remount system call, as for ext4.
REAL_MOUNT=$(command -v mount)
mkdir -p "$WORK/bin"
cat >"$WORK/bin/mount" <<EOF
#!/bin/sh
case " \$* " in *remount*) exec $REAL_MOUNT -i "\$@" ;; esac
exec $REAL_MOUNT "\$@"
EOF
chmod 0755 "$WORK/bin/mount"
write_config "$WORK/pjdfstest-erofs.toml" true

# One pjdfstest invocation: config $1, mount point $2, log $3, then patterns.
pjdfstest_pass() {
    local cfg=$1 dir=$2 logf=$3 rc=0
    shift 3
    PATH="$WORK/bin:$PATH" NO_COLOR=1 timeout 900 pjdfstest -c "$cfg" -p "$dir" -s "$WORK/secondary" "$@" \
        >"$logf" 2>&1 || rc=$?
    if [ "$rc" = 124 ]; then
        echo "pjdfstest timed out (log: $logf)" >&2
        return 1
    fi
    if ! grep -q '^Summary' "$logf"; then
        echo "pjdfstest: no summary line (crashed?) in $logf; last lines:" >&2
        tail -20 "$logf" >&2
        return 1
    fi
}

# "STATUS NAME" lines from pjdfstest logs; a case in a later log replaces the earlier result.
parse_results() {
    cat "$@" | sed 's/\x1b\[[0-9;]*m//g' |
        awk '
            /^[A-Za-z_0-9:]+ +ok$/ { st[$1] = "ok"; next }
            /^[A-Za-z_0-9:]+ +FAILED$/ { st[$1] = "FAILED"; next }
            /^[A-Za-z_0-9:]+ +skipped$/ { st[$1] = "skipped"; next }
            END { for (n in st) print st[n] " " n }
        ' | sort -k2
}

# Runs pjdfstest on mount point $2, writes $RESULTS/$1.{log,results}, prints the counts.
run_pjdfstest() {
    local name=$1 dir=$2 st=0
    log "pjdfstest on $name ($dir)"
    rm -f "$RESULTS/$name.log" "$RESULTS/$name-erofs.log"
    if [ "${#PATTERNS[@]}" -gt 0 ]; then
        pjdfstest_pass "$WORK/pjdfstest-erofs.toml" "$dir" "$RESULTS/$name.log" \
            "${PATTERNS[@]}" || st=1
    else
        pjdfstest_pass "$WORK/pjdfstest.toml" "$dir" "$RESULTS/$name.log" || st=1
        pjdfstest_pass "$WORK/pjdfstest-erofs.toml" "$dir" "$RESULTS/$name-erofs.log" \
            erofs || st=1
    fi
    local logs=("$RESULTS/$name.log")
    [ -f "$RESULTS/$name-erofs.log" ] && logs+=("$RESULTS/$name-erofs.log")
    parse_results "${logs[@]}" >"$RESULTS/$name.results"
    local ok failed skipped
    ok=$(grep -c '^ok ' "$RESULTS/$name.results" || true)
    failed=$(grep -c '^FAILED ' "$RESULTS/$name.results" || true)
    skipped=$(grep -c '^skipped ' "$RESULTS/$name.results" || true)
    echo "pjdfstest $name: $ok ok, $failed FAILED, $skipped skipped"
    return "$st"
}

status=0

if [ "$FS" = ext4 ] || [ "$FS" = both ]; then
    truncate -s 2G "$WORK/ext4.img"
    mkfs.ext4 -q -F "$WORK/ext4.img"
    mnt_ext4 "$WORK/ext4.img" "$WORK/ext4"
    run_pjdfstest ext4 "$WORK/ext4" || status=1
    grep '^FAILED ' "$RESULTS/ext4.results" | sed 's/^/  ext4 baseline: /' || true
    umount_one "$WORK/ext4"
fi

if [ "$FS" = cowcrypt ] || [ "$FS" = both ]; then
    BIN=$(find_cowcrypt "$ROOT")
    "$BIN" mkfs "$WORK/cowcrypt.img" --size 2G >"$RESULTS/cowcrypt-mkfs.log" 2>&1
    # allow_other: pjdfstest runs cases as "nobody" and "tests"; suid and dev as ext4 has them.
    COWCRYPT_MOUNT_OPTS=allow_other,suid,dev${EXTRA_OPTS:+,$EXTRA_OPTS} \
        mnt_cowcrypt "$BIN" "$WORK/cowcrypt.img" "$WORK/cowcrypt" "$RESULTS/cowcrypt-daemon.log"
    run_pjdfstest cowcrypt "$WORK/cowcrypt" || status=1
    umount_one "$WORK/cowcrypt"
    if "$BIN" fsck "$WORK/cowcrypt.img" >"$RESULTS/cowcrypt-fsck.log" 2>&1; then
        echo "cowcrypt fsck after pjdfstest: clean"
    else
        echo "cowcrypt fsck after pjdfstest: FAULTS" >&2
        sed 's/^/  /' "$RESULTS/cowcrypt-fsck.log" | head -40 >&2
        status=1
    fi

    # Known failures: "name  # reason", one per line; blank lines and "#" lines are comments.
    known=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$KNOWN" | awk 'NF { print $1 }' | sort -u)
    failed=$(awk '$1 == "FAILED" { print $2 }' "$RESULTS/cowcrypt.results" | sort -u)
    passed=$(awk '$1 == "ok" { print $2 }' "$RESULTS/cowcrypt.results" | sort -u)
    unexpected=$(comm -23 <(echo "$failed") <(echo "$known") | sed '/^$/d')
    fixed=$(comm -12 <(echo "$passed") <(echo "$known") | sed '/^$/d')
    if [ -n "$unexpected" ]; then
        echo "cowcrypt: failures not in $(basename "$KNOWN"):" >&2
        echo "$unexpected" | sed 's/^/  /' >&2
        status=1
    fi
    if [ -n "$fixed" ]; then
        echo "cowcrypt: listed as known failures but now pass (remove them from the list):" >&2
        echo "$fixed" | sed 's/^/  /' >&2
        status=1
    fi
fi

echo "pjdfstest results in $RESULTS"
exit "$status"
