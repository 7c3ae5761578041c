#!/usr/bin/env bash
# A real S3 server (MinIO) on loopback for Weir's tests and for humans.
#
#   scripts/services/minio.sh start    build once (cached), start, wait until ready, print env
#   scripts/services/minio.sh stop     stop it (SIGTERM, then SIGKILL after a bound)
#   scripts/services/minio.sh restart  stop + start KEEPING the data (= stop; KEEP_DATA=1 start)
#   scripts/services/minio.sh kill     SIGKILL at once (crash tests)
#   scripts/services/minio.sh status   exit 0 and print env when running and ready, else exit 1
#   scripts/services/minio.sh logs [N] print the server log (or its last N lines)
#   scripts/services/minio.sh build    only build/cache the binary
#
# The last lines that `start` prints on stdout are AWS_* variables for a client;
# everything else goes to stderr. See scripts/services/README.md.
set -euo pipefail

NAME=minio.sh
# shellcheck source=scripts/services/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Go module proxy pseudo-version of github.com/minio/minio: commit 7aac2a2c5 (2026-02-12),
# = RELEASE.2025-10-15T17-29-55Z + 11 commits (last code change 2025-11-06; after that
# only README edits). The proxy does not serve the RELEASE.* tags themselves.
MINIO_VERSION="${WEIR_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
CACHE="${WEIR_SERVICES_CACHE:-$HOME/.cache/weir-services}"
STATE="${WEIR_SERVICES_STATE:-/tmp/weir-services}"
BIN_DIR="$CACHE/minio-$MINIO_VERSION/bin"
MINIO_BIN="${WEIR_MINIO_BIN:-$BIN_DIR/minio}"
DIR="$STATE/minio"
DATA="$DIR/data"
PIDFILE="$DIR/minio.pid"
LOG="$DIR/minio.log"
HOST=127.0.0.1
PORT="${WEIR_MINIO_PORT:-9100}"
CONSOLE_PORT="${WEIR_MINIO_CONSOLE_PORT:-9101}"
ROOT_USER="${MINIO_ROOT_USER:-weirtest}"
ROOT_PASSWORD="${MINIO_ROOT_PASSWORD:-weirtest-secret}"
START_TIMEOUT="${WEIR_MINIO_START_TIMEOUT:-60}"
STOP_TIMEOUT="${WEIR_MINIO_STOP_TIMEOUT:-15}"
BUILD_TIMEOUT="${WEIR_MINIO_BUILD_TIMEOUT:-1800}"
URL="http://$HOST:$PORT"

# True when pid $1 is this launcher's server (a recycled pid is not).
is_ours() { [ "$(cat "/proc/$1/comm" 2>/dev/null || true)" = minio ]; }

print_env() {
    echo "AWS_ENDPOINT_URL=$URL"
    echo "AWS_ACCESS_KEY_ID=$ROOT_USER"
    echo "AWS_SECRET_ACCESS_KEY=$ROOT_PASSWORD"
    echo "AWS_REGION=us-east-1"
}

ready() {
    [ "$(curl -s --noproxy '*' -o /dev/null -m 2 -w '%{http_code}' "$URL/minio/health/ready" 2>/dev/null || true)" = 200 ]
}

build() {
    if [ -x "$MINIO_BIN" ]; then
        return 0
    fi
    command -v go >/dev/null || die "'go' not found on PATH: MinIO is built from source (Go >= 1.24 needed)"
    mkdir -p "$BIN_DIR"
    exec 8>"$BIN_DIR/../.build.lock"
    flock -w "$BUILD_TIMEOUT" 8 || die "timed out waiting for another build of MinIO ($BIN_DIR/../.build.lock)"
    if [ -x "$MINIO_BIN" ]; then
        exec 8>&-
        return 0
    fi
    log "building github.com/minio/minio@$MINIO_VERSION into $BIN_DIR (takes minutes, 1-2 GB RAM; once)"
    local t0=$SECONDS
    if ! CGO_ENABLED=0 GOBIN="$BIN_DIR" GOFLAGS="${GOFLAGS:-} -trimpath" \
        timeout "$BUILD_TIMEOUT" go install -tags kqueue "github.com/minio/minio@$MINIO_VERSION" >&2; then
        die "building MinIO failed (see above); nothing was cached"
    fi
    [ -x "$MINIO_BIN" ] || die "go install finished but $MINIO_BIN is missing"
    log "built in $((SECONDS - t0)) s: $MINIO_BIN ($(du -h "$MINIO_BIN" | cut -f1))"
    exec 8>&-
}

start() {
    command -v curl >/dev/null || die "'curl' not found on PATH (used for the readiness check)"
    lock_state
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        if ready; then
            log "already running (pid $pid) at $URL"
            print_env
            return 0
        fi
        log "process $pid is alive but not ready yet; waiting"
    else
        rm -f "$PIDFILE"
        # Only the API port: with MINIO_BROWSER=off MinIO does not open the console port.
        if port_open "$PORT"; then
            log "port $HOST:$PORT is busy, held by another process:"
            port_owner "$PORT" >&2
            die "cannot start MinIO on $HOST:$PORT (set WEIR_MINIO_PORT, or stop that process)"
        fi
        build
        if [ "${KEEP_DATA:-0}" != 1 ]; then
            rm -rf -- "$DATA"
        fi
        mkdir -p "$DATA"
        [ ! -f "$LOG" ] || mv -f "$LOG" "$LOG.prev"
        {
            echo "==== $(date -u +%FT%TZ) starting $MINIO_BIN ($MINIO_VERSION) on $URL, KEEP_DATA=${KEEP_DATA:-0}"
        } >>"$LOG"
        # setsid: not a member of the caller's process group, so Ctrl-C in a terminal or
        # the end of a test harness does not take the server with it; only `stop` does.
        MINIO_ROOT_USER="$ROOT_USER" MINIO_ROOT_PASSWORD="$ROOT_PASSWORD" \
            MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CI_CD=1 \
            spawn "$MINIO_BIN" server "$DATA" --anonymous \
            --address "$HOST:$PORT" --console-address "$HOST:$CONSOLE_PORT" \
            </dev/null >>"$LOG" 2>&1
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            tail_log
            die "MinIO (pid $pid) exited during start-up; log: $LOG"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail_log
            die "MinIO (pid $pid) not ready at $URL/minio/health/ready after ${START_TIMEOUT}s (still running; '$0 stop' ends it)"
        fi
        sleep 0.2
    done
    log "running (pid $pid) at $URL, data in $DATA, log $LOG"
    print_env
}

status() {
    local pid
    pid=$(running_pid)
    if [ -z "$pid" ]; then
        log "not running"
        return 1
    fi
    if ! ready; then
        log "process $pid alive but $URL/minio/health/ready is not 200"
        return 1
    fi
    log "running (pid $pid) at $URL, data in $DATA, log $LOG"
    print_env
}

case "${1:-}" in
start) start ;;
stop) stop TERM ;;
restart)
    stop TERM
    exec 9>&- # release the state lock; start takes it again
    KEEP_DATA=1 start
    ;;
kill) stop KILL ;;
status) status ;;
logs)
    [ -f "$LOG" ] || die "no log yet at $LOG"
    if [ -n "${2:-}" ]; then tail -n "$2" "$LOG"; else cat "$LOG"; fi
    ;;
build) build && echo "$MINIO_BIN" ;;
*)
    echo "usage: $0 start|stop|restart|kill|status|logs [N]|build" >&2
    exit 2
    ;;
esac
