#!/usr/bin/env bash
# Private, loopback-only PostgreSQL, Redis and Apache Kafka (KRaft) for development and tests.
#
#   engines.sh install                 install what is missing (Debian packages, Kafka jars)
#   engines.sh up [pg|redis|kafka|haproxy|all] start (idempotent), wait for readiness
#   engines.sh down [pg|redis|kafka|all]
#   engines.sh restart pg|redis|kafka|all
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

kafka_install() {
	local libs marker
	libs="$(kafka_libs)"
	marker="$libs/.installed-$KAFKA_VERSION"
	if ! java_bin >/dev/null; then
		log "kafka: installing a Java runtime (Debian openjdk-17-jre-headless)"
		apt_install openjdk-17-jre-headless
	fi
	if [[ -f "$marker" ]]; then
		log "kafka: jars present ($libs, Kafka $KAFKA_VERSION)"
		return 0
	fi
	if ! command -v mvn >/dev/null; then
		log "kafka: installing Debian maven"
		apt_install maven
	fi
	log "kafka: fetching Kafka $KAFKA_VERSION jars with maven into $libs"
	rm -rf "$libs"
	mkdir -p "$libs" "$KAFKA_STATE"
	local repo=()
	[[ -n "${SHARDCHAT_MAVEN_REPO:-}" ]] && repo=(-Dmaven.repo.local="$SHARDCHAT_MAVEN_REPO")
	if ! mvn -B -q "${repo[@]}" -f "$HERE/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
		dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$libs" \
		>"$KAFKA_STATE/mvn.log" 2>&1; then
		tail_log "$KAFKA_STATE/mvn.log"
		die "maven could not fetch the Kafka jars"
	fi
	touch "$marker"
	log "kafka: $(find "$libs" -name '*.jar' | wc -l) jars installed"
}

kafka_config() {
	mkdir -p "$KAFKA_STATE/data" "$KAFKA_STATE/logs"
	cat >"$KAFKA_STATE/server.properties" <<EOF
# generated by deploy/local/engines.sh
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
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
	if ! pid="$(kafka_pid)"; then
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
	local pid i
	if pid="$(kafka_pid)"; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 600; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "kafka: did not stop in 60s, killing"
			kill -KILL "$pid" 2>/dev/null || true
		fi
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
		echo "    balance roundrobin"
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
engines_of() {
	case "${1:-all}" in
	all) echo "pg redis kafka haproxy" ;;
	pg | postgres | postgresql) echo pg ;;
	redis) echo redis ;;
	kafka) echo kafka ;;
	haproxy) echo haproxy ;;
	*) die "unknown engine '$1' (pg, redis, kafka, haproxy, all)" ;;
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
		haproxy_install
		tools_install
		;;
	up)
		for e in $(engines_of "${1:-all}"); do "${e}_up"; done
		;;
	down)
		# Reverse order: Kafka first, PostgreSQL last.
		for e in $(engines_of "${1:-all}" | tr ' ' '\n' | tac); do "${e}_down"; done
		;;
	restart)
		[[ $# -ge 1 ]] || die "usage: $0 restart pg|redis|kafka|all"
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
		haproxy_status || rc=1
		return $rc
		;;
	env)
		echo "export SHARDCHAT_POSTGRES_DSN=postgresql://shardchat@127.0.0.1:$PG_PORT/$PG_DB"
		echo "export SHARDCHAT_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
		echo "export SHARDCHAT_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
		echo "export SHARDCHAT_HAPROXY_PORT=$HAPROXY_PORT"
		;;
	*)
		sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		[[ -z "$cmd" || "$cmd" == -h || "$cmd" == --help || "$cmd" == help ]] || exit 2
		;;
	esac
}

main "$@"
