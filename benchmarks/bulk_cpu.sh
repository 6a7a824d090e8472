#!/bin/bash
# CPU seconds the tunnel spends on bulk transfers, which stay comparable on a busy machine
# when MB/s do not. Starts the e2e origin, `ytun server` and `ytun client` from TREE on
# loopback, moves ROUNDS x 100 MiB with curl (download or upload), and prints the median
# MB/s and the CPU ticks (1/100 s, utime+stime from /proc) each tunnel process used.
#
#   bash benchmarks/bulk_cpu.sh TREE down|up [ROUNDS]
#
# Run it from the repository root; compare two trees by alternating runs.
set -eu
TREE=$(cd "$1" && pwd); MODE=$2; ROUNDS=${3:-5}
PY=${PYTHON:-$(pwd)/.venv/bin/python}
BENCH=$(cd "$(dirname "$0")/.." && pwd)
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
OP=$(free_port); SP=$(free_port); ID=bulk-$RANDOM$RANDOM$RANDOM
LOGS=$(mktemp -d)
UPLOAD=$LOGS/upload.bin
trap 'kill $C $S $O 2>/dev/null; wait 2>/dev/null; rm -rf "$LOGS"' EXIT
(cd "$BENCH" && exec "$PY" -m benchmarks.e2e.origin --port "$OP") >"$LOGS/origin" 2>&1 & O=$!
(cd "$TREE" && exec "$PY" -m ytun server --listen "127.0.0.1:$SP" --host "bench.local:$SP=$ID" \
    --log-level warning) >"$LOGS/server" 2>&1 & S=$!
sleep 1.5
(cd "$TREE" && exec "$PY" -m ytun client --server "127.0.0.1:$SP" --identifier "$ID" \
    --local "127.0.0.1:$OP" --log-level warning) >"$LOGS/client" 2>&1 & C=$!
for _ in $(seq 50); do
    code=$(curl -s -o /dev/null -m 1 -H "Host: bench.local:$SP" "http://127.0.0.1:$SP/" -w '%{http_code}' || true)
    [ "$code" = 200 ] && break
    sleep 0.2
done
[ "$MODE" = up ] && head -c 104857600 /dev/zero >"$UPLOAD"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
s0=$(ticks $S); c0=$(ticks $C)
speeds=()
for _ in $(seq "$ROUNDS"); do
    if [ "$MODE" = down ]; then
        speeds+=("$(curl -s -o /dev/null -m 60 -H "Host: bench.local:$SP" \
            "http://127.0.0.1:$SP/bytes?n=104857600" -w '%{speed_download}')")
    else
        speeds+=("$(curl -s -o /dev/null -m 60 -H "Host: bench.local:$SP" --data-binary "@$UPLOAD" \
            -H 'Content-Type: application/octet-stream' "http://127.0.0.1:$SP/upload" -w '%{speed_upload}')")
    fi
done
s1=$(ticks $S); c1=$(ticks $C)
median=$(printf '%s\n' "${speeds[@]}" | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")
echo "$MODE $TREE: median $(( ${median%.*} / 1000000 )) MB/s; CPU ticks server $((s1 - s0)) client $((c1 - c0))"
