# shellcheck shell=bash
# Helpers shared by the benchmarks (sourced): cache dropping and fio runs with their results.
# Callers set RAW (where fio writes its JSON) and CHILD (the running fio, for their traps).

# Writes back and drops every cache, so the next read is cold.
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
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

# The median of the numbers given.
median() {
    python3 -c 'import statistics, sys; print(f"{statistics.median(map(float, sys.argv[1:])):.1f}")' "$@"
}
