# shellcheck shell=bash
# Helpers shared by the benchmarks (sourced): cache dropping and fio runs with their results.
# Callers set RAW (where fio writes its JSON) and CHILD (the running fio, for their traps).

# Writes back and drops every cache, so the next read is cold.
drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# fio with the job definitions given after the name $1; JSON to $RAW/$1.json.
run_fio_jobs() {
    local name=$1
    shift
    # In the background and waited for, so Ctrl-C or TERM cleans up at once (bash runs traps
    # only after a foreground child ends).
    fio --output-format=json --output="$RAW/$name.json" "$@" >/dev/null &
    CHILD=$!
    wait "$CHILD"
    CHILD=
}

# fio job on file $2 with name $1 and the remaining arguments; JSON to $RAW/$1.json.
run_fio() {
    local name=$1 file=$2
    shift 2
    run_fio_jobs "$name" --name="$name" --filename="$file" --ioengine=psync --numjobs=1 \
        --fallocate=none "$@"
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
