#!/usr/bin/env bash
# Runs the example bot with rasa-omnidesk: the local Omnidesk sandbox (unless a
# real Omnidesk is configured), the action server, Rasa with the connector, and
# the customer chat page. `make run` calls it after setting up .venv.
#
# Real Omnidesk: set OMNIDESK_CHAT_ACCOUNT_TOKEN and the other OMNIDESK_*
# settings (docs/configuration.md) before running; otherwise the sandbox is used.
# Ports (all on 127.0.0.1): RASA_PORT (5005), ACTIONS_PORT (5055),
# SANDBOX_PORT (5081), PAGE_PORT (5010). RASA_CREDENTIALS: another credentials
# file than credentials.yml. Logs: .rasa/run-logs/.
# Ctrl-C or SIGTERM stops everything it started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="${VENV:-$ROOT/.venv}/bin"
PY="$BIN/python"
LOG_DIR="$ROOT/.rasa/run-logs"
RUN_DIR="$ROOT/.rasa/run"
MODEL="$ROOT/models/example-bot.tar.gz"

RASA_PORT="${RASA_PORT:-5005}"
ACTIONS_PORT="${ACTIONS_PORT:-5055}"
SANDBOX_PORT="${SANDBOX_PORT:-5081}"
PAGE_PORT="${PAGE_PORT:-5010}"

say() { printf '[run] %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ -x "$PY" ] || die "no Python environment at ${PY%/bin/python}: run scripts/bootstrap.sh (or make run) first"
mkdir -p "$LOG_DIR" "$RUN_DIR"

# --- what to run ----------------------------------------------------------------

if [ -n "${OMNIDESK_CHAT_ACCOUNT_TOKEN:-}" ]; then
    MODE=real
    # Validate every setting now, naming each that is missing or wrong.
    "$PY" - <<'EOF' || die "fix the OMNIDESK_* settings above (docs/configuration.md), or unset OMNIDESK_CHAT_ACCOUNT_TOKEN to use the local sandbox"
import sys
from connectors.omnidesk.settings import OmnideskSettings, SettingsError
try:
    OmnideskSettings.from_env()
except SettingsError as error:
    print(f"[run] {error}", file=sys.stderr)
    sys.exit(1)
EOF
else
    MODE=sandbox
    export OMNIDESK_API_URL="http://127.0.0.1:$SANDBOX_PORT"
    export OMNIDESK_CHAT_CONFIG_URL="http://127.0.0.1:$SANDBOX_PORT"
    export OMNIDESK_CHAT_ACCOUNT_TOKEN=sandboxAccountToken1
    export OMNIDESK_CHAT_SERVER_TOKEN=sandboxServerToken1
    export OMNIDESK_PUBLIC_URL="http://127.0.0.1:$RASA_PORT"
    OMNIDESK_HOOKPOINT_SECRET="$("$PY" -c 'import secrets, string; print("".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32)))')"
    export OMNIDESK_HOOKPOINT_SECRET
fi

# The channel may not be installed yet in a partial checkout: then Rasa serves
# plain socket.io, so the bot still answers (without the handoff relay).
if [ -n "${RASA_CREDENTIALS:-}" ]; then
    CREDENTIALS="$RASA_CREDENTIALS"
    WITH_CHANNEL=yes
elif "$PY" -c 'import connectors.omnidesk.channel.input' >/dev/null 2>&1; then
    CREDENTIALS="$ROOT/credentials.yml"
    WITH_CHANNEL=yes
else
    CREDENTIALS="$RUN_DIR/credentials-socketio-only.yml"
    WITH_CHANNEL=no
    cat >"$CREDENTIALS" <<'EOF'
socketio:
  user_message_evt: user_uttered
  bot_message_evt: bot_uttered
  session_persistence: true
EOF
    say "connectors/omnidesk/channel/input.py is not importable: running plain socket.io without the handoff relay"
fi

ENDPOINTS="$ROOT/endpoints.yml"
if [ "$ACTIONS_PORT" != 5055 ]; then
    ENDPOINTS="$RUN_DIR/endpoints.yml"
    printf 'action_endpoint:\n  url: "http://127.0.0.1:%s/webhook"\n' "$ACTIONS_PORT" >"$ENDPOINTS"
fi

# --- ports ------------------------------------------------------------------------

check_port() {  # name port address
    "$PY" - "$2" "$3" <<'EOF' || die "port $2 for $1 is taken (set ${4}=another port, or stop what uses it)"
import socket, sys
port, address = int(sys.argv[1]), sys.argv[2]
with socket.socket() as sock:
    # As the servers do: a port left in TIME_WAIT by a stopped server is free.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
    except OSError:
        sys.exit(1)
EOF
}
check_port "Rasa" "$RASA_PORT" 127.0.0.1 RASA_PORT
check_port "the action server" "$ACTIONS_PORT" 127.0.0.1 ACTIONS_PORT
check_port "the chat page" "$PAGE_PORT" 127.0.0.1 PAGE_PORT
[ "$MODE" = sandbox ] && check_port "the Omnidesk sandbox" "$SANDBOX_PORT" 127.0.0.1 SANDBOX_PORT

# --- training -----------------------------------------------------------------------

model_is_current() {
    [ -f "$MODEL" ] || return 1
    local file
    for file in domain.yml config.yml $(find data -name '*.yml'); do
        [ "$file" -nt "$MODEL" ] && return 1
    done
    return 0
}
if model_is_current; then
    say "the model is up to date: $MODEL"
else
    say "training the example bot (about 15 s; log: $LOG_DIR/train.log)"
    SQLALCHEMY_SILENCE_UBER_WARNING=1 "$BIN/rasa" train --quiet --fixed-model-name example-bot --out models \
        </dev/null >"$LOG_DIR/train.log" 2>&1 ||
        { tail -n 30 "$LOG_DIR/train.log" >&2; die "rasa train failed; the whole log is $LOG_DIR/train.log"; }
fi

# --- processes ------------------------------------------------------------------------

PIDS=()
NAMES=()
LOGS=()

stop_all() {
    trap - EXIT INT TERM
    local i
    for i in "${!PIDS[@]}"; do
        kill -TERM -- "-${PIDS[$i]}" 2>/dev/null || kill -TERM "${PIDS[$i]}" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 10))
    for i in "${!PIDS[@]}"; do
        while kill -0 "${PIDS[$i]}" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
        if kill -0 "${PIDS[$i]}" 2>/dev/null; then
            say "${NAMES[$i]} did not stop within 10 s; killing it"
            kill -KILL -- "-${PIDS[$i]}" 2>/dev/null || kill -KILL "${PIDS[$i]}" 2>/dev/null || true
        fi
    done
    say "stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

start() {  # name logfile command...
    local name="$1" log="$2"
    shift 2
    setsid "$@" </dev/null >"$log" 2>&1 &
    PIDS+=("$!")
    NAMES+=("$name")
    LOGS+=("$log")
}

wait_until_up() {  # index url seconds
    local i="$1" url="$2" limit="$3"
    local deadline=$((SECONDS + limit))
    while [ $SECONDS -lt $deadline ]; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
            tail -n 30 "${LOGS[$i]}" >&2
            die "${NAMES[$i]} exited while starting; its log is ${LOGS[$i]}"
        fi
        if "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$url" >/dev/null 2>&1; then
            say "${NAMES[$i]} is up"
            return 0
        fi
        sleep 0.5
    done
    tail -n 30 "${LOGS[$i]}" >&2
    die "${NAMES[$i]} did not answer at $url within $limit s; its log is ${LOGS[$i]}"
}

export SQLALCHEMY_SILENCE_UBER_WARNING=1
# Rasa loads scikit-learn, which imports numpy.distutils; with setuptools' distutils shim
# that sets the root logger to WARNING and hides every INFO line. The standard
# library's distutils leaves logging alone.
export SETUPTOOLS_USE_DISTUTILS=stdlib
if [ "$MODE" = sandbox ]; then
    start "the Omnidesk sandbox" "$LOG_DIR/sandbox.log" "$PY" -m omnidesk_sandbox --host 127.0.0.1 --port "$SANDBOX_PORT"
    wait_until_up $((${#PIDS[@]} - 1)) "http://127.0.0.1:$SANDBOX_PORT/agent" 30
fi

# rasa_sdk binds 0.0.0.0 unless SANIC_HOST says otherwise.
start "the action server" "$LOG_DIR/actions.log" env SANIC_HOST=127.0.0.1 "$BIN/rasa" run actions --port "$ACTIONS_PORT" --actions actions
ACTIONS_INDEX=$((${#PIDS[@]} - 1))

start "Rasa" "$LOG_DIR/rasa.log" "$BIN/rasa" run --model "$MODEL" --interface 127.0.0.1 --port "$RASA_PORT" \
    --enable-api --cors "http://127.0.0.1:$PAGE_PORT" "http://localhost:$PAGE_PORT" \
    --credentials "$CREDENTIALS" --endpoints "$ENDPOINTS"
RASA_INDEX=$((${#PIDS[@]} - 1))

start "the chat page server" "$LOG_DIR/page.log" "$PY" -m http.server "$PAGE_PORT" --bind 127.0.0.1 --directory "$ROOT/web"
PAGE_INDEX=$((${#PIDS[@]} - 1))

wait_until_up "$PAGE_INDEX" "http://127.0.0.1:$PAGE_PORT/" 15
wait_until_up "$ACTIONS_INDEX" "http://127.0.0.1:$ACTIONS_PORT/health" 90
wait_until_up "$RASA_INDEX" "http://127.0.0.1:$RASA_PORT/" 180

PAGE_URL="http://127.0.0.1:$PAGE_PORT/?server=http://127.0.0.1:$RASA_PORT"
echo
echo "rasa-omnidesk is running ($MODE mode$([ "$WITH_CHANNEL" = no ] && echo ', without the Omnidesk channel'))."
echo "  Customer chat page:  $PAGE_URL"
if [ "$MODE" = sandbox ]; then
    echo "  Agent page:          http://127.0.0.1:$SANDBOX_PORT/agent"
else
    echo "  Agent desk:          your Omnidesk account"
fi
echo "  Hookpoint base:      ${OMNIDESK_PUBLIC_URL%/}/webhooks/omnidesk/hook/***"
echo "  Rasa:                http://127.0.0.1:$RASA_PORT   action server: http://127.0.0.1:$ACTIONS_PORT"
echo "  Logs:                $LOG_DIR/"
echo "Press Ctrl-C to stop."
echo "RUN_READY $PAGE_URL"

# Stop everything as soon as one of them exits.
set +e
wait -n "${PIDS[@]}"
status=$?
for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
        say "${NAMES[$i]} exited (status $status); its log is ${LOGS[$i]}"
        tail -n 20 "${LOGS[$i]}" >&2
    fi
done
exit 1
