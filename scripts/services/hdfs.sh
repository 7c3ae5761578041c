#!/usr/bin/env bash
# A real HDFS (Hadoop MiniDFSCluster: one NameNode + one DataNode) on loopback for Weir's
# tests and for humans.
#
#   scripts/services/hdfs.sh start       build once (cached), start, wait for "Ready!", print env
#   scripts/services/hdfs.sh stop        stop it (SIGTERM: clean shutdown; SIGKILL after a bound)
#   scripts/services/hdfs.sh restart     stop + start KEEPING the data (= stop; KEEP_DATA=1 start)
#   scripts/services/hdfs.sh kill        SIGKILL at once (crash tests)
#   scripts/services/hdfs.sh status      exit 0 and print env when running and ready, else exit 1
#   scripts/services/hdfs.sh logs [N]    print the log (its last N lines)
#   scripts/services/hdfs.sh build       only resolve the jars and compile the launcher
#   scripts/services/hdfs.sh dfs ARGS..  `hdfs dfs` against it, e.g. `dfs -ls /` (Hadoop's FsShell)
#
# The last line that `start` prints on stdout is HDFS_URL=...; everything else goes to stderr.
# See scripts/services/README.md.
set -euo pipefail

NAME=hdfs.sh
# shellcheck source=scripts/services/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT="$HERE/hdfs"
CACHE="${WEIR_SERVICES_CACHE:-$HOME/.cache/weir-services}"
STATE="${WEIR_SERVICES_STATE:-/tmp/weir-services}"
DIR="$STATE/hdfs"
DATA="$DIR/data"
PIDFILE="$DIR/hdfs.pid"
LOG="$DIR/hdfs.log"
OUT="$DIR/stdout"
HOST=127.0.0.1
PORT="${WEIR_HDFS_PORT:-9000}"
HTTP_PORT="${WEIR_HDFS_HTTP_PORT:-0}"
JAVA_OPTS="${WEIR_HDFS_JAVA_OPTS:--Xmx1g -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"
LOG_LEVEL="${WEIR_HDFS_LOG_LEVEL:-WARN}"
START_TIMEOUT="${WEIR_HDFS_START_TIMEOUT:-120}"
STOP_TIMEOUT="${WEIR_HDFS_STOP_TIMEOUT:-40}"
BUILD_TIMEOUT="${WEIR_HDFS_BUILD_TIMEOUT:-1800}"
MAIN_CLASS=dev.weir.services.MiniDfs
URL="hdfs://$HOST:$PORT"

# The build is keyed by the launcher's sources, so editing pom.xml or the class rebuilds it.
HADOOP_VERSION=$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' "$PROJECT/pom.xml")
[ -n "$HADOOP_VERSION" ] || die "cannot read <hadoop.version> from $PROJECT/pom.xml"
SRC_HASH=$(cd "$PROJECT" && find pom.xml src -type f -print0 | LC_ALL=C sort -z | xargs -0 cat | sha256sum | cut -c1-12)
BUILD="$CACHE/hdfs-$HADOOP_VERSION-$SRC_HASH"
M2="${WEIR_MAVEN_REPO:-$CACHE/m2}"

# True when pid $1 is this launcher's server (a recycled pid is not).
is_ours() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q "$MAIN_CLASS"; }

classpath() { echo "$BUILD/classes:$(cat "$BUILD/classpath.txt")"; }

need_java() {
    command -v java >/dev/null || die "'java' not found on PATH (Java 17 needed)"
}

build() {
    need_java
    [ -f "$BUILD/.complete" ] && return 0
    command -v mvn >/dev/null || die "'mvn' not found on PATH (Maven resolves Hadoop's jars once)"
    mkdir -p "$BUILD"
    exec 8>"$BUILD/.build.lock"
    flock -w "$BUILD_TIMEOUT" 8 || die "timed out waiting for another build ($BUILD/.build.lock)"
    if [ -f "$BUILD/.complete" ]; then
        exec 8>&-
        return 0
    fi
    log "resolving hadoop-minicluster $HADOOP_VERSION into $M2 and compiling the launcher into $BUILD (once)"
    local t0=$SECONDS
    rm -rf "$BUILD/classes" "$BUILD/classpath.txt"
    # The jars stay in the local repository; classpath.txt lists them (no copies).
    if ! timeout "$BUILD_TIMEOUT" mvn -B -q -Dstyle.color=never -f "$PROJECT/pom.xml" \
        -Dmaven.repo.local="$M2" -Dweir.build.dir="$BUILD" \
        compile dependency:build-classpath -DincludeScope=runtime \
        -Dmdep.outputFile="$BUILD/classpath.txt" 2>&1 </dev/null |
        sed 's/\x1b\[[0-9;]*m//g' >&2; then  # Debian's Maven 3.8 prints colour resets even with -B
        die "Maven build of $PROJECT failed (see above); nothing was cached"
    fi
    [ -f "$BUILD/classes/dev/weir/services/MiniDfs.class" ] || die "build finished but MiniDfs.class is missing"
    [ -s "$BUILD/classpath.txt" ] || die "build finished but $BUILD/classpath.txt is empty"
    touch "$BUILD/.complete"
    log "built in $((SECONDS - t0)) s: $(tr ':' '\n' <"$BUILD/classpath.txt" | wc -l) jars ($(tr ':' '\n' <"$BUILD/classpath.txt" | xargs du -cb | tail -1 | awk '{printf "%d MB", $1/1e6}')) in $M2"
    exec 8>&-
}

ready() { [ -f "$OUT" ] && grep -qx 'Ready!' "$OUT" && port_open "$PORT"; }

write_log4j() {
    # Hadoop 3.x logs through log4j 1.x (reload4j). Everything to stderr (= the log file), so
    # the launcher's stdout carries only "Ready!".
    cat >"$DIR/log4j.properties" <<EOF
log4j.rootLogger=$LOG_LEVEL, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%d{ISO8601} %-5p [%t] %c{2}: %m%n
EOF
}

start() {
    lock_state
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        if ready; then
            log "already running (pid $pid) at $URL"
            echo "HDFS_URL=$URL"
            return 0
        fi
        log "process $pid is alive but not ready yet; waiting"
    else
        rm -f "$PIDFILE"
        if port_open "$PORT"; then
            log "port $HOST:$PORT is busy, held by another process:"
            port_owner "$PORT" >&2
            die "cannot start HDFS on $HOST:$PORT (set WEIR_HDFS_PORT, or stop that process)"
        fi
        build
        local format=true
        if [ "${KEEP_DATA:-0}" = 1 ] && [ -d "$DATA" ]; then
            format=false
        else
            rm -rf -- "$DATA"
        fi
        mkdir -p "$DATA"
        # java.io.tmpdir: Jetty unpacks the web UIs there; a SIGKILLed run leaves them behind.
        rm -rf -- "$DIR/tmp"
        mkdir -p "$DIR/tmp"
        write_log4j
        : >"$OUT"
        [ ! -f "$LOG" ] || mv -f "$LOG" "$LOG.prev"
        {
            echo "==== $(date -u +%FT%TZ) starting MiniDFSCluster (Hadoop $HADOOP_VERSION) on $URL, format=$format"
        } >>"$LOG"
        # setsid: not in the caller's process group, so Ctrl-C or the end of a test harness
        # does not take the cluster with it; only `stop` does.
        # shellcheck disable=SC2086 # JAVA_OPTS is a list of options
        WEIR_HDFS_BASEDIR="$DATA" WEIR_HDFS_PORT="$PORT" WEIR_HDFS_HTTP_PORT="$HTTP_PORT" \
            WEIR_HDFS_FORMAT="$format" \
            spawn java $JAVA_OPTS -Dlog4j.configuration="file:$DIR/log4j.properties" \
            -Djava.net.preferIPv4Stack=true -Djava.io.tmpdir="$DIR/tmp" \
            -cp "$(classpath)" "$MAIN_CLASS" ${WEIR_HDFS_CONF:-} \
            </dev/null >"$OUT" 2>>"$LOG"
        pid=$!
        echo "$pid" >"$PIDFILE"
    fi
    local deadline=$((SECONDS + START_TIMEOUT))
    until ready; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$PIDFILE"
            tail_log
            die "the HDFS launcher (pid $pid) exited during start-up; log: $LOG"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail_log
            die "HDFS (pid $pid) did not print Ready! within ${START_TIMEOUT}s (still running; '$0 stop' ends it)"
        fi
        sleep 0.2
    done
    log "running (pid $pid) at $URL, data in $DATA, log $LOG"
    echo "HDFS_URL=$URL"
}

status() {
    local pid
    pid=$(running_pid)
    if [ -z "$pid" ]; then
        log "not running"
        return 1
    fi
    if ! ready; then
        log "process $pid alive but not ready"
        return 1
    fi
    log "running (pid $pid) at $URL, data in $DATA, log $LOG"
    echo "HDFS_URL=$URL"
}

dfs() {
    build
    # FsShell insists on a core-site.xml on the classpath (it turns off Configuration's quiet
    # mode); it also logs WARNs (the native-hadoop library) through log4j: keep them off stdout.
    # The same dir works as HADOOP_CONF_DIR for other Hadoop clients.
    local conf="$DIR/client-conf"
    mkdir -p "$conf"
    cat >"$conf/core-site.xml" <<EOF
<?xml version="1.0"?>
<configuration>
  <property><name>fs.defaultFS</name><value>$URL</value></property>
</configuration>
EOF
    # hdfs-default.xml (replication 3) is loaded after core-site.xml, so this one goes here.
    cat >"$conf/hdfs-site.xml" <<EOF
<?xml version="1.0"?>
<configuration>
  <property><name>dfs.replication</name><value>1</value></property>
</configuration>
EOF
    cat >"$conf/log4j.properties" <<EOF
log4j.rootLogger=ERROR, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=%p %c{2}: %m%n
EOF
    exec java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j.configuration="file:$conf/log4j.properties" \
        -cp "$conf:$(classpath)" org.apache.hadoop.fs.FsShell "$@"
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
build) build && echo "$BUILD" ;;
dfs) shift && dfs "$@" ;;
*)
    echo "usage: $0 start|stop|restart|kill|status|logs [N]|build|dfs ARGS..." >&2
    exit 2
    ;;
esac
