#!/usr/bin/env bash
# kafka.sh - a real single-node Apache Kafka 4.x broker (KRaft, no ZooKeeper,
# no Docker) for the iotpipe tests and benchmarks.
#
# Usage: kafka.sh COMMAND [ARGS] [--dir DIR] [--port PORT]
#
#   fetch                          download the broker jars into the cache
#                                  (no-op when cached; installs kcat via apt
#                                  when missing and running as root)
#   start [--dir D] [--port P] [--controller-port C]
#                                  fresh broker: wipe D's data, write config,
#                                  format storage, start, wait until it answers
#                                  metadata requests; prints the bootstrap
#                                  address (127.0.0.1:P) on stdout
#   stop [--dir D]                 stop (SIGTERM, then SIGKILL after a
#                                  deadline) and delete the data; idempotent
#   stop-keep-data [--dir D]       stop, keep the data (and port) for a restart
#   start-keep-data [--dir D]      start again on the kept data and port, wait
#                                  until ready and all partitions have leaders
#   restart-keep-data [--dir D]    stop-keep-data + start-keep-data
#   status [--dir D]               print state; exit 0 iff the broker runs
#   bootstrap [--dir D]            print the bootstrap address of D's broker
#   topic-create NAME PARTITIONS [--config k=v]...
#   topic-delete NAME
#   topic-add-partitions NAME TOTAL_PARTITIONS
#   topic-list
#   topic-describe [NAME]
#   produce-perf TOPIC NUM_RECORDS [RECORD_SIZE] [producer-prop=value]...
#                                  Kafka's ProducerPerformance tool
#
# Topic commands find the broker through --port, else DIR/broker.port, else
# the default port.  Defaults: DIR=/tmp/iotpipe-kafka (or $IOTPIPE_KAFKA_DIR),
# PORT=19092 (or $IOTPIPE_KAFKA_PORT), controller port = PORT+1.
#
# Cache: $KAFKA_CACHE_DIR, else $IOTPIPE_CACHE/kafka, else <repo>/.cache/kafka.
# Other environment: JAVA (default: $JAVA_HOME/bin/java or java),
# KAFKA_START_TIMEOUT (s, default 60), KAFKA_STOP_TIMEOUT (s, default 30),
# KAFKA_HEAP_OPTS (default -Xms256m -Xmx768m), KAFKA_EXTRA_JVM_OPTS,
# IOTPIPE_NO_APT=1 (never run apt-get), KAFKA_SH_NO_KCAT=1 (do not use kcat
# for the readiness checks; Kafka's Java TopicCommand is used instead).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
POM=$SCRIPT_DIR/pom.xml
LOG4J_CONF=$SCRIPT_DIR/log4j2.properties

if [[ -n ${KAFKA_CACHE_DIR:-} ]]; then
    CACHE_DIR=$KAFKA_CACHE_DIR
elif [[ -n ${IOTPIPE_CACHE:-} ]]; then
    CACHE_DIR=$IOTPIPE_CACHE/kafka
else
    CACHE_DIR=$REPO_ROOT/.cache/kafka
fi
LIBS_DIR=$CACHE_DIR/libs
STAMP=$CACHE_DIR/libs.stamp
# Bump when the layout of the cache changes.
CACHE_FORMAT=1

if [[ -n ${JAVA:-} ]]; then
    :
elif [[ -n ${JAVA_HOME:-} && -x ${JAVA_HOME}/bin/java ]]; then
    JAVA=$JAVA_HOME/bin/java
else
    JAVA=java
fi

DEFAULT_DIR=${IOTPIPE_KAFKA_DIR:-/tmp/iotpipe-kafka}
DEFAULT_PORT=${IOTPIPE_KAFKA_PORT:-19092}
START_TIMEOUT=${KAFKA_START_TIMEOUT:-60}
STOP_TIMEOUT=${KAFKA_STOP_TIMEOUT:-30}

# shellcheck disable=SC2206  # word splitting of the *_OPTS variables is wanted
BROKER_JVM_OPTS=(
    ${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_CONF"
    -Diotpipe.log.level=INFO -Diotpipe.log.target=SYSTEM_OUT
    ${KAFKA_EXTRA_JVM_OPTS:-}
)
# CLI tools: short-lived, optimise for start-up time.
TOOL_JVM_OPTS=(
    -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_CONF"
    -Diotpipe.log.level=WARN -Diotpipe.log.target=SYSTEM_ERR
)

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
now() { date +%s; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}

# --------------------------------------------------------------------------
# tools and jars
# --------------------------------------------------------------------------

apt_install() {
    # apt_install PKG... : install Debian packages when root and allowed.
    [[ ${IOTPIPE_NO_APT:-0} == 1 ]] && return 1
    [[ $(id -u) == 0 ]] || return 1
    command -v apt-get >/dev/null 2>&1 || return 1
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "$@" >&2; then
        apt-get update -q >&2 || true
        apt-get install -y -q --no-install-recommends "$@" >&2 || return 1
    fi
}

ensure_tools() {
    if ! command -v "$JAVA" >/dev/null 2>&1; then
        apt_install openjdk-17-jre-headless || die "java (17+) not found"
    fi
    if [[ ${KAFKA_SH_NO_KCAT:-0} != 1 ]] && ! command -v kcat >/dev/null 2>&1; then
        apt_install kcat || log "warning: kcat not available; using slower Java tools for readiness checks"
    fi
}

wanted_stamp() {
    printf 'format=%s pom=%s\n' "$CACHE_FORMAT" "$(sha256sum "$POM" | cut -d' ' -f1)"
}

cache_ok() {
    [[ -f $STAMP && -d $LIBS_DIR ]] || return 1
    [[ $(cat "$STAMP") == "$(wanted_stamp)" ]] || return 1
    compgen -G "$LIBS_DIR/kafka_2.13-*.jar" >/dev/null
}

cmd_fetch() {
    ensure_tools
    cache_ok && return 0
    if ! command -v mvn >/dev/null 2>&1; then
        apt_install maven || die "mvn not found"
    fi
    mkdir -p "$CACHE_DIR"
    # Serialise concurrent fetches (parallel test jobs).
    exec 9>"$CACHE_DIR/.lock"
    flock 9
    if cache_ok; then exec 9>&-; return 0; fi
    log "fetching Kafka jars into $LIBS_DIR (mvn)"
    local work
    work=$(mktemp -d "$CACHE_DIR/fetch.XXXXXX")
    # Run Maven on a copy of the pom so that no target/ appears in the repo.
    cp "$POM" "$work/pom.xml"
    local try ok=0
    for try in 1 2 3; do
        if mvn -B -q -Dstyle.color=never -f "$work/pom.xml" \
            -Dmaven.wagon.http.retryHandler.count=3 \
            dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$work/libs" >"$work/mvn.log" 2>&1; then
            ok=1
            break
        fi
        sed -e 's/\x1b\[[0-9;]*m//g' "$work/mvn.log" >&2
        log "mvn failed (attempt $try)"
        sleep $((try * 2))
    done
    if [[ $ok != 1 ]]; then
        rm -rf "$work"
        die "could not download the Kafka jars"
    fi
    compgen -G "$work/libs/kafka_2.13-*.jar" >/dev/null || die "kafka_2.13 jar missing after mvn"
    rm -rf "$LIBS_DIR"
    mv "$work/libs" "$LIBS_DIR"
    rm -rf "$work"
    wanted_stamp >"$STAMP"
    exec 9>&-
    log "fetched $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars"
}

run_tool() {
    # run_tool CLASS ARGS... : run a Kafka CLI class.
    "$JAVA" "${TOOL_JVM_OPTS[@]}" -cp "$LIBS_DIR/*" "$@"
}

# --------------------------------------------------------------------------
# argument handling
# --------------------------------------------------------------------------

DIR=""
PORT=""
CTRL_PORT=""
POSITIONAL=()
TOPIC_CONFIGS=()

parse_args() {
    while (($#)); do
        case $1 in
            --dir) [[ $# -ge 2 ]] || die "--dir needs a value"; DIR=$2; shift 2 ;;
            --dir=*) DIR=${1#*=}; shift ;;
            --port) [[ $# -ge 2 ]] || die "--port needs a value"; PORT=$2; shift 2 ;;
            --port=*) PORT=${1#*=}; shift ;;
            --controller-port) [[ $# -ge 2 ]] || die "--controller-port needs a value"; CTRL_PORT=$2; shift 2 ;;
            --controller-port=*) CTRL_PORT=${1#*=}; shift ;;
            --config) [[ $# -ge 2 ]] || die "--config needs a value"; TOPIC_CONFIGS+=("$2"); shift 2 ;;
            --config=*) TOPIC_CONFIGS+=("${1#*=}"); shift ;;
            -h|--help) usage 0 ;;
            --) shift; POSITIONAL+=("$@"); break ;;
            *) POSITIONAL+=("$1"); shift ;;
        esac
    done
    DIR=${DIR:-$DEFAULT_DIR}
    # Absolute path: it ends up in the config and in the pid check.
    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if [[ -n $PORT ]]; then
        [[ $PORT =~ ^[0-9]+$ ]] || die "bad port: $PORT"
    fi
    if [[ -n $CTRL_PORT ]]; then
        [[ $CTRL_PORT =~ ^[0-9]+$ ]] || die "bad controller port: $CTRL_PORT"
    fi
}

# The port of DIR's broker: --port, else DIR/broker.port, else the default.
resolve_port() {
    if [[ -n $PORT ]]; then
        printf '%s\n' "$PORT"
    elif [[ -s $DIR/broker.port ]]; then
        cat "$DIR/broker.port"
    else
        printf '%s\n' "$DEFAULT_PORT"
    fi
}

bootstrap_of() { printf '127.0.0.1:%s\n' "$1"; }

# --------------------------------------------------------------------------
# process handling
# --------------------------------------------------------------------------

# Print the pid of DIR's broker if it is running (matching its command line,
# which guards against stale pid files and pid reuse; zombies have an empty
# command line and count as stopped).
broker_pid() {
    local pidfile=$DIR/broker.pid pid cmdline
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *kafka.Kafka*"$DIR/server.properties"* ]] || return 1
    printf '%s\n' "$pid"
}

port_in_use() {
    # bash's /dev/tcp: succeeds iff something accepts on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

stop_broker() {
    local pid deadline
    if ! pid=$(broker_pid); then
        rm -f "$DIR/broker.pid"
        return 0
    fi
    log "stopping broker pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(($(now) + STOP_TIMEOUT))
    while broker_pid >/dev/null; do
        if (($(now) >= deadline)); then
            log "broker did not stop within ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$(($(now) + 10))
            while broker_pid >/dev/null && (($(now) < deadline)); do sleep 0.2; done
            broker_pid >/dev/null && die "broker pid $pid survived SIGKILL"
            break
        fi
        sleep 0.2
    done
    rm -f "$DIR/broker.pid"
    printf '=== kafka.sh: broker stopped %s ===\n' "$(date -Is)" >>"$DIR/broker.log"
}

launch_broker() {
    printf '=== kafka.sh: starting broker %s ===\n' "$(date -Is)" >>"$DIR/broker.log"
    # setsid: own session, so that signals aimed at the caller's process group
    # (Ctrl-C, test-runner timeouts) do not hit the broker; the test harness
    # stops it explicitly.  Not being a group leader, setsid execs java in
    # place, so $! is the java pid.
    setsid "$JAVA" "${BROKER_JVM_OPTS[@]}" -cp "$LIBS_DIR/*" \
        kafka.Kafka "$DIR/server.properties" \
        >>"$DIR/broker.log" 2>&1 </dev/null &
    printf '%s\n' "$!" >"$DIR/broker.pid"
}

# --------------------------------------------------------------------------
# metadata probes (kcat when available, else Kafka's TopicCommand)
# --------------------------------------------------------------------------

write_admin_config() {
    # Short timeouts so that a tool fails fast instead of retrying for 60 s.
    cat >"$DIR/admin.properties" <<'EOF'
request.timeout.ms=5000
default.api.timeout.ms=15000
retries=3
EOF
}

topic_cmd() {
    local bootstrap=$1
    shift
    write_admin_config
    run_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$bootstrap" --command-config "$DIR/admin.properties" "$@"
}

have_kcat() {
    [[ ${KAFKA_SH_NO_KCAT:-0} != 1 ]] && command -v kcat >/dev/null 2>&1
}

# metadata BOOTSTRAP [TOPIC]: kcat -L style listing on stdout; fails if the
# broker does not answer.
kcat_metadata() {
    local bootstrap=$1 topic=${2:-}
    local args=(-b "$bootstrap" -L -m 3 -X socket.timeout.ms=3000 -X topic.metadata.refresh.interval.ms=-1)
    [[ -n $topic ]] && args+=(-t "$topic")
    kcat "${args[@]}" 2>/dev/null
}

# broker_answers BOOTSTRAP PORT
broker_answers() {
    local bootstrap=$1 port=$2 out
    port_in_use "$port" || return 1
    if have_kcat; then
        out=$(kcat_metadata "$bootstrap") || return 1
        [[ $out == *"broker 1 at"* ]]
    else
        topic_cmd "$bootstrap" --list >/dev/null 2>&1
    fi
}

# all_partitions_led BOOTSTRAP : no partition without a leader.
all_partitions_led() {
    local bootstrap=$1 out
    if have_kcat; then
        out=$(kcat_metadata "$bootstrap") || return 1
        [[ $out != *"leader -1"* && $out != *"Leader not available"* ]]
    else
        out=$(topic_cmd "$bootstrap" --describe --unavailable-partitions 2>/dev/null) || return 1
        [[ -z ${out//[[:space:]]/} ]]
    fi
}

# topic_partitions BOOTSTRAP TOPIC : prints the number of partitions that
# have a leader, or nothing if the topic does not exist.
topic_led_partitions() {
    local bootstrap=$1 topic=$2 out
    if have_kcat; then
        out=$(kcat_metadata "$bootstrap" "$topic") || return 1
        # A missing topic reads 'topic "x" with 0 partitions: Broker: Unknown
        # topic or partition'.
        [[ $out == *"topic \"$topic\" with "* && $out != *"Unknown topic or partition"* ]] || return 0
        grep -Ec '^ +partition [0-9]+, leader [0-9]+,' <<<"$out" || true
    else
        out=$(topic_cmd "$bootstrap" --describe --topic "$topic" 2>/dev/null) || return 0
        grep -Ec 'Partition: [0-9]+.*Leader: [0-9]+' <<<"$out" || true
    fi
}

# wait_until DESCRIPTION TIMEOUT CMD... : poll CMD until it succeeds.
wait_until() {
    local what=$1 timeout=$2
    shift 2
    local deadline=$(($(now) + timeout))
    until "$@"; do
        if (($(now) >= deadline)); then
            log "timed out after ${timeout}s waiting for $what"
            return 1
        fi
        sleep 0.3
    done
}

broker_up_and_answering() {
    # Fails fast (exit 3) if the broker process died.
    if ! broker_pid >/dev/null; then
        log "broker process exited; last lines of $DIR/broker.log:"
        tail -n 40 "$DIR/broker.log" >&2 || true
        exit 3
    fi
    broker_answers "$1" "$2"
}

wait_ready() {
    local port=$1 need_leaders=$2 bootstrap t0
    bootstrap=$(bootstrap_of "$port")
    t0=$(now)
    if ! wait_until "broker at $bootstrap" "$START_TIMEOUT" broker_up_and_answering "$bootstrap" "$port"; then
        tail -n 40 "$DIR/broker.log" >&2 || true
        die "broker not ready"
    fi
    if [[ $need_leaders == 1 ]]; then
        local left=$((START_TIMEOUT - ($(now) - t0)))
        ((left > 5)) || left=5
        wait_until "partition leaders" "$left" all_partitions_led "$bootstrap" ||
            die "some partitions have no leader"
    fi
    log "broker ready at $bootstrap after $(($(now) - t0))s (pid $(broker_pid || echo '?'))"
}

# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------

gen_cluster_id() {
    # A Kafka Uuid is 16 random bytes in unpadded URL-safe base64; Kafka's own
    # generator avoids ids starting with '-' (they look like options).
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        [[ $id != -* ]] && break
    done
    printf '%s\n' "$id"
}

write_config() {
    local port=$1 ctrl=$2
    cat >"$DIR/server.properties" <<EOF
# Generated by test/kafka/kafka.sh - single-node KRaft broker for tests.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$ctrl
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$ctrl
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/data
num.partitions=4
auto.create.topics.enable=false
delete.topic.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
log.cleaner.dedupe.buffer.size=16777216
log.retention.hours=168
EOF
}

cmd_start() {
    local port=${PORT:-$DEFAULT_PORT}
    local ctrl=${CTRL_PORT:-$((port + 1))}
    cmd_fetch
    stop_broker
    port_in_use "$port" && die "port $port is already in use (another broker?)"
    port_in_use "$ctrl" && die "controller port $ctrl is already in use"
    rm -rf "$DIR/data"
    mkdir -p "$DIR/data"
    : >"$DIR/broker.log"
    write_config "$port" "$ctrl"
    printf '%s\n' "$port" >"$DIR/broker.port"
    local cid
    cid=$(gen_cluster_id)
    if ! run_tool kafka.tools.StorageTool format -t "$cid" -c "$DIR/server.properties" \
        >"$DIR/format.log" 2>&1; then
        cat "$DIR/format.log" >&2
        die "storage format failed"
    fi
    launch_broker
    wait_ready "$port" 0
    bootstrap_of "$port"
}

cmd_start_keep_data() {
    [[ -f $DIR/server.properties && -s $DIR/broker.port ]] ||
        die "no broker data in $DIR (run 'kafka.sh start' first)"
    compgen -G "$DIR/data/meta.properties" >/dev/null || die "storage in $DIR/data is not formatted"
    cmd_fetch
    local port
    port=$(<"$DIR/broker.port")
    [[ -z $PORT || $PORT == "$port" ]] || die "data in $DIR belongs to port $port, not $PORT"
    if broker_pid >/dev/null; then
        log "broker already running"
    else
        port_in_use "$port" && die "port $port is already in use (another broker?)"
        launch_broker
    fi
    wait_ready "$port" 1
    bootstrap_of "$port"
}

cmd_stop_keep_data() {
    stop_broker
}

cmd_stop() {
    stop_broker
    rm -rf "$DIR/data" "$DIR/admin.properties"
}

cmd_restart_keep_data() {
    stop_broker
    cmd_start_keep_data
}

cmd_status() {
    local pid port
    port=$(resolve_port)
    if pid=$(broker_pid); then
        printf 'running pid=%s bootstrap=%s dir=%s\n' "$pid" "$(bootstrap_of "$port")" "$DIR"
    else
        printf 'stopped dir=%s\n' "$DIR"
        return 1
    fi
}

need_libs() {
    cache_ok || cmd_fetch
}

cmd_topic_create() {
    (($# == 2)) || die "usage: kafka.sh topic-create NAME PARTITIONS"
    local name=$1 parts=$2 bootstrap cfg
    [[ $parts =~ ^[0-9]+$ ]] || die "bad partition count: $parts"
    need_libs
    bootstrap=$(bootstrap_of "$(resolve_port)")
    local extra=()
    for cfg in "${TOPIC_CONFIGS[@]+"${TOPIC_CONFIGS[@]}"}"; do extra+=(--config "$cfg"); done
    topic_cmd "$bootstrap" --create --topic "$name" --partitions "$parts" \
        --replication-factor 1 "${extra[@]+"${extra[@]}"}" >&2
    wait_until "topic $name with $parts led partitions" 30 \
        topic_has_led_partitions "$bootstrap" "$name" "$parts" || die "topic $name not ready"
}

topic_has_led_partitions() {
    [[ $(topic_led_partitions "$1" "$2") == "$3" ]]
}

topic_absent() {
    local n
    n=$(topic_led_partitions "$1" "$2") || return 1
    [[ -z $n ]]
}

cmd_topic_delete() {
    (($# == 1)) || die "usage: kafka.sh topic-delete NAME"
    local name=$1 bootstrap
    need_libs
    bootstrap=$(bootstrap_of "$(resolve_port)")
    topic_cmd "$bootstrap" --delete --if-exists --topic "$name" >&2
    wait_until "deletion of topic $name" 30 topic_absent "$bootstrap" "$name" ||
        die "topic $name still exists"
}

cmd_topic_add_partitions() {
    (($# == 2)) || die "usage: kafka.sh topic-add-partitions NAME TOTAL_PARTITIONS"
    local name=$1 parts=$2 bootstrap
    [[ $parts =~ ^[0-9]+$ ]] || die "bad partition count: $parts"
    need_libs
    bootstrap=$(bootstrap_of "$(resolve_port)")
    topic_cmd "$bootstrap" --alter --topic "$name" --partitions "$parts" >&2
    wait_until "topic $name with $parts led partitions" 30 \
        topic_has_led_partitions "$bootstrap" "$name" "$parts" || die "topic $name not ready"
}

cmd_topic_list() {
    need_libs
    topic_cmd "$(bootstrap_of "$(resolve_port)")" --list
}

cmd_topic_describe() {
    need_libs
    local args=()
    (($# >= 1)) && args=(--topic "$1")
    topic_cmd "$(bootstrap_of "$(resolve_port)")" --describe "${args[@]+"${args[@]}"}"
}

cmd_produce_perf() {
    (($# >= 2)) || die "usage: kafka.sh produce-perf TOPIC NUM_RECORDS [RECORD_SIZE] [prop=value]..."
    local topic=$1 num=$2 size=${3:-200}
    shift 2
    (($# >= 1)) && shift
    need_libs
    # With auto-creation off, ProducerPerformance would block on every record
    # of a missing topic: check first.
    local n
    n=$(topic_led_partitions "$(bootstrap_of "$(resolve_port)")" "$topic") || n=""
    [[ -n $n && $n != 0 ]] || die "topic $topic does not exist (kafka.sh topic-create $topic N)"
    run_tool org.apache.kafka.tools.ProducerPerformance \
        --topic "$topic" --num-records "$num" --record-size "$size" --throughput -1 \
        --command-property "bootstrap.servers=$(bootstrap_of "$(resolve_port)")" \
        acks=all linger.ms=5 batch.size=262144 compression.type=none max.block.ms=10000 "$@"
}

main() {
    (($#)) || usage
    local cmd=$1
    shift
    parse_args "$@"
    set -- "${POSITIONAL[@]+"${POSITIONAL[@]}"}"
    case $cmd in
        fetch) cmd_fetch ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        stop-keep-data) cmd_stop_keep_data ;;
        start-keep-data) cmd_start_keep_data ;;
        restart-keep-data) cmd_restart_keep_data ;;
        status) cmd_status ;;
        bootstrap) bootstrap_of "$(resolve_port)" ;;
        topic-create) cmd_topic_create "$@" ;;
        topic-delete) cmd_topic_delete "$@" ;;
        topic-add-partitions) cmd_topic_add_partitions "$@" ;;
        topic-list) cmd_topic_list ;;
        topic-describe) cmd_topic_describe "$@" ;;
        produce-perf) cmd_produce_perf "$@" ;;
        help|-h|--help) usage 0 ;;
        *) log "unknown command: $cmd"; usage ;;
    esac
}

main "$@"
