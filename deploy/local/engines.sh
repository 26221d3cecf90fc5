#!/usr/bin/env bash
# Private, loopback-only PostgreSQL, Redis and Apache Kafka (KRaft) for development and tests,
# plus NATS JetStream, a 3-node Kafka cluster and a 6-node Redis Cluster (the other EventLog and
# Registry back ends). ENGINE: pg, redis, kafka, nats, kafka3, redis-cluster; and HAProxy in front of the
# dev cluster; and s3proxy, the S3 server of the attachments (s3).
#
#   engines.sh install                 install what is missing (Debian packages, Kafka and s3proxy jars)
#   engines.sh up [ENGINE|all]         start (idempotent), wait for readiness
#                                      (ENGINE: pg redis kafka nats kafka3 redis-cluster haproxy
#                                       prometheus s3)
#   engines.sh down [ENGINE|all]
#   engines.sh restart ENGINE|all
#   engines.sh kill nats | kafka3 N | redis-cluster N   kill -9 one process (fault injection)
#   engines.sh kill pg|redis|kafka     hard stop (fault injection): PostgreSQL immediate
#                                      shutdown, Redis and Kafka kill -9; `up` brings them back
#   engines.sh status                  one line per engine, exit 1 if any is down
#   engines.sh env                     print the SHARDCHAT_* exports for the running engines
#
# Everything lives under deploy/local/state/ (override with SHARDCHAT_STATE_DIR). Data survives
# down/up; delete the state folder to start from scratch. Nothing here touches the system
# PostgreSQL cluster or the system Redis service.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
STATE="${SHARDCHAT_STATE_DIR:-$HERE/state}"

PG_PORT="${SHARDCHAT_PG_PORT:-55432}"
REDIS_PORT="${SHARDCHAT_REDIS_PORT:-56379}"
KAFKA_PORT="${SHARDCHAT_KAFKA_PORT:-59092}"
KAFKA_CONTROLLER_PORT="${SHARDCHAT_KAFKA_CONTROLLER_PORT:-59093}"
KAFKA_VERSION="${SHARDCHAT_KAFKA_VERSION:-4.1.1}"
PG_OS_USER="${SHARDCHAT_PG_OS_USER:-shardchat-pg}"
PG_DB=shardchat
READY_TIMEOUT="${SHARDCHAT_READY_TIMEOUT:-90}"

PG_STATE="$STATE/pg"
REDIS_STATE="$STATE/redis"
KAFKA_STATE="$STATE/kafka"

log() { printf '[engines] %s\n' "$*" >&2; }
die() {
	printf '[engines] ERROR: %s\n' "$*" >&2
	exit 1
}

# Print the last lines of a log file to stderr (used on every readiness failure).
tail_log() {
	if [[ -f "$1" ]]; then
		printf '[engines] ---- last lines of %s ----\n' "$1" >&2
		tail -n "${2:-40}" "$1" >&2 || true
		printf '[engines] ----\n' >&2
	else
		printf '[engines] (no log file at %s)\n' "$1" >&2
	fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

apt_updated=0
apt_install() {
	if [[ $apt_updated -eq 0 ]] && ! apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1; then
		log "apt-get update"
		apt-get update -qq >/dev/null
		apt_updated=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------
pg_bin() {
	local d
	d="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
	[[ -n "$d" && -x "$d/initdb" ]] || return 1
	printf '%s\n' "$d"
}

# PostgreSQL refuses to run as root: run it as a dedicated system user.
as_pg() {
	if [[ $EUID -eq 0 ]]; then
		# cd /: the caller's directory may be unreadable for that user (a checkout under /root).
		(cd / && runuser -u "$PG_OS_USER" -- "$@")
	else
		"$@"
	fi
}

pg_ensure_user() {
	[[ $EUID -eq 0 ]] || return 0
	if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
		log "creating system user $PG_OS_USER"
		useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
			"$PG_OS_USER"
	fi
}

# The data directory. Normally $STATE/pg/data; when the PostgreSQL user cannot reach the state
# folder (a checkout under /root, mode 700), the data lives in /var/lib/shardchat-pg/<id> and
# $STATE/pg/data is a symlink to it, so the state folder still names it.
pg_data() {
	local link="$PG_STATE/data"
	if [[ -L "$link" ]]; then
		readlink -f "$link"
		return
	fi
	if [[ -d "$link" ]]; then
		printf '%s\n' "$link"
		return
	fi
	mkdir -p "$PG_STATE"
	if [[ $EUID -eq 0 ]] && ! runuser -u "$PG_OS_USER" -- test -x "$PG_STATE"; then
		local id alt
		id="$(printf '%s' "$PG_STATE" | sha1sum | cut -c1-12)"
		alt="/var/lib/shardchat-pg/$id"
		mkdir -p "$alt/data"
		ln -s "$alt/data" "$link"
		printf '%s\n' "$alt/data"
		return
	fi
	mkdir -p "$link"
	printf '%s\n' "$link"
}

pg_install() {
	if pg_bin >/dev/null; then
		log "postgresql: present ($(pg_bin))"
	else
		log "postgresql: installing Debian packages"
		apt_install postgresql
		pg_bin >/dev/null || die "postgresql installed but no initdb under /usr/lib/postgresql/*/bin"
	fi
	pg_ensure_user
}

pg_init() {
	local bin data
	bin="$(pg_bin)" || die "postgresql is not installed: run '$0 install'"
	pg_ensure_user
	data="$(pg_data)"
	if [[ -f "$data/PG_VERSION" ]]; then
		return 0
	fi
	log "postgresql: initdb in $data"
	mkdir -p "$data" "$PG_STATE"
	chmod 700 "$data"
	[[ $EUID -eq 0 ]] && chown "$PG_OS_USER:" "$data" "$PG_STATE"
	as_pg "$bin/initdb" -D "$data" -U shardchat --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
		>"$PG_STATE/initdb.log" 2>&1 || {
		tail_log "$PG_STATE/initdb.log"
		die "initdb failed"
	}
	cat >>"$data/postgresql.conf" <<EOF

# ---- shardchat deploy/local ----
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = ''
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
logging_collector = off
log_min_messages = warning
log_connections = off
EOF
	cat >"$data/pg_hba.conf" <<EOF
# shardchat deploy/local: loopback only, trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
EOF
	[[ $EUID -eq 0 ]] && chown "$PG_OS_USER:" "$data/postgresql.conf" "$data/pg_hba.conf"
	return 0
}

# Beside the data directory, so the PostgreSQL user can write it in the fallback layout too;
# $STATE/pg/postgresql.log links to it then.
pg_log() {
	local logf
	logf="$(dirname "$(pg_data)")/postgresql.log"
	if [[ "$logf" != "$PG_STATE/postgresql.log" && ! -e "$PG_STATE/postgresql.log" ]]; then
		ln -sfn "$logf" "$PG_STATE/postgresql.log"
	fi
	printf '%s\n' "$logf"
}

pg_running() {
	local bin data
	bin="$(pg_bin)" || return 1
	data="$(pg_data)"
	[[ -f "$data/PG_VERSION" ]] || return 1
	as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

pg_up() {
	local bin data logf
	pg_init
	bin="$(pg_bin)"
	data="$(pg_data)"
	logf="$(pg_log)"
	if ! pg_running; then
		touch "$logf"
		[[ $EUID -eq 0 ]] && chown "$PG_OS_USER:" "$logf"
		if ! as_pg "$bin/pg_ctl" -D "$data" -l "$logf" -w -t "$READY_TIMEOUT" start >/dev/null; then
			tail_log "$logf"
			die "postgresql failed to start (log: $logf)"
		fi
	fi
	local i
	for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
		if "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U shardchat -d postgres; then
			break
		fi
		sleep 0.2
	done
	if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U shardchat -d postgres; then
		tail_log "$logf"
		die "postgresql is not accepting connections on 127.0.0.1:$PG_PORT"
	fi
	if ! "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U shardchat -d postgres -tAqc \
		"SELECT 1 FROM pg_database WHERE datname = '$PG_DB'" | grep -q 1; then
		"$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U shardchat "$PG_DB"
	fi
	log "postgresql: up on 127.0.0.1:$PG_PORT (db/role shardchat, data $data)"
}

pg_down() {
	local bin data
	bin="$(pg_bin)" || return 0
	if pg_running; then
		data="$(pg_data)"
		as_pg "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
	fi
	log "postgresql: down"
}

pg_status() {
	if pg_running && "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
		echo "pg      up    127.0.0.1:$PG_PORT"
	else
		echo "pg      down"
		return 1
	fi
}

# ---------------------------------------------------------------------------------------------
# Redis
# ---------------------------------------------------------------------------------------------
redis_install() {
	if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
		log "redis: present ($(command -v redis-server))"
	else
		log "redis: installing Debian packages"
		apt_install redis-server
	fi
	# The package enables a system service on 6379; we never use it. Leave it be.
}

redis_ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null || true)" == PONG ]]; }

# The Redis on our port runs from this state folder's config (not some other instance).
redis_ours() {
	redis-cli -h 127.0.0.1 -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' |
		grep -qxF "config_file:$REDIS_STATE/redis.conf"
}

redis_up() {
	command -v redis-server >/dev/null || die "redis is not installed: run '$0 install'"
	mkdir -p "$REDIS_STATE"
	cat >"$REDIS_STATE/redis.conf" <<EOF
# generated by deploy/local/engines.sh
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $REDIS_STATE/redis.pid
logfile $REDIS_STATE/redis.log
dir $REDIS_STATE
dbfilename dump.rdb
maxclients 10000
tcp-backlog 511
# The Redis Streams event log needs it: an acknowledged XADD is in the AOF before the reply.
appendonly yes
appendfsync everysec
EOF
	if ! redis_ping; then
		if ! redis-server "$REDIS_STATE/redis.conf"; then
			tail_log "$REDIS_STATE/redis.log"
			die "redis-server failed to start"
		fi
		local i
		for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
			redis_ping && break
			sleep 0.1
		done
		if ! redis_ping; then
			tail_log "$REDIS_STATE/redis.log"
			die "redis did not answer PING on 127.0.0.1:$REDIS_PORT within ${READY_TIMEOUT}s"
		fi
	fi
	redis_ours || die "port $REDIS_PORT answers but is not this state folder's Redis"
	log "redis: up on 127.0.0.1:$REDIS_PORT (state $REDIS_STATE)"
}

redis_down() {
	local pidf="$REDIS_STATE/redis.pid" pid=""
	[[ -f "$pidf" ]] && pid="$(cat "$pidf" 2>/dev/null || true)"
	if redis_ours; then
		redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true
	fi
	if [[ -n "$pid" ]]; then
		local i
		for ((i = 0; i < 300; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi
	log "redis: down"
}

redis_status() {
	if redis_ping && redis_ours; then
		echo "redis   up    127.0.0.1:$REDIS_PORT"
	else
		echo "redis   down"
		return 1
	fi
}

# ---------------------------------------------------------------------------------------------
# Kafka (KRaft, one node that is both broker and controller)
# ---------------------------------------------------------------------------------------------
java_bin() {
	local j
	for j in "${SHARDCHAT_JAVA:-}" /usr/lib/jvm/java-17-openjdk-amd64/bin/java \
		/usr/lib/jvm/temurin-25-jdk-amd64/bin/java "$(command -v java || true)"; do
		if [[ -n "$j" && -x "$j" ]]; then
			printf '%s\n' "$j"
			return 0
		fi
	done
	return 1
}

kafka_libs() { printf '%s\n' "$KAFKA_STATE/libs"; }

# ---------------------------------------------------------------------------------------------
# Test tools (not engines): docker-compose v1 validates docker-compose.yml without an engine.
# ---------------------------------------------------------------------------------------------
tools_install() {
	if command -v docker-compose >/dev/null 2>&1; then
		log "docker-compose: present"
	else
		log "docker-compose: installing Debian package"
		apt_install docker-compose
	fi
	# The browser tests drive Debian's chromium through Playwright's own driver (a Python
	# package); Playwright's downloaded browsers are never used, so this is the only browser.
	if [[ -x /usr/bin/chromium ]]; then
		log "chromium: present"
	else
		log "chromium: installing Debian package"
		apt_install chromium
	fi
}

# stop_pid NAME PID SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL.
stop_pid() {
	local name="$1" pid="$2" i
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < $3 * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "$name: did not stop in $3s, killing"
	kill -KILL "$pid" 2>/dev/null || true
}

# Fetch a Java server's runtime jars with Maven (Debian maven and a JRE installed when missing):
# maven_jars NAME POM_DIR VERSION_PROPERTY VERSION LIBS STATE_DIR
maven_jars() {
	local name="$1" pom="$HERE/$2/pom.xml" prop="$3" version="$4" libs="$5" state="$6"
	local marker="$libs/.installed-$version"
	if ! java_bin >/dev/null; then
		log "$name: installing a Java runtime (Debian openjdk-17-jre-headless)"
		apt_install openjdk-17-jre-headless
	fi
	if [[ -f "$marker" ]]; then
		log "$name: jars present ($libs, $name $version)"
		return 0
	fi
	if ! command -v mvn >/dev/null; then
		log "$name: installing Debian maven"
		apt_install maven
	fi
	log "$name: fetching $name $version jars with maven into $libs"
	rm -rf "$libs"
	mkdir -p "$libs" "$state"
	local repo=()
	[[ -n "${SHARDCHAT_MAVEN_REPO:-}" ]] && repo=(-Dmaven.repo.local="$SHARDCHAT_MAVEN_REPO")
	if ! mvn -B -q "${repo[@]}" -f "$pom" -D"$prop"="$version" \
		dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" \
		>"$state/mvn.log" 2>&1; then
		tail_log "$state/mvn.log"
		die "maven could not fetch the $name jars"
	fi
	touch "$marker"
	log "$name: $(find "$libs" -name '*.jar' | wc -l) jars installed"
}

kafka_install() {
	maven_jars kafka kafka kafka.version "$KAFKA_VERSION" "$(kafka_libs)" "$KAFKA_STATE"
}

kafka_config() {
	mkdir -p "$KAFKA_STATE/data" "$KAFKA_STATE/logs"
	cat >"$KAFKA_STATE/server.properties" <<EOF
# generated by deploy/local/engines.sh
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,PROXIED://127.0.0.1:$KAFKA_PROXIED_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,PROXIED://127.0.0.1:$KAFKA_PROXY_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT
log.dirs=$KAFKA_STATE/data
num.partitions=32
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.hours=168
log.segment.bytes=134217728
# Index files are preallocated at this size per partition (default 10 MiB): tests make many
# 32-partition topics, so keep them small.
log.index.size.max.bytes=1048576
EOF
	cat >"$KAFKA_STATE/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by deploy/local/engines.sh -->
<Configuration status="WARN">
  <Appenders>
    <File name="server" fileName="$KAFKA_STATE/logs/server.log" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="kafka" level="INFO"/>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
  </Loggers>
</Configuration>
EOF
}

kafka_java() {
	local java
	java="$(java_bin)" || die "no Java runtime: run '$0 install'"
	"$java" -Xmx512m -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
		-Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.xml" \
		-Dkafka.logs.dir="$KAFKA_STATE/logs" \
		-cp "$(kafka_libs)/*" "$@"
}

kafka_format() {
	[[ -f "$KAFKA_STATE/data/meta.properties" ]] && return 0
	local cluster_id
	cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$KAFKA_STATE/format.log" | tail -n 1)"
	[[ -n "$cluster_id" ]] || {
		tail_log "$KAFKA_STATE/format.log"
		die "kafka: StorageTool random-uuid failed"
	}
	log "kafka: formatting storage (cluster id $cluster_id)"
	if ! kafka_java kafka.tools.StorageTool format -t "$cluster_id" \
		-c "$KAFKA_STATE/server.properties" >>"$KAFKA_STATE/format.log" 2>&1; then
		tail_log "$KAFKA_STATE/format.log"
		die "kafka: storage format failed"
	fi
}

kafka_pid() {
	local pid
	[[ -f "$KAFKA_STATE/kafka.pid" ]] || return 1
	pid="$(cat "$KAFKA_STATE/kafka.pid" 2>/dev/null || true)"
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
	# Guard against a recycled pid: it must be our broker.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $KAFKA_STATE/server.properties" ||
		return 1
	printf '%s\n' "$pid"
}

# The broker answers a Metadata request and lists itself. Uses aiokafka from the project venv when
# present (the client the project uses); otherwise falls back to the port check only.
kafka_probe() {
	port_open "$KAFKA_PORT" || return 1
	local py="$ROOT/.venv/bin/python"
	if [[ -x "$py" ]] && "$py" -c 'import aiokafka' 2>/dev/null; then
		"$py" - "127.0.0.1:$KAFKA_PORT" <<'EOF' >/dev/null 2>&1
import asyncio
import sys

from aiokafka import AIOKafkaClient


async def main() -> None:
    client = AIOKafkaClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        md = await asyncio.wait_for(client.fetch_all_metadata(), 5)
        assert md.brokers(), "no brokers in metadata"
    finally:
        await client.close()


asyncio.run(main())
EOF
	fi
}

kafka_up() {
	[[ -f "$(kafka_libs)/.installed-$KAFKA_VERSION" ]] || die "kafka is not installed: run '$0 install'"
	kafka_config
	kafka_format
	local pid logf="$KAFKA_STATE/logs/server.log" out="$KAFKA_STATE/logs/stdout.log"
	kafka_restart_if_reconfigured
	if ! pid="$(kafka_pid)"; then
		cp "$KAFKA_STATE/server.properties" "$KAFKA_STATE/server.properties.running"
		if port_open "$KAFKA_PORT"; then
			die "port $KAFKA_PORT is taken by another process (not this state folder's broker)"
		fi
		log "kafka: starting"
		# setsid: the broker must outlive this script and the shell that ran it.
		# shellcheck disable=SC2016  # $$ and $1 belong to the inner shell
		setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$KAFKA_STATE/kafka.pid" \
			"$(java_bin)" -Xmx512m -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
			-Djava.awt.headless=true \
			-Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.xml" \
			-Dkafka.logs.dir="$KAFKA_STATE/logs" \
			-cp "$(kafka_libs)/*" kafka.Kafka "$KAFKA_STATE/server.properties" \
			</dev/null >"$out" 2>&1 &
		disown || true
		sleep 0.5
	fi
	local i start=$SECONDS
	while ((SECONDS - start < READY_TIMEOUT)); do
		if ! pid="$(kafka_pid)"; then
			sleep 0.3
			pid="$(kafka_pid)" || {
				tail_log "$out" 20
				tail_log "$logf"
				die "kafka exited during startup"
			}
		fi
		if kafka_probe; then
			log "kafka: up on 127.0.0.1:$KAFKA_PORT (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT, pid $pid, Kafka $KAFKA_VERSION)"
			return 0
		fi
		sleep 0.3
	done
	tail_log "$out" 20
	tail_log "$logf"
	die "kafka did not become ready on 127.0.0.1:$KAFKA_PORT within ${READY_TIMEOUT}s"
}

kafka_down() {
	local pid
	if pid="$(kafka_pid)"; then
		stop_pid kafka "$pid" 60
	fi
	rm -f "$KAFKA_STATE/kafka.pid"
	log "kafka: down"
}

kafka_status() {
	local pid
	if pid="$(kafka_pid)" && port_open "$KAFKA_PORT"; then
		echo "kafka   up    127.0.0.1:$KAFKA_PORT (pid $pid)"
	else
		echo "kafka   down"
		return 1
	fi
}

# ---------------------------------------------------------------------------------------------
# NATS JetStream (one server; the EventLog adapter shardchat/adapters/nats_log.py)
# ---------------------------------------------------------------------------------------------
NATS_PORT="${SHARDCHAT_NATS_PORT:-58222}"
NATS_MONITOR_PORT="${SHARDCHAT_NATS_MONITOR_PORT:-58223}"
NATS_VERSION="${SHARDCHAT_NATS_VERSION:-v2.15.2}"
NATS_STATE="$STATE/nats"
NATS_BIN="$NATS_STATE/bin/nats-server"

go_bin() {
	local g
	for g in "${SHARDCHAT_GO:-}" /usr/local/go/bin/go "$(command -v go || true)"; do
		if [[ -n "$g" && -x "$g" ]]; then
			printf '%s\n' "$g"
			return 0
		fi
	done
	return 1
}

# Built from source with the Go toolchain (it is a Go module); the binary is kept in the state
# folder, and Go's module and build caches make a rebuild after `rm -rf state` quick.
nats_install() {
	local marker="$NATS_STATE/bin/.installed-$NATS_VERSION" go
	if [[ -x "$NATS_BIN" && -f "$marker" ]]; then
		log "nats: present ($NATS_BIN, $NATS_VERSION)"
		return 0
	fi
	if ! go="$(go_bin)"; then
		log "nats: installing Debian golang-go"
		apt_install golang-go
		go="$(go_bin)" || die "no Go toolchain for building nats-server"
	fi
	log "nats: building nats-server $NATS_VERSION with $go (a few minutes, once)"
	mkdir -p "$NATS_STATE/bin"
	if ! GOBIN="$NATS_STATE/bin" GOTOOLCHAIN=local "$go" install \
		"github.com/nats-io/nats-server/v2@$NATS_VERSION" >"$NATS_STATE/build.log" 2>&1; then
		tail_log "$NATS_STATE/build.log"
		die "nats-server build failed"
	fi
	touch "$marker"
}

nats_pid() {
	local pid
	pid="$(cat "$NATS_STATE/nats.pid" 2>/dev/null || true)"
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$NATS_STATE/nats.conf" || return 1
	printf '%s\n' "$pid"
}

# JetStream is ready when the monitoring endpoint's health check says so.
nats_ready() {
	local reply
	reply="$( (exec 3<>"/dev/tcp/127.0.0.1/$NATS_MONITOR_PORT" &&
		printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && cat <&3) 2>/dev/null || true)"
	[[ "$reply" == *'"status":"ok"'* ]]
}

nats_up() {
	[[ -x "$NATS_BIN" ]] || die "nats-server is not installed: run '$0 install'"
	mkdir -p "$NATS_STATE/data"
	cat >"$NATS_STATE/nats.conf" <<CONF
# generated by deploy/local/engines.sh
listen: "127.0.0.1:$NATS_PORT"
http: "127.0.0.1:$NATS_MONITOR_PORT"
server_name: shardchat-local
pid_file: "$NATS_STATE/nats.pid"
log_file: "$NATS_STATE/nats.log"
max_payload: 8MB
jetstream {
  store_dir: "$NATS_STATE/data"
  max_memory_store: 256MB
  max_file_store: 20GB
}
CONF
	if ! nats_pid >/dev/null; then
		port_open "$NATS_PORT" && die "port $NATS_PORT is taken by another process"
		# setsid: the server must outlive this script; it writes its own pid file.
		setsid "$NATS_BIN" -c "$NATS_STATE/nats.conf" </dev/null >>"$NATS_STATE/stdout.log" 2>&1 &
		disown || true
	fi
	local start=$SECONDS
	until nats_ready; do
		if ((SECONDS - start > READY_TIMEOUT)); then
			tail_log "$NATS_STATE/nats.log"
			die "nats did not become ready on 127.0.0.1:$NATS_PORT within ${READY_TIMEOUT}s"
		fi
		sleep 0.2
	done
	log "nats: up on 127.0.0.1:$NATS_PORT (JetStream, monitor :$NATS_MONITOR_PORT, state $NATS_STATE)"
}

nats_down() {
	local pid
	if pid="$(nats_pid)"; then
		stop_pid nats "$pid" 30
	fi
	log "nats: down"
}

nats_status() {
	if nats_pid >/dev/null && nats_ready; then
		echo "nats    up    127.0.0.1:$NATS_PORT"
	else
		echo "nats    down"
		return 1
	fi
}

nats_kill() {
	local pid
	pid="$(nats_pid)" && kill -KILL "$pid"
	log "nats: killed"
}

# ---------------------------------------------------------------------------------------------
# Kafka cluster: 3 KRaft nodes (each broker + controller), replication factor 3,
# min.insync.replicas 2. An option beside the single broker (the default): fault injection and
# benchmarks. Node i (1..3) listens on KAFKA3_PORT+i-1, its controller on
# KAFKA3_CONTROLLER_PORT+i-1. Same jars as the single broker.
# ---------------------------------------------------------------------------------------------
KAFKA3_PORT="${SHARDCHAT_KAFKA3_PORT:-58201}"
KAFKA3_CONTROLLER_PORT="${SHARDCHAT_KAFKA3_CONTROLLER_PORT:-58211}"
KAFKA3_STATE="$STATE/kafka3"
KAFKA3_NODES="1 2 3"

kafka3_port() { echo $((KAFKA3_PORT + $1 - 1)); }

kafka3_bootstrap() {
	local i out=""
	for i in $KAFKA3_NODES; do out+="${out:+,}127.0.0.1:$(kafka3_port "$i")"; done
	printf '%s\n' "$out"
}

kafka3_config() {
	local i="$1" dir="$KAFKA3_STATE/n$1" voters="" j
	for j in $KAFKA3_NODES; do
		voters+="${voters:+,}$j@127.0.0.1:$((KAFKA3_CONTROLLER_PORT + j - 1))"
	done
	mkdir -p "$dir/data" "$dir/logs"
	cat >"$dir/server.properties" <<CONF
# generated by deploy/local/engines.sh (3-node cluster, node $i)
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:$(kafka3_port "$i"),CONTROLLER://127.0.0.1:$((KAFKA3_CONTROLLER_PORT + i - 1))
advertised.listeners=PLAINTEXT://127.0.0.1:$(kafka3_port "$i")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=32
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
auto.create.topics.enable=true
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
log.segment.bytes=134217728
log.index.size.max.bytes=1048576
# A killed node is noticed within ~2 s (broker session timeout), leaders move at once.
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
CONF
	sed "s#$KAFKA_STATE/logs#$dir/logs#g" "$KAFKA_STATE/log4j2.xml" >"$dir/log4j2.xml"
}

kafka3_pid() {
	local pid dir="$KAFKA3_STATE/n$1"
	pid="$(cat "$dir/kafka.pid" 2>/dev/null || true)"
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $dir/server.properties" ||
		return 1
	printf '%s\n' "$pid"
}

kafka3_up() {
	[[ -f "$(kafka_libs)/.installed-$KAFKA_VERSION" ]] || die "kafka is not installed: run '$0 install'"
	kafka_config # the single broker's log4j2.xml is the template
	local i dir cluster_id
	for i in $KAFKA3_NODES; do kafka3_config "$i"; done
	if [[ ! -f "$KAFKA3_STATE/n1/data/meta.properties" ]]; then
		cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$KAFKA3_STATE/format.log" | tail -n 1)"
		[[ -n "$cluster_id" ]] || die "kafka3: StorageTool random-uuid failed"
		log "kafka3: formatting 3 nodes (cluster id $cluster_id)"
		for i in $KAFKA3_NODES; do
			kafka_java kafka.tools.StorageTool format -t "$cluster_id" \
				-c "$KAFKA3_STATE/n$i/server.properties" >>"$KAFKA3_STATE/format.log" 2>&1 || {
				tail_log "$KAFKA3_STATE/format.log"
				die "kafka3: storage format of node $i failed"
			}
		done
	fi
	# Every missing node at once: the quorum needs two of three to elect a controller.
	for i in $KAFKA3_NODES; do
		kafka3_pid "$i" >/dev/null && continue
		dir="$KAFKA3_STATE/n$i"
		port_open "$(kafka3_port "$i")" && die "port $(kafka3_port "$i") is taken by another process"
		# shellcheck disable=SC2016  # $$ and $1 belong to the inner shell
		setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$dir/kafka.pid" \
			"$(java_bin)" -Xmx384m -Xms128m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
			-Djava.awt.headless=true -Dlog4j2.configurationFile="$dir/log4j2.xml" \
			-Dkafka.logs.dir="$dir/logs" -cp "$(kafka_libs)/*" kafka.Kafka "$dir/server.properties" \
			</dev/null >"$dir/logs/stdout.log" 2>&1 &
		disown || true
	done
	local start=$SECONDS ready
	while ((SECONDS - start < READY_TIMEOUT)); do
		ready=0
		for i in $KAFKA3_NODES; do
			kafka3_pid "$i" >/dev/null || {
				sleep 0.5
				kafka3_pid "$i" >/dev/null || {
					tail_log "$KAFKA3_STATE/n$i/logs/stdout.log" 20
					die "kafka3: node $i exited during startup"
				}
			}
			KAFKA_PORT="$(kafka3_port "$i")" kafka_probe_brokers 3 && ready=$((ready + 1))
		done
		if ((ready == 3)); then
			log "kafka3: up on $(kafka3_bootstrap) (RF 3, min.insync.replicas 2, state $KAFKA3_STATE)"
			return 0
		fi
		sleep 0.5
	done
	tail_log "$KAFKA3_STATE/n1/logs/server.log"
	die "kafka3 did not become ready on $(kafka3_bootstrap) within ${READY_TIMEOUT}s"
}

# Ready = the node answers Metadata and lists all N brokers (aiokafka from .venv, else the port).
kafka_probe_brokers() {
	port_open "$KAFKA_PORT" || return 1
	local py="$ROOT/.venv/bin/python"
	[[ -x "$py" ]] && "$py" -c 'import aiokafka' 2>/dev/null || return 0
	"$py" - "127.0.0.1:$KAFKA_PORT" "$1" <<'PY' >/dev/null 2>&1
import asyncio
import sys

from aiokafka import AIOKafkaClient


async def main() -> None:
    client = AIOKafkaClient(bootstrap_servers=sys.argv[1], request_timeout_ms=3000)
    try:
        await asyncio.wait_for(client.bootstrap(), 5)
        md = await asyncio.wait_for(client.fetch_all_metadata(), 5)
        assert len(md.brokers()) >= int(sys.argv[2]), "not every broker registered yet"
    finally:
        await client.close()


asyncio.run(main())
PY
}

kafka3_down() {
	local i pid j
	for i in $KAFKA3_NODES; do
		pid="$(kafka3_pid "$i")" || continue
		kill -TERM "$pid" 2>/dev/null || true
	done
	for i in $KAFKA3_NODES; do
		pid="$(kafka3_pid "$i")" || continue
		for ((j = 0; j < 600; j++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
		rm -f "$KAFKA3_STATE/n$i/kafka.pid"
	done
	log "kafka3: down"
}

kafka3_status() {
	local i up=0
	for i in $KAFKA3_NODES; do kafka3_pid "$i" >/dev/null && port_open "$(kafka3_port "$i")" && up=$((up + 1)); done
	if ((up == 3)); then
		echo "kafka3  up    $(kafka3_bootstrap)"
	else
		echo "kafka3  down  ($up of 3 nodes)"
		return 1
	fi
}

# kill -9 one node (fault injection); `up kafka3` starts it again.
kafka3_kill() {
	local pid
	[[ " $KAFKA3_NODES " == *" ${1:-} "* ]] || die "usage: $0 kill kafka3 1|2|3"
	pid="$(kafka3_pid "$1")" && kill -KILL "$pid"
	log "kafka3: node $1 killed"
}

# ---------------------------------------------------------------------------------------------
# Redis Cluster: 6 nodes of the same redis-server, 3 masters + 3 replicas. Node i (1..6) listens
# on REDIS_CLUSTER_PORT+i-1 and its cluster bus on REDIS_CLUSTER_BUS_PORT+i-1 (the default bus,
# port + 10000, would pass 65535 here).
# ---------------------------------------------------------------------------------------------
REDIS_CLUSTER_PORT="${SHARDCHAT_REDIS_CLUSTER_PORT:-58231}"
REDIS_CLUSTER_BUS_PORT="${SHARDCHAT_REDIS_CLUSTER_BUS_PORT:-58241}"
RC_STATE="$STATE/redis-cluster"
RC_NODES="1 2 3 4 5 6"

rc_port() { echo $((REDIS_CLUSTER_PORT + $1 - 1)); }

rc_cli() {
	local i="$1"
	shift
	redis-cli -h 127.0.0.1 -p "$(rc_port "$i")" "$@"
}

rc_ours() {
	rc_cli "$1" info server 2>/dev/null | tr -d '\r' |
		grep -qxF "config_file:$RC_STATE/n$1/redis.conf"
}

rc_state_ok() { rc_cli "$1" cluster info 2>/dev/null | tr -d '\r' | grep -qx 'cluster_state:ok'; }

rc_up() {
	command -v redis-server >/dev/null || die "redis is not installed: run '$0 install'"
	local i dir
	for i in $RC_NODES; do
		dir="$RC_STATE/n$i"
		mkdir -p "$dir"
		cat >"$dir/redis.conf" <<CONF
# generated by deploy/local/engines.sh (Redis Cluster node $i)
bind 127.0.0.1
port $(rc_port "$i")
cluster-enabled yes
cluster-port $((REDIS_CLUSTER_BUS_PORT + i - 1))
cluster-config-file $dir/nodes.conf
cluster-node-timeout 2000
cluster-replica-validity-factor 0
appendonly yes
appendfsync everysec
protected-mode yes
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
maxclients 10000
CONF
		if [[ "$(rc_cli "$i" ping 2>/dev/null || true)" != PONG ]]; then
			redis-server "$dir/redis.conf" || {
				tail_log "$dir/redis.log"
				die "redis-cluster: node $i failed to start"
			}
		fi
	done
	local start=$SECONDS
	for i in $RC_NODES; do
		until [[ "$(rc_cli "$i" ping 2>/dev/null || true)" == PONG ]]; do
			((SECONDS - start < READY_TIMEOUT)) || die "redis-cluster: node $i does not answer"
			sleep 0.1
		done
		rc_ours "$i" || die "port $(rc_port "$i") answers but is not this state folder's Redis"
	done
	if [[ ! -f "$RC_STATE/.created" ]]; then
		local addrs=()
		for i in $RC_NODES; do addrs+=("127.0.0.1:$(rc_port "$i")"); done
		log "redis-cluster: creating (3 masters, 3 replicas)"
		redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
			>"$RC_STATE/create.log" 2>&1 || {
			tail_log "$RC_STATE/create.log"
			die "redis-cluster: create failed"
		}
		touch "$RC_STATE/.created"
	fi
	# Ready: every node sees the cluster ok, and 3 masters each have a replica that is in sync.
	until rc_ready; do
		if ((SECONDS - start > READY_TIMEOUT)); then
			rc_cli 1 cluster nodes >&2 || true
			die "redis-cluster did not become ready within ${READY_TIMEOUT}s"
		fi
		sleep 0.2
	done
	log "redis-cluster: up on 127.0.0.1:$(rc_port 1)-$(rc_port 6) (state $RC_STATE)"
}

rc_ready() {
	local i nodes
	for i in $RC_NODES; do rc_state_ok "$i" || return 1; done
	nodes="$(rc_cli 1 cluster nodes 2>/dev/null)" || return 1
	# 3 masters and 3 replicas, nobody failing, every link connected.
	[[ "$(grep -v fail <<<"$nodes" | grep -c 'master' || true)" -eq 3 ]] &&
		[[ "$(grep -v fail <<<"$nodes" | grep -c 'slave' || true)" -eq 3 ]] &&
		[[ "$(grep -c 'disconnected' <<<"$nodes" || true)" -eq 0 ]]
}

rc_pid() { cat "$RC_STATE/n$1/redis.pid" 2>/dev/null; }

rc_down() {
	local i
	for i in $RC_NODES; do
		rc_ours "$i" && rc_cli "$i" shutdown >/dev/null 2>&1 || true
	done
	log "redis-cluster: down"
}

rc_status() {
	if rc_ready 2>/dev/null; then
		echo "rcluster up    127.0.0.1:$(rc_port 1)-$(rc_port 6)"
	else
		echo "rcluster down"
		return 1
	fi
}

# kill -9 node i (1..6) for failover tests; `up redis-cluster` starts it again (as a replica).
rc_kill() {
	local pid
	[[ " $RC_NODES " == *" ${1:-} "* ]] || die "usage: $0 kill redis-cluster 1..6"
	pid="$(rc_pid "$1")" && kill -KILL "$pid" 2>/dev/null
	log "redis-cluster: node $1 killed"
}

# ---------------------------------------------------------------------------------------------
# HAProxy: one public port (HTTP and WebSocket) in front of the dev cluster
# (`shardchat dev --cluster`): /ws to the gateways, the rest to the edge, X-Forwarded-For added.
# Backends come from SHARDCHAT_EDGE_PORT (8080), SHARDCHAT_GATEWAY_PORT (8081) and
# SHARDCHAT_GATEWAYS (2; gateway ports skip the edge and router ports, as the supervisor
# does). `up haproxy` rewrites the configuration and restarts it when the backends changed.
# ---------------------------------------------------------------------------------------------
HAPROXY_PORT="${SHARDCHAT_HAPROXY_PORT:-58080}"
HAPROXY_STATE="$STATE/haproxy-$HAPROXY_PORT"

haproxy_install() {
	if command -v haproxy >/dev/null; then
		log "haproxy: present ($(command -v haproxy))"
	else
		log "haproxy: installing Debian package"
		apt_install haproxy
	fi
}

haproxy_gateway_ports() {
	local edge="${SHARDCHAT_EDGE_PORT:-8080}" router="${SHARDCHAT_ROUTER_PORT:-8082}"
	local port="${SHARDCHAT_GATEWAY_PORT:-8081}" n="${SHARDCHAT_GATEWAYS:-2}" found=0
	while ((found < n)); do
		if [[ "$port" != "$edge" && "$port" != "$router" ]]; then
			echo "$port"
			found=$((found + 1))
		fi
		port=$((port + 1))
	done
}

haproxy_config() {
	mkdir -p "$HAPROXY_STATE"
	local i=0 port
	{
		echo "# generated by deploy/local/engines.sh"
		echo "global"
		echo "    maxconn 4000"
		echo "    pidfile $HAPROXY_STATE/haproxy.pid"
		echo "defaults"
		echo "    mode http"
		echo "    option forwardfor"
		echo "    timeout connect 5s"
		echo "    timeout client 60s"
		echo "    timeout server 60s"
		echo "    timeout tunnel 1h"
		echo "    timeout http-request 10s"
		echo "frontend public"
		echo "    bind 127.0.0.1:$HAPROXY_PORT"
		echo "    use_backend gateways if { path_beg /ws }"
		echo "    default_backend edge"
		echo "backend edge"
		echo "    option httpchk GET /readyz"
		echo "    server edge 127.0.0.1:${SHARDCHAT_EDGE_PORT:-8080} check inter 1s"
		echo "backend gateways"
		echo "    balance source"
		echo "    option httpchk GET /readyz"
		for port in $(haproxy_gateway_ports); do
			echo "    server gw$i 127.0.0.1:$port check inter 1s"
			i=$((i + 1))
		done
	} >"$HAPROXY_STATE/haproxy.cfg.new"
}

haproxy_pid() {
	local pid
	pid="$(cat "$HAPROXY_STATE/haproxy.pid" 2>/dev/null || true)"
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

haproxy_up() {
	command -v haproxy >/dev/null || die "haproxy is not installed: run '$0 install'"
	haproxy_config
	local cfg="$HAPROXY_STATE/haproxy.cfg" i
	if haproxy_pid >/dev/null && cmp -s "$cfg.new" "$cfg"; then
		log "haproxy: up on 127.0.0.1:$HAPROXY_PORT"
		return 0
	fi
	haproxy_down >/dev/null 2>&1
	mv "$cfg.new" "$cfg"
	haproxy -c -q -f "$cfg" || die "haproxy: invalid configuration $cfg"
	if ! haproxy -D -f "$cfg" >"$HAPROXY_STATE/haproxy.log" 2>&1; then
		tail_log "$HAPROXY_STATE/haproxy.log"
		die "haproxy failed to start"
	fi
	for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
		port_open "$HAPROXY_PORT" && break
		sleep 0.1
	done
	port_open "$HAPROXY_PORT" || die "haproxy is not listening on 127.0.0.1:$HAPROXY_PORT"
	log "haproxy: up on 127.0.0.1:$HAPROXY_PORT (state $HAPROXY_STATE)"
}

haproxy_down() {
	local pid i
	if pid="$(haproxy_pid)"; then
		kill "$pid" 2>/dev/null || true
		for ((i = 0; i < 50; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -f "$HAPROXY_STATE/haproxy.pid"
	log "haproxy: down"
}

haproxy_status() {
	if haproxy_pid >/dev/null && port_open "$HAPROXY_PORT"; then
		echo "haproxy up    127.0.0.1:$HAPROXY_PORT"
	else
		echo "haproxy down"
		return 1
	fi
}

# ---------------------------------------------------------------------------------------------
# Prometheus (Debian package): scrapes whatever a test lists, for the dashboard-query test.
# Targets come from file_sd JSON files a test writes into $PROM_STATE/targets (picked up within
# a second or two); every target is scraped each second. The admin API is on so a test can
# delete old series first: this instance holds test data only.
# ---------------------------------------------------------------------------------------------
PROM_PORT="${SHARDCHAT_PROMETHEUS_PORT:-58390}"
PROM_STATE="$STATE/prometheus"

prometheus_install() {
	if command -v prometheus >/dev/null; then
		log "prometheus: present ($(command -v prometheus))"
	else
		log "prometheus: installing Debian package"
		apt_install prometheus
	fi
	# The package enables a system service on 9090; we never use it. Leave it be.
}

prometheus_pid() {
	local pid
	[[ -f "$PROM_STATE/prometheus.pid" ]] || return 1
	pid="$(cat "$PROM_STATE/prometheus.pid" 2>/dev/null || true)"
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
	# Guard against a recycled pid: it must be our Prometheus.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
		grep -q -- "--config.file=$PROM_STATE/prometheus.yml" || return 1
	printf '%s\n' "$pid"
}

prometheus_ready() {
	[[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROM_PORT/-/ready" || true)" == 200 ]]
}

prometheus_up() {
	command -v prometheus >/dev/null || die "prometheus is not installed: run '$0 install'"
	mkdir -p "$PROM_STATE/data" "$PROM_STATE/targets"
	cat >"$PROM_STATE/prometheus.yml" <<PROMETHEUS_YML
# generated by deploy/local/engines.sh
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 15s
scrape_configs:
  - job_name: shardchat
    file_sd_configs:
      - files: ["$PROM_STATE/targets/*.json"]
        refresh_interval: 1s
PROMETHEUS_YML
	local pid start
	if ! pid="$(prometheus_pid)"; then
		if port_open "$PROM_PORT"; then
			die "port $PROM_PORT is taken by another process (not this state folder's Prometheus)"
		fi
		log "prometheus: starting"
		# setsid: it must outlive this script and the shell that ran it.
		# shellcheck disable=SC2016  # $$ and $1 belong to the inner shell
		setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PROM_STATE/prometheus.pid" \
			prometheus --config.file="$PROM_STATE/prometheus.yml" \
			--storage.tsdb.path="$PROM_STATE/data" --storage.tsdb.retention.time=2d \
			--web.listen-address="127.0.0.1:$PROM_PORT" --web.enable-admin-api \
			--web.enable-lifecycle </dev/null >"$PROM_STATE/prometheus.log" 2>&1 &
		disown || true
		sleep 0.3
	else
		curl -s -X POST "http://127.0.0.1:$PROM_PORT/-/reload" >/dev/null || true
	fi
	start=$SECONDS
	until prometheus_ready; do
		if ((SECONDS - start > READY_TIMEOUT)) || ! prometheus_pid >/dev/null; then
			tail_log "$PROM_STATE/prometheus.log"
			die "prometheus did not become ready on 127.0.0.1:$PROM_PORT"
		fi
		sleep 0.2
	done
	log "prometheus: up on 127.0.0.1:$PROM_PORT (targets: $PROM_STATE/targets/*.json)"
}

prometheus_down() {
	local pid
	if pid="$(prometheus_pid)"; then
		stop_pid prometheus "$pid" 30
	fi
	rm -f "$PROM_STATE/prometheus.pid"
	log "prometheus: down"
}

prometheus_status() {
	if prometheus_pid >/dev/null && prometheus_ready; then
		echo "prometheus up  127.0.0.1:$PROM_PORT"
	else
		echo "prometheus down"
		return 1
	fi
}

# ---------------------------------------------------------------------------------------------
# S3 (s3proxy: the S3 API over a folder of this state; the object store of the cluster mode and
# of the tests). Jars from Maven like Kafka's; one JVM; the services create their bucket.
# ---------------------------------------------------------------------------------------------
S3_PORT="${SHARDCHAT_S3_PORT:-58100}"
S3PROXY_VERSION="${SHARDCHAT_S3PROXY_VERSION:-2.6.0}"
S3_ACCESS_KEY="${SHARDCHAT_S3_ACCESS_KEY:-shardchat}"
S3_SECRET_KEY="${SHARDCHAT_S3_SECRET_KEY:-shardchat-local-secret}"
S3_STATE="$STATE/s3"
# C1 only (TieredStopAtLevel=1): starts in half the time on a busy box; tests restart it.
S3PROXY_JAVA_OPTS="${SHARDCHAT_S3PROXY_JAVA_OPTS:--Xmx256m -Xms128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1}"

s3_libs() { printf '%s\n' "$S3_STATE/libs"; }

s3_install() {
	maven_jars s3proxy s3proxy s3proxy.version "$S3PROXY_VERSION" "$(s3_libs)" "$S3_STATE"
}

s3_config() {
	mkdir -p "$S3_STATE/data"
	cat >"$S3_STATE/s3proxy.properties" <<EOF
# generated by deploy/local/engines.sh
s3proxy.endpoint=http://127.0.0.1:$S3_PORT
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$S3_ACCESS_KEY
s3proxy.credential=$S3_SECRET_KEY
# Browsers upload straight to presigned URLs from the web client's origin.
s3proxy.cors-allow-all=true
jclouds.provider=filesystem-nio2
jclouds.identity=$S3_ACCESS_KEY
jclouds.credential=$S3_SECRET_KEY
jclouds.filesystem.basedir=$S3_STATE/data
EOF
	cat >"$S3_STATE/logback.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- generated by deploy/local/engines.sh: without it s3proxy logs everything at DEBUG -->
<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>$S3_STATE/s3proxy.log</file>
    <encoder><pattern>%d %-5level [%thread] %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="FILE"/></root>
</configuration>
EOF
}

s3_pid() {
	local pid
	[[ -f "$S3_STATE/s3proxy.pid" ]] || return 1
	pid="$(cat "$S3_STATE/s3proxy.pid" 2>/dev/null || true)"
	[[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
	# Guard against a recycled pid: it must be this state folder's s3proxy.
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
		grep -q "org.gaul.s3proxy.Main --properties $S3_STATE/s3proxy.properties" || return 1
	printf '%s\n' "$pid"
}

# An HTTP answer on the port (an anonymous request gets 403 AccessDenied: that is an answer).
s3_probe() {
	local line=""
	port_open "$S3_PORT" || return 1
	exec 4<>"/dev/tcp/127.0.0.1/$S3_PORT" || return 1
	printf 'GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&4
	IFS= read -r -t 5 line <&4 || true
	exec 4<&- 4>&-
	[[ "$line" == HTTP/* ]]
}

s3_up() {
	[[ -f "$(s3_libs)/.installed-$S3PROXY_VERSION" ]] || die "s3proxy is not installed: run '$0 install'"
	s3_config
	local pid out="$S3_STATE/stdout.log"
	if ! pid="$(s3_pid)"; then
		if port_open "$S3_PORT"; then
			die "port $S3_PORT is taken by another process (not this state folder's s3proxy)"
		fi
		log "s3proxy: starting"
		# setsid: the server must outlive this script and the shell that ran it.
		# $$ and $1 belong to the inner shell; the Java options are words on purpose.
		# shellcheck disable=SC2016,SC2086
		setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$S3_STATE/s3proxy.pid" \
			"$(java_bin)" $S3PROXY_JAVA_OPTS -Djava.awt.headless=true \
			-Dlogback.configurationFile="$S3_STATE/logback.xml" \
			-cp "$(s3_libs)/*" org.gaul.s3proxy.Main --properties "$S3_STATE/s3proxy.properties" \
			</dev/null >"$out" 2>&1 &
		disown || true
		sleep 0.5
	fi
	local start=$SECONDS
	while ((SECONDS - start < READY_TIMEOUT)); do
		if ! pid="$(s3_pid)"; then
			sleep 0.3
			pid="$(s3_pid)" || {
				tail_log "$out" 20
				tail_log "$S3_STATE/s3proxy.log"
				die "s3proxy exited during startup"
			}
		fi
		if s3_probe; then
			log "s3proxy: up on 127.0.0.1:$S3_PORT (pid $pid, s3proxy $S3PROXY_VERSION, data $S3_STATE/data)"
			return 0
		fi
		sleep 0.3
	done
	tail_log "$out" 20
	tail_log "$S3_STATE/s3proxy.log"
	die "s3proxy did not answer on 127.0.0.1:$S3_PORT within ${READY_TIMEOUT}s"
}

s3_down() {
	local pid
	if pid="$(s3_pid)"; then
		stop_pid s3proxy "$pid" 30
	fi
	rm -f "$S3_STATE/s3proxy.pid"
	log "s3proxy: down"
}

s3_status() {
	local pid
	if pid="$(s3_pid)" && port_open "$S3_PORT"; then
		echo "s3      up    127.0.0.1:$S3_PORT (pid $pid)"
	else
		echo "s3      down"
		return 1
	fi
}

# ---------------------------------------------------------------------------------------------
# Fault injection (loadtest/chaos): hard kills, and a Kafka listener reached through a proxy.
# The broker also listens on KAFKA_PROXIED_PORT and advertises that listener as
# KAFKA_PROXY_PORT, where a chaos run's fault proxy listens and forwards to KAFKA_PROXIED_PORT:
# a client bootstrapped at the proxy is sent back to the proxy by every metadata answer, so all
# its broker connections cross the proxy. The defaults follow the Kafka port, so engine sets
# side by side (SHARDCHAT_KAFKA_PORT differs) never ask for the same port.
# ---------------------------------------------------------------------------------------------
KAFKA_PROXIED_PORT="${SHARDCHAT_KAFKA_PROXIED_PORT:-$((KAFKA_PORT + 2))}"
KAFKA_PROXY_PORT="${SHARDCHAT_KAFKA_PROXY_PORT:-$((KAFKA_PORT + 3))}"

# A broker started from another configuration (an older engines.sh, other ports) lacks the
# listener: restart it once with the current file.
kafka_restart_if_reconfigured() {
	kafka_pid >/dev/null || return 0
	if ! cmp -s "$KAFKA_STATE/server.properties" "$KAFKA_STATE/server.properties.running"; then
		log "kafka: configuration changed since the broker started: restarting it"
		kafka_down
	fi
}

kafka_kill() {
	local pid i
	if pid="$(kafka_pid)"; then
		kill -KILL "$pid" 2>/dev/null || true
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -f "$KAFKA_STATE/kafka.pid"
	log "kafka: killed (-9)"
}

redis_kill() {
	local pid=""
	[[ -f "$REDIS_STATE/redis.pid" ]] && pid="$(cat "$REDIS_STATE/redis.pid" 2>/dev/null || true)"
	if [[ -n "$pid" ]] && redis_ours; then
		kill -KILL "$pid" 2>/dev/null || true
		while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
	fi
	log "redis: killed (-9)"
}

pg_kill() {
	local bin data
	bin="$(pg_bin)" || return 0
	if pg_running; then
		data="$(pg_data)"
		as_pg "$bin/pg_ctl" -D "$data" -m immediate -w -t 60 stop >/dev/null
	fi
	log "postgresql: stopped in immediate mode (crash recovery at the next start)"
}

# ---------------------------------------------------------------------------------------------
engines_of() {
	case "${1:-all}" in
	all) echo "pg redis kafka nats rc haproxy prometheus s3" ;;  # kafka3: started by the tests that use it
	pg | postgres | postgresql) echo pg ;;
	redis) echo redis ;;
	kafka) echo kafka ;;
	nats) echo nats ;;
	kafka3) echo kafka3 ;;
	redis-cluster | rc) echo rc ;;
	haproxy) echo haproxy ;;
	prometheus) echo prometheus ;;
	s3 | s3proxy) echo s3 ;;
	*) die "unknown engine '$1' (pg, redis, kafka, nats, kafka3, redis-cluster, haproxy, prometheus, s3, all)" ;;
	esac
}

main() {
	local cmd="${1:-}" e
	shift || true
	mkdir -p "$STATE"
	case "$cmd" in
	install)
		pg_install
		redis_install
		kafka_install
		nats_install
		haproxy_install
		prometheus_install
		s3_install
		tools_install
		;;
	up)
		for e in $(engines_of "${1:-all}"); do "${e}_up"; done
		;;
	down)
		# Reverse order: the clusters first, PostgreSQL last; `down all` stops kafka3 too.
		local which
		which="$(engines_of "${1:-all}")"
		[[ "${1:-all}" == all ]] && which="$which kafka3"
		for e in $(tr ' ' '\n' <<<"$which" | tac); do "${e}_down"; done
		;;
	restart)
		[[ $# -ge 1 ]] || die "usage: $0 restart pg|redis|kafka|nats|kafka3|redis-cluster|prometheus|s3|all"
		for e in $(engines_of "$1"); do
			"${e}_down"
			"${e}_up"
		done
		;;
	status)
		local rc=0
		pg_status || rc=1
		redis_status || rc=1
		kafka_status || rc=1
		nats_status || rc=1
		kafka3_status || rc=1
		rc_status || rc=1
		haproxy_status || rc=1
		prometheus_status || rc=1
		s3_status || rc=1
		return $rc
		;;
	env)
		echo "export SHARDCHAT_POSTGRES_DSN=postgresql://shardchat@127.0.0.1:$PG_PORT/$PG_DB"
		echo "export SHARDCHAT_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
		echo "export SHARDCHAT_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
		echo "export SHARDCHAT_KAFKA_PROXIED_BOOTSTRAP=127.0.0.1:$KAFKA_PROXIED_PORT"
		echo "export SHARDCHAT_KAFKA_PROXY_PORT=$KAFKA_PROXY_PORT"
		echo "export SHARDCHAT_NATS_URL=nats://127.0.0.1:$NATS_PORT"
		echo "export SHARDCHAT_KAFKA3_BOOTSTRAP=$(kafka3_bootstrap)"
		echo "export SHARDCHAT_REDIS_CLUSTER_URL=redis://127.0.0.1:$REDIS_CLUSTER_PORT/0"
		echo "export SHARDCHAT_HAPROXY_PORT=$HAPROXY_PORT"
		echo "export SHARDCHAT_PROMETHEUS_URL=http://127.0.0.1:$PROM_PORT"
		echo "export SHARDCHAT_PROMETHEUS_TARGETS=$PROM_STATE/targets"
		echo "export SHARDCHAT_S3_ENDPOINT=http://127.0.0.1:$S3_PORT"
		echo "export SHARDCHAT_S3_ACCESS_KEY=$S3_ACCESS_KEY"
		echo "export SHARDCHAT_S3_SECRET_KEY=$S3_SECRET_KEY"
		;;
	kill)
		# one process of an engine, hard (fault injection): PostgreSQL immediate shutdown,
		# the others kill -9 (nats, kafka3 N, redis-cluster N, redis, kafka)
		case "${1:-}" in
		pg | postgres | postgresql) pg_kill ;;
		redis) redis_kill ;;
		kafka) kafka_kill ;;
		nats) nats_kill ;;
		kafka3) kafka3_kill "${2:-}" ;;
		redis-cluster | rc) rc_kill "${2:-}" ;;
		*) die "usage: $0 kill pg | redis | kafka | nats | kafka3 1..3 | redis-cluster 1..6" ;;
		esac
		;;
	*)
		sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		[[ -z "$cmd" || "$cmd" == -h || "$cmd" == --help || "$cmd" == help ]] || exit 2
		;;
	esac
}

main "$@"
