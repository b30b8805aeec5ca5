#!/usr/bin/env bash
# Typed request/reply comparison: ringwire's typed transports against tokio
# with tokio-util's LengthDelimitedCodec (rkyv) and against ZeroMQ
# (ROUTER/DEALER, rkyv), the same message types on every stack; plus
# ringwire's mem:// against a crossbeam channel, and ringwire's two-phase bulk
# against a plain TCP copy loop. Reported as ratios measured in one run.
#
# Request/reply (WORKLOADS rr), for each transport and stack (transport tls:
# ringwire's tls:// against tokio with tokio-rustls, one cipher suite forced on
# both, certificates made here with openssl; see benches/tls.sh): start the
# server pinned to core $SERVER_CORE (`taskset -c $SERVER_CORE ... --cores 1`),
# wait for its READY line, run the client pinned to core $CLIENT_CORE in
# throughput mode ($CONNS conns x $DEPTH in flight, $SIZE B each way) and in
# ping-pong mode (1 conn, $PP_SIZE B), both with --server-pid, then stop the
# server by its PID. Every run uses a fresh port (or socket path). Every
# reply is checked; a wrong or missing one fails the run. With STACKS
# including echo-node, ringwire's raw echo server is loaded by `loadgen`
# (lenprefix, $SIZE B) to compare server CPU per message with the typed stack.
#
# mem (WORKLOADS mem): `typed-mem`, receiver on $SERVER_CORE and sender on
# $CLIENT_CORE in one process; ringwire mem:// against a crossbeam channel of
# boxed requests, flooding (msgs/s) and paced at $MEM_RATE msgs/s (one-way
# latency).
#
# bulk (WORKLOADS bulk): `typed-bulk`, $SEGMENT-byte segments each way over
# tcp://, ringwire send_bulk/accept_bulk against a blocking std TCP copy loop.
#
# With REPEAT > 1 the whole set runs in interleaved rounds and the tables show
# medians. A ringwire server whose scheme is not enabled in this build is
# reported as skipped; any other failure stops the script.
#
# Usage: ./benches/typed.sh
#        DURATION=2 REPEAT=1 ./benches/typed.sh
#        STACKS="ringwire tokio" TRANSPORTS=unix WORKLOADS=rr ./benches/typed.sh
#
# Environment (defaults in brackets):
#   STACKS        request/reply stacks [ringwire tokio zmq echo-node]; also
#                 tokio-bincode (tokio with bincode instead of rkyv)
#   TRANSPORTS    tcp, unix and/or tls [tcp unix] (echo-node runs over tcp
#                 only; zmq has no tls)
#   WORKLOADS     rr, mem, bulk [rr mem bulk]
#   DURATION      measured seconds per run [5]
#   PP_DURATION   measured seconds per ping-pong run [$DURATION]
#   WARMUP        warm-up seconds before each run [1]
#   SIZE          throughput request and reply payload bytes [1024]
#   CONNS         throughput connections [64]
#   DEPTH         throughput requests in flight per connection [16]
#   PP_SIZE       ping-pong payload bytes [64]
#   MEM_RATE      mem:// latency runs: messages per second [20000]
#   SEGMENT       bulk segment size [2M]
#   WINDOW        bulk: ringwire segments in flight [4]
#   REPEAT        rounds [1]
#   SERVER_CORE   [0]   CLIENT_CORE [1]   BASE_PORT [7600]
#   NO_BUILD=1    skip `cargo build` (binaries must already be built)
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh
STACKS=${STACKS:-ringwire tokio zmq echo-node}
TRANSPORTS=${TRANSPORTS:-tcp unix}
WORKLOADS=${WORKLOADS:-rr mem bulk}
DURATION=${DURATION:-5}
PP_DURATION=${PP_DURATION:-$DURATION}
WARMUP=${WARMUP:-1}
SIZE=${SIZE:-1024}
CONNS=${CONNS:-64}
DEPTH=${DEPTH:-16}
PP_SIZE=${PP_SIZE:-64}
MEM_RATE=${MEM_RATE:-20000}
SEGMENT=${SEGMENT:-2M}
WINDOW=${WINDOW:-4}
REPEAT=${REPEAT:-1}
SERVER_CORE=${SERVER_CORE:-0}
CLIENT_CORE=${CLIENT_CORE:-1}
BASE_PORT=${BASE_PORT:-7600}

die() {
    echo "typed.sh: $*" >&2
    exit 1
}

has() { # has WORD LIST...: whether WORD is in the list
    local w=$1
    shift
    for x in "$@"; do [ "$x" = "$w" ] && return 0; done
    return 1
}

# shellcheck disable=SC2086 # word splitting of the lists is intended
{
    for s in $STACKS; do
        has "$s" ringwire tokio tokio-bincode zmq echo-node ||
            die "unknown stack '$s' (known: ringwire tokio tokio-bincode zmq echo-node)"
    done
    for t in $TRANSPORTS; do has "$t" tcp unix tls || die "unknown transport '$t' (known: tcp unix tls)"; done
    for w in $WORKLOADS; do has "$w" rr mem bulk || die "unknown workload '$w' (known: rr mem bulk)"; done
    read -r -a STACK_LIST <<<"$STACKS"
    read -r -a TRANSPORT_LIST <<<"$TRANSPORTS"
    read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
}
[ "${#WORKLOAD_LIST[@]}" -gt 0 ] || die "WORKLOADS is empty"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"
if [ "$(nproc)" -lt 2 ] && [ "$CLIENT_CORE" = 1 ]; then
    echo "typed.sh: only one core; the client shares core 0 with the server" >&2
    CLIENT_CORE=0
fi

if [ "${NO_BUILD:-0}" != 1 ]; then
    echo "== building (release)"
    cargo build --release -p ringwire-benches --bin typed-ringwire --bin typed-tokio \
        --bin typed-zmq --bin typed-mem --bin typed-bulk --bin loadgen
    if has echo-node "${STACK_LIST[@]}" && has rr "${WORKLOAD_LIST[@]}"; then
        cargo build --release -p ringwire-examples --bin echo-node
    fi
fi
BIN=$(release_bin_dir)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ringwire-typed.XXXXXX")
RESULTS="$WORK/results"
SKIPPED="$WORK/skipped"
: >"$RESULTS"
: >"$SKIPPED"
SERVER_PID=""

# make_tls_certs DIR: a CA and a server certificate for localhost (P-256).
make_tls_certs() {
    local d=$1
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=ringwire bench CA" -keyout "$d/ca.key" -out "$d/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        >/dev/null 2>&1 || die "openssl could not make the CA"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=localhost" \
        -keyout "$d/server.key" -out "$d/server.csr" >/dev/null 2>&1 ||
        die "openssl could not make the server key"
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' \
        >"$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/server.ext" -out "$d/server.pem" >/dev/null 2>&1 ||
        die "openssl could not sign the server certificate"
}
TLS_DIR="$WORK/tls"
if has tls "${TRANSPORT_LIST[@]}" && has rr "${WORKLOAD_LIST[@]}"; then
    command -v openssl >/dev/null || die "transport tls needs openssl (apt-get install openssl)"
    make_tls_certs "$TLS_DIR"
fi

stop_server() {
    stop_pid "$SERVER_PID" "typed.sh: server"
    SERVER_PID=""
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server LOG CMD...: starts CMD pinned to the server core and waits for
# its READY line. Returns 2 (after noting it) when a ringwire scheme is not
# enabled in this build; dies on any other failure.
start_server() {
    local log=$1
    shift
    taskset -c "$SERVER_CORE" "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if grep -q '^READY ' "$log" 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=""
            if grep -q 'is not enabled in this build' "$log"; then
                return 2
            fi
            cat "$log" >&2
            die "server exited before it was ready: $*"
        fi
        sleep 0.1
    done
    cat "$log" >&2
    die "server not ready after 10 s: $*"
}

# keep RUN_ID OUT: prints a client's output (indented) and keeps its RESULT line.
keep() {
    local id=$1 out=$2
    sed 's/^/    /' "$out" | grep -v '^    RESULT '
    grep '^RESULT ' "$out" | sed "s/^RESULT /RESULT run=$id /" >>"$RESULTS"
}

# run_client RUN_ID NAME OUT SERVER_LOG CMD...: runs a client pinned to the
# client core; on failure shows its output and the server's log.
run_client() {
    local id=$1 name=$2 out=$3 log=$4
    shift 4
    if ! taskset -c "$CLIENT_CORE" "$@" >"$out" 2>&1; then
        cat "$out" >&2
        echo "server log:" >&2
        sed 's/^/  /' "$log" >&2
        die "client failed against $name: $*"
    fi
    keep "$id" "$out"
}

check_server_log() {
    local log=$1
    if grep -v ' stopped: ' "$log" | grep -Eiq 'error|warn|panic'; then
        echo "    server log (it reported problems):"
        sed 's/^/      /' "$log"
    fi
}

# rr_stack RUN_ID ROUND STACK TRANSPORT PORT
rr_stack() {
    local id=$1 round=$2 stack=$3 transport=$4 port=$5
    local bin codec=rkyv endpoint log="$WORK/$id.server.log"
    if [ "$transport" = tls ] && [ "$stack" = zmq ]; then
        return 0
    fi
    if [ "$stack" = echo-node ]; then
        [ "$transport" = tcp ] || return 0
        echo "== [$round/$REPEAT] echo-node (raw lenprefix echo) over tcp, 127.0.0.1:$port"
        taskset -c "$SERVER_CORE" "$BIN/echo-node" --cores 1 --listen "127.0.0.1:$port" >"$log" 2>&1 &
        SERVER_PID=$!
        local mode
        for mode in throughput pingpong; do
            local out="$WORK/$id.$mode.out" size=$SIZE dur=$DURATION extra=(--conns "$CONNS" --depth "$DEPTH")
            if [ "$mode" = pingpong ]; then
                size=$PP_SIZE dur=$PP_DURATION extra=(--conns 1)
            fi
            if ! taskset -c "$CLIENT_CORE" "$BIN/loadgen" --core "$CLIENT_CORE" --label echo-node \
                --server-pid "$SERVER_PID" --wire lenprefix --mode "$mode" --addr "127.0.0.1:$port" \
                --wait 10s --warmup "$WARMUP" --duration "$dur" --size "$size" "${extra[@]}" >"$out" 2>&1; then
                cat "$out" "$log" >&2
                die "loadgen failed against echo-node ($mode)"
            fi
            sed -i 's/^RESULT /RESULT stack=echo-node transport=tcp codec=raw /' "$out"
            keep "$id" "$out"
        done
        stop_server
        check_server_log "$log"
        return 0
    fi
    case "$stack" in
        ringwire) bin=typed-ringwire ;;
        tokio) bin=typed-tokio ;;
        tokio-bincode) bin=typed-tokio codec=bincode ;;
        zmq) bin=typed-zmq ;;
    esac
    case "$transport" in
        tcp) endpoint="tcp://127.0.0.1:$port" ;;
        unix) endpoint="unix://$WORK/$id.sock" ;;
        tls) endpoint="tls://127.0.0.1:$port" ;;
    esac
    local codec_flag=()
    [ "$codec" = rkyv ] || codec_flag=(--codec "$codec")
    [ "$transport" = tls ] && codec_flag+=(--tls-dir "$TLS_DIR")
    echo "== [$round/$REPEAT] $stack over $transport, $endpoint"
    local rc=0
    start_server "$log" "$BIN/$bin" server --endpoint "$endpoint" --cores 1 "${codec_flag[@]}" || rc=$?
    if [ "$rc" = 2 ]; then
        local why
        why=$(grep -m1 'is not enabled in this build' "$log" | sed 's/^.*: \([a-z]*:\/\/ is not enabled\)/\1/')
        echo "    skipped: $why"
        echo "$stack $transport: $why" >>"$SKIPPED"
        return 0
    fi
    local common=(--endpoint "$endpoint" --core "$CLIENT_CORE" --server-pid "$SERVER_PID"
        --label "$stack" --warmup "$WARMUP" "${codec_flag[@]}")
    run_client "$id" "$stack" "$WORK/$id.tput.out" "$log" "$BIN/$bin" client "${common[@]}" \
        --mode throughput --conns "$CONNS" --depth "$DEPTH" --size "$SIZE" --duration "$DURATION"
    run_client "$id" "$stack" "$WORK/$id.pp.out" "$log" "$BIN/$bin" client "${common[@]}" \
        --mode pingpong --size "$PP_SIZE" --duration "$PP_DURATION"
    stop_server
    check_server_log "$log"
}

mem_runs() {
    local id=$1 round=$2 stack mode
    for stack in ringwire crossbeam; do
        for mode in throughput latency; do
            echo "== [$round/$REPEAT] mem: $stack, $mode, CPUs $SERVER_CORE (receiver) and $CLIENT_CORE (sender)"
            local out="$WORK/$id.mem.$stack.$mode.out"
            if ! taskset -c "$SERVER_CORE,$CLIENT_CORE" "$BIN/typed-mem" --stack "$stack" --mode "$mode" \
                --cpus "$SERVER_CORE,$CLIENT_CORE" --size "$SIZE" --rate "$MEM_RATE" \
                --warmup "$WARMUP" --duration "$DURATION" >"$out" 2>&1; then
                cat "$out" >&2
                die "typed-mem failed ($stack, $mode)"
            fi
            keep "$id" "$out"
        done
    done
}

bulk_runs() {
    local id=$1 round=$2 port=$3 stack
    for stack in ringwire tcp; do
        port=$((port + 1))
        local endpoint="tcp://127.0.0.1:$port" log="$WORK/$id.bulk.$stack.log"
        echo "== [$round/$REPEAT] bulk: $stack, $SEGMENT segments each way, $endpoint"
        local rc=0
        start_server "$log" "$BIN/typed-bulk" server --stack "$stack" --endpoint "$endpoint" || rc=$?
        if [ "$rc" = 2 ]; then
            echo "    skipped: tcp:// is not enabled in this build"
            echo "bulk ringwire tcp: tcp:// is not enabled in this build" >>"$SKIPPED"
            continue
        fi
        run_client "$id" "bulk-$stack" "$WORK/$id.bulk.$stack.out" "$log" "$BIN/typed-bulk" client \
            --stack "$stack" --endpoint "$endpoint" --core "$CLIENT_CORE" --server-pid "$SERVER_PID" \
            --segment "$SEGMENT" --window "$WINDOW" --warmup "$WARMUP" --duration "$DURATION"
        stop_server
        check_server_log "$log"
    done
}

port=$BASE_PORT
run=0
for round in $(seq "$REPEAT"); do
    if has rr "${WORKLOAD_LIST[@]}"; then
        for transport in "${TRANSPORT_LIST[@]}"; do
            for stack in "${STACK_LIST[@]}"; do
                run=$((run + 1))
                port=$((port + 1))
                rr_stack "$run" "$round" "$stack" "$transport" "$port"
            done
        done
    fi
    if has mem "${WORKLOAD_LIST[@]}"; then
        run=$((run + 1))
        mem_runs "$run" "$round"
    fi
    if has bulk "${WORKLOAD_LIST[@]}"; then
        run=$((run + 1))
        bulk_runs "$run" "$round" "$port"
        port=$((port + 2))
    fi
done

echo
median_note=""
[ "$REPEAT" -gt 1 ] && median_note=" (median of $REPEAT rounds)"
echo "== results$median_note"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs;" \
    "server (receiver) on CPU $SERVER_CORE, client (sender) on CPU $CLIENT_CORE"
if [ -s "$SKIPPED" ]; then
    echo "skipped:"
    sort -u "$SKIPPED" | sed 's/^/  /'
fi
awk -v stacks="$STACKS" -v transports="$TRANSPORTS" -v workloads="$WORKLOADS" \
    -v tput="${CONNS}x${DEPTH}x${SIZE} B, ${DURATION} s" -v pp="1x${PP_SIZE} B, ${PP_DURATION} s" \
    -v memrate="$MEM_RATE" -v size="$SIZE" -v segment="$SEGMENT" -v window="$WINDOW" '
    function field(k,   i, kv) {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == k) return kv[2] }
        return ""
    }
    function median(key,   n, i, j, t, a) {
        n = cnt[key]
        if (n == 0) return ""
        for (i = 1; i <= n; i++) a[i] = vals[key, i]
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        if (n % 2) return a[(n + 1) / 2]
        return (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function add(key, v) { if (v != "" && v != "na") vals[key, ++cnt[key]] = v }
    function m(s, t, mode, f) { return median(s SUBSEP t SUBSEP mode SUBSEP f) }
    function ratio(a, b) { return (a != "" && b != "" && b + 0 > 0) ? sprintf("%.2fx", a / b) : "-" }
    function num(v, fmt) { return v == "" ? "-" : sprintf(fmt, v) }
    function has(list, w,   n, i, a) { n = split(list, a, " "); for (i = 1; i <= n; i++) if (a[i] == w) return 1; return 0 }
    /^RESULT / {
        s = field("stack"); t = field("transport"); mode = field("mode")
        split("msgs_per_s msgs_per_server_cpu_s server_cpu_s client_cpu_s loadgen_cpu_s other_cpu_s p50_us p99_us p999_us gbit_per_s server_peak_rss_kib client_peak_rss_kib", fs, " ")
        for (i in fs) add(s SUBSEP t SUBSEP mode SUBSEP fs[i], field(fs[i]))
        seen[s SUBSEP t] = 1
    }
    END {
        ns = split(stacks, st, " "); nt = split(transports, tr, " ")
        if (has(workloads, "rr")) {
            for (k = 1; k <= nt; k++) {
                t = tr[k]
                printf "\n-- request/reply over %s: throughput %s; ping-pong %s\n", t, tput, pp
                fmt = "%-13s | %9s | %7s | %7s | %13s | %7s | %7s | %7s | %7s | %9s | %9s | %9s | %8s | %8s | %8s | %7s | %7s\n"
                printf fmt, "stack", "msgs/s", "x tokio", "x zmq", "msgs/srvCPU-s", "x tokio", "x zmq", "srv CPU", "cli CPU", \
                    "tput p50", "tput p99", "tput p99.9", "pp p50", "pp p99", "pp p99.9", "p50/tok", "p50/zmq"
                tt = m("tokio", t, "throughput", "msgs_per_s"); zt = m("zmq", t, "throughput", "msgs_per_s")
                te = m("tokio", t, "throughput", "msgs_per_server_cpu_s"); ze = m("zmq", t, "throughput", "msgs_per_server_cpu_s")
                tp = m("tokio", t, "pingpong", "p50_us"); zp = m("zmq", t, "pingpong", "p50_us")
                for (i = 1; i <= ns; i++) {
                    s = st[i]
                    if (!((s SUBSEP t) in seen)) { printf "%-13s | (not run)\n", s; continue }
                    mt = m(s, t, "throughput", "msgs_per_s"); me = m(s, t, "throughput", "msgs_per_server_cpu_s")
                    cc = m(s, t, "throughput", "client_cpu_s"); if (cc == "") cc = m(s, t, "throughput", "loadgen_cpu_s")
                    p50 = m(s, t, "pingpong", "p50_us")
                    printf fmt, s, num(mt, "%.0f"), ratio(mt, tt), ratio(mt, zt), num(me, "%.0f"), ratio(me, te), ratio(me, ze), \
                        num(m(s, t, "throughput", "server_cpu_s"), "%.2fs"), num(cc, "%.2fs"), \
                        num(m(s, t, "throughput", "p50_us"), "%.0fus"), num(m(s, t, "throughput", "p99_us"), "%.0fus"), \
                        num(m(s, t, "throughput", "p999_us"), "%.0fus"), \
                        num(p50, "%.1fus"), num(m(s, t, "pingpong", "p99_us"), "%.1fus"), num(m(s, t, "pingpong", "p999_us"), "%.1fus"), \
                        ratio(p50, tp), ratio(p50, zp)
                }
                re = m("ringwire", t, "throughput", "msgs_per_server_cpu_s"); rp = m("ringwire", t, "pingpong", "p50_us")
                if (re != "" && t == "tls") {
                    printf "target (tls, one suite on both, rustls under both): ringwire per server CPU-second %s tokio-rustls (>= 1.10x); ping-pong p50 %s tokio-rustls\n", \
                        ratio(re, te), ratio(rp, tp)
                } else if (re != "") {
                    printf "targets (%s): ringwire per server CPU-second %s tokio (>= 1.30x), %s zmq (>= 2.00x); ping-pong p50 %s tokio, %s zmq (<= 1.00x)\n", \
                        t, ratio(re, te), ratio(re, ze), ratio(rp, tp), ratio(rp, zp)
                    ee = m("echo-node", t, "throughput", "msgs_per_server_cpu_s")
                    if (ee != "") printf "ringwire typed server CPU per message: %s of the raw echo-node (<= 1.15x)\n", ratio(ee, re)
                }
            }
        }
        if (has(workloads, "mem")) {
            printf "\n-- mem: two cores of one process, %s B messages (typed-mem)\n", size
            fmt = "%-10s | %10s | %11s | %10s | %13s | %11s | %11s | %11s | %11s\n"
            printf fmt, "stack", "msgs/s", "x crossbeam", "proc CPU", "msgs/CPU-s", "1-way p50", "1-way p99", "1-way p99.9", "p50/xbeam"
            cm = m("crossbeam", "mem", "throughput", "msgs_per_s")
            cl = m("crossbeam", "mem", "latency", "p50_us")
            split("ringwire crossbeam", ms, " ")
            for (i = 1; i <= 2; i++) {
                s = ms[i]
                mt = m(s, "mem", "throughput", "msgs_per_s"); pc = m(s, "mem", "throughput", "client_cpu_s")
                l50 = m(s, "mem", "latency", "p50_us")
                printf fmt, s, num(mt, "%.0f"), ratio(mt, cm), num(pc, "%.2fs"), \
                    (pc != "" && pc + 0 > 0) ? sprintf("%.0f", mt / pc) : "-", \
                    num(l50, "%.1fus"), num(m(s, "mem", "latency", "p99_us"), "%.1fus"), num(m(s, "mem", "latency", "p999_us"), "%.1fus"), \
                    ratio(l50, cl)
            }
            printf "msgs/s and CPU (both cores of the process, per measured interval) from the flooding runs; one-way latency from runs paced at %s msgs/s\n", memrate
        }
        if (has(workloads, "bulk")) {
            printf "\n-- bulk: %s segments each way over tcp (ringwire window %s)\n", segment, window
            fmt = "%-10s | %12s | %10s | %8s | %8s | %14s | %14s | %10s\n"
            printf fmt, "stack", "Gbit/s (1 way)", "x tcp-copy", "srv CPU", "cli CPU", "srv peak RSS", "cli peak RSS", "seg rtt p50"
            cg = m("tcp-copy", "tcp", "bulk", "gbit_per_s")
            split("ringwire tcp-copy", bs, " ")
            for (i = 1; i <= 2; i++) {
                s = bs[i]
                if (!((s SUBSEP "tcp") in seen)) { printf "%-10s | (not run)\n", s; continue }
                g = m(s, "tcp", "bulk", "gbit_per_s")
                printf fmt, s, num(g, "%.2f"), ratio(g, cg), num(m(s, "tcp", "bulk", "server_cpu_s"), "%.2fs"), \
                    num(m(s, "tcp", "bulk", "client_cpu_s"), "%.2fs"), \
                    num(m(s, "tcp", "bulk", "server_peak_rss_kib"), "%.0f KiB"), num(m(s, "tcp", "bulk", "client_peak_rss_kib"), "%.0f KiB"), \
                    num(m(s, "tcp", "bulk", "p50_us"), "%.0fus")
            }
            rg = m("ringwire", "tcp", "bulk", "gbit_per_s")
            if (rg != "") printf "target: ringwire %s the TCP copy loop (>= 0.80x)\n", ratio(rg, cg)
        }
    }
' "$RESULTS"
echo
echo "msgs/srvCPU-s: messages per server CPU-second (server utime+stime from /proc/PID/stat over the"
echo "measured interval). 'srv CPU' and 'cli CPU' are the CPU seconds of the server and client over"
echo "that interval; ratios compare medians measured in this run. pp = ping-pong round trip."
echo
echo "raw RESULT lines:"
sed 's/^/  /' "$RESULTS"
