# Shared helpers of the benchmark scripts; sourced, not run.

# The workspace's release binary directory (honours CARGO_TARGET_DIR and
# .cargo/config settings, as cargo itself resolves them).
release_bin_dir() {
    local dir
    dir=$(cargo metadata --format-version 1 --no-deps | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
    echo "$dir/release"
}

# stop_pid PID LABEL: SIGTERM, wait up to 5 s, then SIGKILL; reaps the child.
# Only ever called with PIDs the calling script started itself.
stop_pid() {
    local pid=$1 label=$2
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$label ($pid) ignored SIGTERM; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}
