#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, combined broker+controller) on loopback,
# for Weir's tests and for humans. No Docker: the broker jars come from Maven Central via mvn.
#
#   scripts/services/kafka.sh start     resolve jars (cached), format storage, start, wait until ready
#   scripts/services/kafka.sh stop      SIGTERM, wait, SIGKILL if needed
#   scripts/services/kafka.sh restart   stop + start, keeping the data (same cluster, same topics)
#   scripts/services/kafka.sh status    exit 0 if running and accepting connections, 1 otherwise
#   scripts/services/kafka.sh logs [N]  print the broker log (or its last N lines)
#   scripts/services/kafka.sh jars      resolve the jars if needed, print their directory
#
# `start` prints KAFKA_BROKERS=127.0.0.1:<port> as its last line on stdout; progress goes to stderr.
# Environment (all optional):
#   KAFKA_VERSION          Kafka 3.x version of org.apache.kafka:kafka_2.13 (default 3.9.1)
#   KAFKA_PORT             PLAINTEXT listener port (default 19092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default 19093)
#   WEIR_SERVICES_CACHE    jar cache root (default $HOME/.cache/weir-services)
#   WEIR_SERVICES_STATE    state root; Kafka uses <root>/kafka (default /tmp/weir-services)
#   KEEP_DATA=1            `start` keeps existing topics/offsets instead of wiping them
#   KAFKA_START_TIMEOUT    seconds to wait for readiness (default 90)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 30)
#   KAFKA_HEAP_OPTS        JVM heap flags (default -Xmx512m)
#   KAFKA_EXTRA_CONFIG     extra server.properties lines (newline-separated), appended last
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-3.9.1}"
SCALA_VERSION=2.13
SLF4J_RELOAD4J_VERSION=1.7.36
DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
KAFKA_HOST=127.0.0.1
KAFKA_PORT="${KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19093}"
CACHE_ROOT="${WEIR_SERVICES_CACHE:-${HOME:-/root}/.cache/weir-services}"
STATE_ROOT="${WEIR_SERVICES_STATE:-/tmp/weir-services}"
JAR_DIR="$CACHE_ROOT/kafka-$KAFKA_VERSION"
STATE_DIR="$STATE_ROOT/kafka"
DATA_DIR="$STATE_DIR/data"
PID_FILE="$STATE_DIR/kafka.pid"
LOG_FILE="$STATE_DIR/kafka.log"
CLUSTER_ID_FILE="$STATE_DIR/cluster.id"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m}"

say() { echo "kafka.sh: $*" >&2; }
die() { echo "kafka.sh: error: $*" >&2; exit 1; }

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}

check_port_var() {
    if ! [[ "$2" =~ ^[0-9]+$ ]] || (("$2" < 1 || "$2" > 65535)); then
        die "$1 must be a port number, got '$2'"
    fi
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$KAFKA_HOST/$1" 2>/dev/null
}

# The pid from the pid file if that process is alive and is our broker, else nothing.
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid: the process must be a JVM running kafka.Kafka.
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *" kafka.Kafka "* ]] || return 1
    echo "$pid"
}

print_address() {
    echo "KAFKA_BROKERS=$KAFKA_HOST:$KAFKA_PORT"
}

# Resolve the broker jars into $JAR_DIR (once; reused afterwards).
resolve_jars() {
    if [[ -f "$JAR_DIR/.complete" ]]; then
        return 0
    fi
    need mvn "install Maven (e.g. apt-get install maven)"
    need java "install a Java 17 runtime (e.g. apt-get install openjdk-17-jdk-headless)"
    mkdir -p "$CACHE_ROOT"
    local tmp
    tmp="$(mktemp -d "$CACHE_ROOT/.kafka-$KAFKA_VERSION.XXXXXX")"
    cat >"$tmp/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>weir.services</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_VERSION</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- Kafka's POM has no logging backend; without one the broker logs nothing. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>$SLF4J_RELOAD4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
    say "resolving org.apache.kafka:kafka_$SCALA_VERSION:$KAFKA_VERSION with Maven into $JAR_DIR (first time only)"
    local t0=$SECONDS
    if ! mvn -B -q -f "$tmp/pom.xml" "$DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$tmp/jars" >"$tmp/mvn.log" 2>&1; then
        cat "$tmp/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn could not resolve the Kafka jars (see output above; Maven Central must be reachable)"
    fi
    [[ -f "$tmp/jars/kafka_$SCALA_VERSION-$KAFKA_VERSION.jar" ]] \
        || { rm -rf "$tmp"; die "mvn finished but kafka_$SCALA_VERSION-$KAFKA_VERSION.jar is missing"; }
    touch "$tmp/jars/.complete"
    rm -rf "$JAR_DIR"
    mv "$tmp/jars" "$JAR_DIR"
    rm -rf "$tmp"
    say "resolved $(find "$JAR_DIR" -name '*.jar' | wc -l) jars ($(du -sh "$JAR_DIR" | cut -f1)) in $((SECONDS - t0)) s"
}

write_configs() {
    mkdir -p "$DATA_DIR"
    cat >"$STATE_DIR/server.properties" <<EOF
# Generated by scripts/services/kafka.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
${KAFKA_EXTRA_CONFIG:-}
EOF
    # Broker: INFO to stdout, which start() redirects into $LOG_FILE.
    cat >"$STATE_DIR/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
EOF
    # Tools (StorageTool): WARN to stderr, so their stdout is only their answer.
    cat >"$STATE_DIR/tools-log4j.properties" <<'EOF'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
}

run_tool() {
    java -Xmx256m -Dlog4j.configuration="file:$STATE_DIR/tools-log4j.properties" \
        -cp "$JAR_DIR/*" "$@"
}

format_storage() {
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        # Kept data (KEEP_DATA=1 / restart): already formatted; reuse its cluster id.
        sed -n 's/^cluster\.id=//p' "$DATA_DIR/meta.properties" >"$CLUSTER_ID_FILE"
        return 0
    fi
    local cluster_id
    cluster_id="$(run_tool kafka.tools.StorageTool random-uuid)" \
        || die "kafka.tools.StorageTool random-uuid failed"
    cluster_id="$(echo "$cluster_id" | tr -d '[:space:]')"
    [[ "$cluster_id" =~ ^[A-Za-z0-9_-]{22}$ ]] || die "unexpected cluster id from StorageTool: '$cluster_id'"
    echo "$cluster_id" >"$CLUSTER_ID_FILE"
    run_tool kafka.tools.StorageTool format -t "$cluster_id" -c "$STATE_DIR/server.properties" \
        --ignore-formatted >"$STATE_DIR/format.log" 2>&1 \
        || { cat "$STATE_DIR/format.log" >&2; die "formatting the storage in $DATA_DIR failed"; }
}

# Wait until the log says the server started and the port accepts connections.
wait_ready() {
    local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "the broker (pid $pid) exited during start-up; last log lines:"
            tail -n 40 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            exit 1
        fi
        if grep -q 'Kafka Server started' "$LOG_FILE" 2>/dev/null && port_open "$KAFKA_PORT"; then
            return 0
        fi
        sleep 0.25
    done
    say "timed out after ${START_TIMEOUT} s waiting for the broker (pid $pid); last log lines:"
    tail -n 40 "$LOG_FILE" >&2 || true
    say "the broker is still running; stop it with: $0 stop"
    exit 1
}

start() {
    need java "install a Java 17 runtime (e.g. apt-get install openjdk-17-jdk-headless)"
    mkdir -p "$STATE_DIR"
    # Serialise concurrent starts/stops (e.g. two test binaries starting the broker at once).
    exec 9>"$STATE_DIR/.lock"
    flock 9

    local pid
    if pid="$(running_pid)"; then
        if port_open "$KAFKA_PORT"; then
            say "already running (pid $pid) on $KAFKA_HOST:$KAFKA_PORT"
        else
            say "already starting (pid $pid); waiting for it"
            wait_ready "$pid"
        fi
        print_address
        return 0
    fi
    rm -f "$PID_FILE"
    if port_open "$KAFKA_PORT"; then
        die "port $KAFKA_HOST:$KAFKA_PORT is in use by another process (not started by this script); free it or set KAFKA_PORT"
    fi
    if port_open "$KAFKA_CONTROLLER_PORT"; then
        die "port $KAFKA_HOST:$KAFKA_CONTROLLER_PORT is in use by another process; free it or set KAFKA_CONTROLLER_PORT"
    fi

    resolve_jars
    if [[ "${KEEP_DATA:-0}" != 1 ]]; then
        rm -rf "$DATA_DIR" "$CLUSTER_ID_FILE"
    fi
    write_configs
    format_storage

    [[ -f "$LOG_FILE" ]] && mv -f "$LOG_FILE" "$LOG_FILE.prev"
    local t0=$SECONDS
    # setsid + all fds redirected: the broker outlives this script and never holds the
    # caller's stdout/stderr pipes open (so `$(kafka.sh start)` returns).
    # shellcheck disable=SC2086
    setsid java $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j.configuration="file:$STATE_DIR/log4j.properties" \
        -cp "$JAR_DIR/*" kafka.Kafka "$STATE_DIR/server.properties" \
        </dev/null >"$LOG_FILE" 2>&1 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
    say "started broker pid $pid (data $DATA_DIR, log $LOG_FILE); waiting up to ${START_TIMEOUT} s"
    wait_ready "$pid"
    say "ready on $KAFKA_HOST:$KAFKA_PORT after $((SECONDS - t0)) s"
    print_address
}

stop() {
    mkdir -p "$STATE_DIR"
    exec 9>"$STATE_DIR/.lock"
    flock 9
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PID_FILE"
        say "not running"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "broker (pid $pid) still alive after ${STOP_TIMEOUT} s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PID_FILE"
    say "stopped (pid $pid)"
}

status() {
    local pid
    if pid="$(running_pid)"; then
        if port_open "$KAFKA_PORT"; then
            echo "running (pid $pid) on $KAFKA_HOST:$KAFKA_PORT; data $DATA_DIR; log $LOG_FILE"
            return 0
        fi
        echo "starting or unhealthy (pid $pid alive, port $KAFKA_PORT closed); log $LOG_FILE"
        return 1
    fi
    echo "not running"
    return 1
}

logs() {
    [[ -f "$LOG_FILE" ]] || die "no log at $LOG_FILE (never started?)"
    if [[ -n "${1:-}" ]]; then
        tail -n "$1" "$LOG_FILE"
    else
        cat "$LOG_FILE"
    fi
}

check_port_var KAFKA_PORT "$KAFKA_PORT"
check_port_var KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
[[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
[[ "$KAFKA_VERSION" == 3.* ]] || die "KAFKA_VERSION=$KAFKA_VERSION: only Kafka 3.x is supported (4.x needs log4j2 and other start-up flags)"
need flock "install util-linux"
need setsid "install util-linux"

case "${1:-}" in
start) start ;;
stop) stop ;;
restart)
    (stop)
    KEEP_DATA=1 start
    ;;
status) status ;;
logs) logs "${2:-}" ;;
jars)
    resolve_jars
    echo "$JAR_DIR"
    ;;
*)
    echo "usage: $0 {start|stop|restart|status|logs|jars}" >&2
    exit 2
    ;;
esac
