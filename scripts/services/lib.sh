# Shared helpers of the service launchers (minio.sh, hdfs.sh). Source it after setting
# NAME (for messages), DIR, LOG, PIDFILE, HOST, PORT, START_TIMEOUT, STOP_TIMEOUT and
# BUILD_TIMEOUT, and defining `is_ours PID` (true when PID is this launcher's server).
# shellcheck shell=bash

log() { echo "$NAME: $*" >&2; }
die() { echo "$NAME: error: $*" >&2; exit 1; }

tail_log() {
    if [ -f "$LOG" ]; then
        echo "---- last lines of $LOG ----" >&2
        tail -n "${1:-30}" "$LOG" >&2
        echo "----" >&2
    fi
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

port_owner() { ss -ltnpH "sport = :$1" 2>/dev/null || true; }

# The pid from the pid file if that process is alive and is our server, else nothing.
running_pid() {
    [ -f "$PIDFILE" ] || return 0
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    case "$pid" in '' | *[!0-9]*) return 0 ;; esac
    if kill -0 "$pid" 2>/dev/null && is_ours "$pid"; then
        echo "$pid"
    fi
}

# Run "$@" in the background with only stdin/stdout/stderr open: the lock fds and whatever
# the caller passed down (a test harness's pipes) must not stay open in a long-lived server,
# or the next `start` blocks on the lock and a caller reading until EOF hangs.
# $! is the server's pid: the subshell execs setsid, which (not being a group leader) execs it.
spawn() {
    (
        for fd in "/proc/$BASHPID/fd/"*; do
            fd=${fd##*/}
            if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
        done
        exec setsid "$@"
    ) &
}

lock_state() {
    mkdir -p "$DIR"
    exec 9>"$DIR/.lock"
    flock -w "$((BUILD_TIMEOUT + START_TIMEOUT))" 9 || die "timed out waiting for $DIR/.lock"
}

# Stops the server with SIG$1 (TERM or KILL), escalating to SIGKILL after STOP_TIMEOUT, and
# waits until its port is released.
stop() {
    local sig="${1:-TERM}"
    lock_state
    local pid
    pid=$(running_pid)
    if [ -z "$pid" ]; then
        rm -f "$PIDFILE"
        log "not running"
        return 0
    fi
    kill "-$sig" "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "pid $pid still alive ${STOP_TIMEOUT}s after SIG$sig; sending SIGKILL"
            tail_log 20
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            sig=KILL
        fi
        sleep 0.1
    done
    # The process is gone; make sure the port is released too before returning.
    deadline=$((SECONDS + 5))
    while port_open "$PORT"; do
        [ "$SECONDS" -lt "$deadline" ] || die "pid $pid exited but $HOST:$PORT still accepts connections: $(port_owner "$PORT")"
        sleep 0.1
    done
    rm -f "$PIDFILE"
    echo "==== $(date -u +%FT%TZ) stopped pid $pid (SIG$sig)" >>"$LOG"
    log "stopped (pid $pid)"
}
