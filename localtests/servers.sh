#!/usr/bin/env bash
# servers.sh — throwaway database servers for osc's integration tests.
#
# Usage:
#   servers.sh install      install the server packages if missing (apt-get, Debian):
#                           MariaDB and PostgreSQL 15
#   servers.sh start DIR    start, on free loopback ports with data under DIR:
#                           - a MariaDB primary + replica (GTID replication)
#                           - a PostgreSQL primary (wal_level=logical) + a hot
#                             standby streaming from it (pg_basebackup -R)
#                           writes DIR/env and DIR/pids
#   servers.sh stop DIR     stop only the processes recorded in DIR/pids, then delete
#                           what start created in DIR
#   servers.sh env DIR      print DIR/env (KEY=value lines, suitable for `set -a; . DIR/env`)
#
# DIR/env holds OSC_TEST_MYSQL_{HOST,PORT,REPLICA_PORT,USER,PASSWORD,SOCKET,
# REPLICA_SOCKET}, OSC_TEST_PG_{HOST,PORT,STANDBY_PORT,USER,PASSWORD,SOCKET_DIR}
# and OSC_TEST_SERVERS_DIR. Both servers have a superuser osc (password osc);
# PostgreSQL trusts local-socket connections and wants a password over TCP.
# As root, PostgreSQL runs as the postgres OS user (it refuses to run as root).
#
# Environment:
#   OSC_SERVERS_WATCH_PID   with `start`: also start a watchdog that runs `stop DIR`
#                           as soon as this PID exits (so a killed test run never
#                           leaves servers behind)
#   OSC_SERVERS_TIMEOUT     seconds to wait for a server / the replica (default 60)
#   OSC_SERVERS_INNODB_BUFFER_POOL    MariaDB's innodb_buffer_pool_size (default 256M)
#   OSC_SERVERS_INNODB_LOG_FILE_SIZE  MariaDB's innodb_log_file_size (default: the server's, 96M)
#   OSC_PG_BINDIR           directory of the PostgreSQL server binaries (default:
#                           /usr/lib/postgresql/15/bin, else pg_config --bindir)
#
# Nothing here touches servers it did not start, except that `install` stops the
# Debian packages' own system services if installing the packages started them.
set -euo pipefail

PROG=servers.sh
SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/$(basename "${BASH_SOURCE[0]}")
MARKER=.osc-test-servers
TIMEOUT=${OSC_SERVERS_TIMEOUT:-60}

log() { echo "$PROG: $*" >&2; }
die() {
	echo "$PROG: error: $*" >&2
	exit 1
}
usage() {
	awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$SELF" >&2
	exit 2
}

# find_bin NAME... prints the path of the first NAME found on PATH or in an sbin dir.
find_bin() {
	local c d
	for c in "$@"; do
		if command -v "$c" 2>/dev/null; then
			return 0
		fi
		for d in /usr/sbin /usr/local/sbin /sbin /usr/bin; do
			if [ -x "$d/$c" ]; then
				echo "$d/$c"
				return 0
			fi
		done
	done
	return 1
}

mariadb_bins() {
	SERVER_BIN=$(find_bin mariadbd mysqld) || die "mariadbd not found (run: $SELF install)"
	INSTALL_DB_BIN=$(find_bin mariadb-install-db mysql_install_db) || die "mariadb-install-db not found (run: $SELF install)"
	CLIENT_BIN=$(find_bin mariadb mysql) || die "mariadb client not found (run: $SELF install)"
}

PG_VERSION=15
PG_BIN_NAMES=(postgres initdb pg_basebackup psql)

# pg_bindir prints the directory of the PostgreSQL binaries: $OSC_PG_BINDIR, else
# Debian's /usr/lib/postgresql/15/bin, else pg_config --bindir or initdb's
# directory on PATH if that is PostgreSQL 15 or later.
pg_bindir() {
	local d c ok v cands=()
	if [ -n "${OSC_PG_BINDIR:-}" ]; then
		for c in "${PG_BIN_NAMES[@]}"; do [ -x "$OSC_PG_BINDIR/$c" ] || return 1; done
		echo "$OSC_PG_BINDIR"
		return 0
	fi
	if d=$(pg_config --bindir 2>/dev/null); then cands+=("$d"); fi
	if c=$(command -v initdb 2>/dev/null); then cands+=("$(dirname "$c")"); fi
	for d in "/usr/lib/postgresql/$PG_VERSION/bin" "${cands[@]}"; do
		ok=1
		for c in "${PG_BIN_NAMES[@]}"; do [ -x "$d/$c" ] || ok=0; done
		[ $ok = 1 ] || continue
		if [ "$d" != "/usr/lib/postgresql/$PG_VERSION/bin" ]; then
			v=$("$d/postgres" --version 2>/dev/null | sed -n 's/^postgres (PostgreSQL) \([0-9][0-9]*\).*/\1/p')
			if [ -z "$v" ] || [ "$v" -lt "$PG_VERSION" ]; then continue; fi
		fi
		echo "$d"
		return 0
	done
	return 1
}

as_root() {
	if [ "$(id -u)" = 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo -n "$@"
	else
		die "need root to run: $*"
	fi
}

# apt_install PKG... installs Debian packages quietly, showing apt's output only on failure.
apt_install() {
	local out
	out=$(mktemp)
	log "installing $* (apt-get)"
	if ! as_root apt-get update -q >"$out" 2>&1 ||
		! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$out" 2>&1; then
		tail -n 40 "$out" >&2
		rm -f "$out"
		die "apt-get install $* failed"
	fi
	rm -f "$out"
}

# ---------------------------------------------------------------------------
# install

mariadb_present() {
	find_bin mariadbd mysqld >/dev/null && find_bin mariadb-install-db mysql_install_db >/dev/null &&
		find_bin mariadb mysql >/dev/null
}

system_service_running() {
	command -v service >/dev/null 2>&1 || return 1
	service "$1" status >/dev/null 2>&1
}

cmd_install() {
	local pkgs=() services=() before=() i
	if ! mariadb_present; then
		pkgs+=(mariadb-server mariadb-client)
		services+=(mariadb)
	fi
	if ! pg_bindir >/dev/null; then
		pkgs+=("postgresql-$PG_VERSION" "postgresql-client-$PG_VERSION")
		services+=(postgresql)
	fi
	[ ${#pkgs[@]} -gt 0 ] || return 0
	for i in "${!services[@]}"; do
		before[i]=0
		if system_service_running "${services[i]}"; then before[i]=1; fi
	done
	apt_install "${pkgs[@]}"
	# The packages' postinst may start their own system services (where no
	# policy-rc.d forbids it): mariadb, and the Debian cluster 15/main behind
	# the postgresql service. The tests never use them: stop them, unless
	# they were already running before we installed.
	for i in "${!services[@]}"; do
		if [ "${before[i]}" = 0 ] && system_service_running "${services[i]}"; then
			log "stopping the ${services[i]} system service started by the package"
			as_root service "${services[i]}" stop >/dev/null 2>&1 ||
				log "warning: could not stop the ${services[i]} system service"
		fi
	done
	mariadb_present || die "MariaDB binaries still not found after installing ${pkgs[*]}"
	pg_bindir >/dev/null || die "PostgreSQL $PG_VERSION binaries still not found after installing ${pkgs[*]}"
}

# ---------------------------------------------------------------------------
# helpers for start/stop

# alive PID: the process exists and is not a zombie.
alive() {
	local pid=$1
	if [ -r "/proc/$pid/stat" ]; then
		local stat
		stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
		stat=${stat##*) }
		[ "${stat:0:1}" != Z ]
	else
		kill -0 "$pid" 2>/dev/null
	fi
}

# ours DIR PID: the process's command line mentions DIR (guards against PID reuse).
ours() {
	local dir=$1 pid=$2
	if [ -r "/proc/$pid/cmdline" ]; then
		local cl
		cl=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
		case "$cl " in
		*"$dir/"* | *"$dir "*) return 0 ;;
		esac
		return 1
	else
		kill -0 "$pid" 2>/dev/null
	fi
}

free_port() {
	local p
	if p=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null) && [ -n "$p" ]; then
		echo "$p"
		return 0
	fi

	for _ in $(seq 1 200); do
		p=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	die "could not find a free TCP port"
}

# sql SOCKET QUERY runs QUERY as root over the unix socket, tab-separated, no headers.
sql() {
	local sock=$1
	shift
	"$CLIENT_BIN" --no-defaults -uroot --socket="$sock" --connect-timeout=5 --batch --skip-column-names -e "$*"
}

# slave_field SOCKET FIELD prints FIELD of SHOW SLAVE STATUS on the server at SOCKET.
slave_field() {
	"$CLIENT_BIN" --no-defaults -uroot --socket="$1" --connect-timeout=5 -e 'SHOW SLAVE STATUS\G' 2>/dev/null |
		sed -n "s/^ *$2: //p"
}

# init_datadir NAME: creates DIR/NAME/data with mariadb-install-db (if not there yet).
init_datadir() {
	local name=$1
	local d="$DIR/$name"
	mkdir -p "$d/tmp"
	[ ! -d "$d/data/mysql" ] || return 0
	local user_opt=()
	if [ "$(id -u)" = 0 ]; then user_opt=(--user=root); fi
	# --tmpdir (passed through to the bootstrap server) matters: a starting
	# mariadbd deletes every #sql* file in its tmpdir, so bootstraps running
	# in parallel with the default /tmp break each other's temp tables.
	if ! "$INSTALL_DB_BIN" --no-defaults --auth-root-authentication-method=normal --skip-test-db \
		--datadir="$d/data" --tmpdir="$d/tmp" "${user_opt[@]}" >"$d/install.log" 2>&1; then
		# The actual error comes first; the tool's generic advice follows.
		grep -v '^[[:space:]]*$' "$d/install.log" | head -n 25 >&2 || true
		die "mariadb-install-db failed for $name (log: $d/install.log)"
	fi
	log "$name: data directory initialized (${SECONDS}s)"
}

# start_mariadb NAME SERVER_ID: starts mariadbd on DIR/NAME/data (see
# init_datadir) on a free port; sets PORT, SOCK and PID.
start_mariadb() {
	local name=$1 id=$2
	local d="$DIR/$name"
	SOCK="$d/mysqld.sock"
	if [ ${#SOCK} -gt 100 ]; then
		die "socket path too long (${#SOCK} > 100 chars): $SOCK — use a shorter DIR (e.g. under /tmp)"
	fi

	local attempt
	for attempt in 1 2 3 4 5; do
		PORT=$(free_port)
		local args=(
			--no-defaults
			--datadir="$d/data"
			--tmpdir="$d/tmp"
			--socket="$SOCK"
			--port="$PORT"
			--bind-address=127.0.0.1
			--skip-name-resolve
			--pid-file="$d/mysqld.pid"
			--log-error="$d/error.log"
			--server-id="$id"
			--log-bin=mysql-bin
			--relay-log=relay-bin
			--binlog-format=ROW
			--binlog-row-image=FULL
			--log-slave-updates
			--slave-net-timeout=10
			--innodb-buffer-pool-size="${OSC_SERVERS_INNODB_BUFFER_POOL:-256M}"
			--innodb-flush-log-at-trx-commit=2
			--innodb-doublewrite=0
			--innodb-use-native-aio=0
			--sync-binlog=0
			--max-connections=500
			--max-allowed-packet=64M
			--character-set-server=utf8mb4
			--collation-server=utf8mb4_general_ci
		)
		if [ -n "${OSC_SERVERS_INNODB_LOG_FILE_SIZE:-}" ]; then
			args+=(--innodb-log-file-size="$OSC_SERVERS_INNODB_LOG_FILE_SIZE")
		fi
		# mariadbd refuses to run as root unless told to.
		if [ "$(id -u)" = 0 ]; then args+=(--user=root); fi

		# Background jobs of a non-interactive shell ignore SIGINT, so a Ctrl-C
		# in the terminal does not kill the servers; stop (or the watchdog) does.
		# All fds are redirected so callers capturing our output do not hang.
		"$SERVER_BIN" "${args[@]}" </dev/null >>"$d/stdout.log" 2>&1 &
		PID=$!
		echo "$name $PID" >>"$DIR/pids"

		local deadline=$((SECONDS + TIMEOUT))
		while :; do
			if ! alive "$PID"; then
				break
			fi
			if [ -S "$SOCK" ] && sql "$SOCK" 'SELECT 1' >/dev/null 2>&1; then
				log "$name: mariadbd pid $PID listening on 127.0.0.1:$PORT (${SECONDS}s)"
				return 0
			fi
			if [ $SECONDS -ge $deadline ]; then
				log "$name: mariadbd did not accept connections within ${TIMEOUT}s; last lines of $d/error.log:"
				tail -n 40 "$d/error.log" >&2 || true
				die "$name failed to start"
			fi
			sleep 0.1
		done
		if grep -qE 'Address already in use|Do you already have another .*server running on port' "$d/error.log" 2>/dev/null; then
			log "$name: port $PORT was taken, retrying with another port (attempt $attempt)"
			mv "$d/error.log" "$d/error.log.attempt$attempt" 2>/dev/null || true
			continue
		fi
		log "$name: mariadbd exited during startup; last lines of $d/error.log:"
		tail -n 40 "$d/error.log" >&2 || true
		die "$name failed to start"
	done
	die "$name: could not find a free port after 5 attempts"
}

# ---------------------------------------------------------------------------
# PostgreSQL

# Layout (PG_BASE is DIR/pg, see pg_layout for the exception):
#   PG_BASE/run                  unix sockets of both servers
#   PG_BASE/primary/data         primary's data directory; postgres.log its log
#   PG_BASE/standby/data         standby's (a pg_basebackup -R of the primary)

# pg_user_exec CMD... execs CMD as the OS user the PostgreSQL servers run as:
# postgres when we are root (PostgreSQL refuses to run as root), else ourselves.
# setpriv execs (so `( pg_exec postgres ... ) &` leaves the postmaster's PID in
# $!); runuser, the fallback, stays CMD's parent, which is why stop also finds
# postmasters through their postmaster.pid.
pg_user_exec() {
	if [ "$PG_AS_OTHER" = 1 ]; then
		if command -v setpriv >/dev/null 2>&1; then
			exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
		fi
		exec runuser -u postgres -- "$@"
	fi
	exec "$@"
}

# pg_exec CMD... is pg_user_exec from PG_BASE (which that user can enter, unlike
# perhaps our working directory). It execs: call it in a subshell.
pg_exec() {
	cd "$PG_BASE"
	pg_user_exec "$@"
}

# pg_can_use PATH: the PostgreSQL OS user can create files in PATH.
pg_can_use() {
	(
		cd /
		pg_user_exec test -w "$1" -a -x "$1"
	) 2>/dev/null
}

# pg_base_of DIR prints where start put DIR's PostgreSQL files.
pg_base_of() {
	local ext
	if [ -f "$1/pg.external" ]; then
		ext=$(cat "$1/pg.external")
		if [ -n "$ext" ] && [ -f "$ext/$MARKER" ]; then
			echo "$ext"
			return 0
		fi
	fi
	echo "$1/pg"
}

# pg_layout: sets PG_BIN, PG_AS_OTHER, PG_BASE and PG_SOCK_DIR and creates the
# directories, owned by the OS user PostgreSQL will run as.
pg_layout() {
	PG_BIN=$(pg_bindir) || die "PostgreSQL $PG_VERSION binaries not found (run: $SELF install)"
	PG_AS_OTHER=0
	PG_BASE=$DIR/pg
	mkdir -p "$PG_BASE"
	if [ "$(id -u)" = 0 ]; then
		PG_AS_OTHER=1
		id -u postgres >/dev/null 2>&1 ||
			die "running as root, but there is no postgres OS user to run PostgreSQL as (run: $SELF install)"
		chown postgres: "$PG_BASE"
		if ! pg_can_use "$PG_BASE"; then
			# mktemp -d makes DIR 0700: let others traverse it (not list it).
			chmod o+x "$DIR"
		fi
		if ! pg_can_use "$PG_BASE"; then
			# A parent of DIR is closed to postgres (e.g. DIR under /root): use a
			# directory of its own, recorded for stop in DIR/pg.external. The
			# servers get -c osc.servers_dir=DIR so that `ours` still knows them.
			rmdir "$PG_BASE"
			PG_BASE=$(mktemp -d /tmp/osc-pg.XXXXXX)
			touch "$PG_BASE/$MARKER"
			echo "$PG_BASE" >"$DIR/pg.external"
			chown postgres: "$PG_BASE"
			pg_can_use "$PG_BASE" || die "the postgres OS user cannot write to $PG_BASE"
			log "postgres: the postgres OS user cannot reach $DIR; PostgreSQL's files are in $PG_BASE"
		fi
	fi
	PG_SOCK_DIR=$PG_BASE/run
	# sun_path holds 107 bytes; the socket is PG_SOCK_DIR/.s.PGSQL.PORT.
	if [ $((${#PG_SOCK_DIR} + 18)) -gt 107 ]; then
		die "socket path too long: $PG_SOCK_DIR/.s.PGSQL.NNNNN — use a shorter DIR (e.g. under /tmp)"
	fi
	mkdir -p "$PG_SOCK_DIR" "$PG_BASE/primary" "$PG_BASE/standby"
	if [ "$PG_AS_OTHER" = 1 ]; then
		chown postgres: "$PG_SOCK_DIR" "$PG_BASE/primary" "$PG_BASE/standby"
	fi
}

# pg_sql PORT QUERY runs QUERY as the bootstrap superuser over the unix socket,
# unaligned, no headers.
pg_sql() {
	PGCONNECT_TIMEOUT=5 "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
		-h "$PG_SOCK_DIR" -p "$1" -U postgres -d postgres -c "$2"
}

# init_pg: creates the primary's data directory with initdb (if not there yet).
init_pg() {
	local d=$PG_BASE/primary
	[ ! -f "$d/data/PG_VERSION" ] || return 0
	if ! (pg_exec "$PG_BIN/initdb" -D "$d/data" -U postgres -E UTF8 --locale=C -A trust \
		--no-sync --no-instructions) </dev/null >"$d/initdb.log" 2>&1; then
		tail -n 25 "$d/initdb.log" >&2 || true
		die "initdb failed (log: $d/initdb.log)"
	fi
	# Trust on the unix socket; a password (SCRAM) over TCP, replication included.
	cat >"$d/data/pg_hba.conf" <<'HBA'
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   scram-sha-256
host    replication  all   127.0.0.1/32   scram-sha-256
HBA
	if [ "$PG_AS_OTHER" = 1 ]; then chown postgres: "$d/data/pg_hba.conf"; fi
	log "pg-primary: data directory initialized (${SECONDS}s)"
}

# start_pg NAME: starts postgres on PG_BASE/NAME/data on a free port; sets PORT and PID.
start_pg() {
	local name=$1
	local d=$PG_BASE/$name
	local attempt
	for attempt in 1 2 3 4 5; do
		PORT=$(free_port)
		local args=(
			-D "$d/data"
			-p "$PORT"
			-k "$PG_SOCK_DIR"
			-c listen_addresses=127.0.0.1
			-c wal_level=logical
			-c max_replication_slots=10
			-c max_wal_senders=10
			-c max_connections=200
			-c hot_standby=on
			-c shared_buffers=128MB
			-c fsync=off
			-c synchronous_commit=off
			-c full_page_writes=off
			-c jit=off
			-c logging_collector=off
			-c "osc.servers_dir=$DIR"
		)
		# See start_mariadb about the redirections. The postmaster handles
		# SIGINT itself (fast shutdown) although background jobs ignore it.
		(pg_exec "$PG_BIN/postgres" "${args[@]}") </dev/null >>"$d/postgres.log" 2>&1 &
		PID=$!
		echo "pg-$name $PID" >>"$DIR/pids"

		local deadline=$((SECONDS + TIMEOUT))
		while :; do
			if ! alive "$PID"; then
				break
			fi
			if [ -S "$PG_SOCK_DIR/.s.PGSQL.$PORT" ] && pg_sql "$PORT" 'SELECT 1' >/dev/null 2>&1; then
				log "pg-$name: postgres pid $PID listening on 127.0.0.1:$PORT (${SECONDS}s)"
				return 0
			fi
			if [ $SECONDS -ge $deadline ]; then
				log "pg-$name: postgres did not accept connections within ${TIMEOUT}s; last lines of $d/postgres.log:"
				tail -n 40 "$d/postgres.log" >&2 || true
				die "pg-$name failed to start"
			fi
			sleep 0.05
		done
		if grep -q 'Address already in use' "$d/postgres.log" 2>/dev/null; then
			log "pg-$name: port $PORT was taken, retrying with another port (attempt $attempt)"
			mv "$d/postgres.log" "$d/postgres.log.attempt$attempt" 2>/dev/null || true
			continue
		fi
		log "pg-$name: postgres exited during startup; last lines of $d/postgres.log:"
		tail -n 40 "$d/postgres.log" >&2 || true
		die "pg-$name failed to start"
	done
	die "pg-$name: could not find a free port after 5 attempts"
}

# pg_up: PostgreSQL's part of start (run in the background, in parallel with
# MariaDB's): the primary, the osc role, the standby; writes DIR/pg.env.
pg_up() {
	init_pg
	start_pg primary
	local p_port=$PORT s_port
	pg_sql "$p_port" "DO \$\$ BEGIN
		CREATE ROLE osc LOGIN SUPERUSER REPLICATION PASSWORD 'osc';
	EXCEPTION WHEN duplicate_object THEN
		ALTER ROLE osc LOGIN SUPERUSER REPLICATION PASSWORD 'osc';
	END \$\$" >/dev/null || die "creating role osc on the PostgreSQL primary failed"

	local sd=$PG_BASE/standby
	rm -rf "$sd/data"
	# -R writes primary_conninfo (with the password) and standby.signal.
	if ! (
		export PGPASSWORD=osc
		pg_exec "$PG_BIN/pg_basebackup" -R -X stream -c fast --no-sync -w \
			-D "$sd/data" -h 127.0.0.1 -p "$p_port" -U osc
	) </dev/null >"$sd/basebackup.log" 2>&1; then
		tail -n 25 "$sd/basebackup.log" >&2 || true
		die "pg_basebackup of the primary failed (log: $sd/basebackup.log)"
	fi
	log "pg-standby: base backup taken (${SECONDS}s)"
	start_pg standby
	s_port=$PORT

	local deadline=$((SECONDS + TIMEOUT)) n rec
	while :; do
		n=$(pg_sql "$p_port" "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'" 2>/dev/null || true)
		rec=$(pg_sql "$s_port" 'SELECT pg_is_in_recovery()' 2>/dev/null || true)
		if [ "${n:-0}" -ge 1 ] && [ "$rec" = t ]; then
			break
		fi
		if [ $SECONDS -ge $deadline ]; then
			log "pg-standby not streaming after ${TIMEOUT}s (primary's pg_stat_replication:)"
			pg_sql "$p_port" 'SELECT * FROM pg_stat_replication' >&2 || true
			tail -n 20 "$sd/postgres.log" >&2 || true
			die "the PostgreSQL standby failed to start streaming"
		fi
		sleep 0.05
	done
	log "pg-standby: streaming from the primary (${SECONDS}s)"

	cat >"$DIR/pg.env" <<ENV
OSC_TEST_PG_HOST=127.0.0.1
OSC_TEST_PG_PORT=$p_port
OSC_TEST_PG_STANDBY_PORT=$s_port
OSC_TEST_PG_USER=osc
OSC_TEST_PG_PASSWORD=osc
OSC_TEST_PG_SOCKET_DIR=$PG_SOCK_DIR
ENV
}

# ---------------------------------------------------------------------------
# start

cmd_start() {
	[ $# -eq 1 ] || usage
	mariadb_bins
	pg_bindir >/dev/null || die "PostgreSQL $PG_VERSION binaries not found (run: $SELF install)"
	mkdir -p "$1"
	DIR=$(cd "$1" && pwd -P)
	case "$DIR" in
	*[!A-Za-z0-9._/+-]*) die "DIR must consist of [A-Za-z0-9._/+-] only: $DIR" ;;
	esac
	if [ -s "$DIR/pids" ]; then
		die "$DIR already has servers recorded in $DIR/pids; run: $SELF stop $DIR"
	fi
	touch "$DIR/$MARKER"
	: >"$DIR/pids"

	local ok=0
	PG_JOB=
	# On any failure, stop whatever this invocation started (PostgreSQL's
	# background start first, so that it starts nothing more).
	trap 'if [ $ok = 0 ]; then
		log "start failed; stopping what was started"
		if [ -n "$PG_JOB" ]; then kill "$PG_JOB" 2>/dev/null || true; wait "$PG_JOB" 2>/dev/null || true; fi
		stop_recorded "$DIR" || true
	fi' EXIT

	local wpid=${OSC_SERVERS_WATCH_PID:-}
	if [ -n "$wpid" ]; then
		case "$wpid" in
		*[!0-9]*) die "OSC_SERVERS_WATCH_PID is not a PID: $wpid" ;;
		esac
		alive "$wpid" || die "OSC_SERVERS_WATCH_PID $wpid is not running"
		# The watchdog is started first so that even a killed `start` is cleaned up.
		bash "$SELF" _watch "$DIR" "$wpid" </dev/null >>"$DIR/watchdog.log" 2>&1 &
		echo "watchdog $!" >>"$DIR/pids"
	fi

	# PostgreSQL starts in the background, MariaDB meanwhile in the foreground.
	pg_layout
	rm -f "$DIR/pg.env"
	pg_up &
	PG_JOB=$!

	local p_port p_sock r_port r_sock init_p init_r init_ok=1
	init_datadir primary &
	init_p=$!
	init_datadir replica &
	init_r=$!
	wait "$init_p" || init_ok=0
	wait "$init_r" || init_ok=0
	[ $init_ok = 1 ] || die "initializing the data directories failed"

	start_mariadb primary 1
	p_port=$PORT p_sock=$SOCK
	start_mariadb replica 2
	r_port=$PORT r_sock=$SOCK

	# The user is created on the primary only; the replica gets it by replication.
	sql "$p_sock" "
		CREATE USER IF NOT EXISTS 'osc'@'127.0.0.1' IDENTIFIED BY 'osc';
		CREATE USER IF NOT EXISTS 'osc'@'%' IDENTIFIED BY 'osc';
		CREATE USER IF NOT EXISTS 'osc'@'localhost' IDENTIFIED BY 'osc';
		GRANT ALL PRIVILEGES ON *.* TO 'osc'@'127.0.0.1' WITH GRANT OPTION;
		GRANT ALL PRIVILEGES ON *.* TO 'osc'@'%' WITH GRANT OPTION;
		GRANT ALL PRIVILEGES ON *.* TO 'osc'@'localhost' WITH GRANT OPTION;
	" || die "creating user osc on the primary failed"

	sql "$r_sock" "
		CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=$p_port,
			MASTER_USER='osc', MASTER_PASSWORD='osc',
			MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;
		START SLAVE;
	" || die "attaching the replica failed"

	# Wait until both replication threads run and the replica has caught up.
	local deadline=$((SECONDS + TIMEOUT)) io sqlr target got
	target=$(sql "$p_sock" 'SELECT @@gtid_binlog_pos')
	while :; do
		io=$(slave_field "$r_sock" Slave_IO_Running)
		sqlr=$(slave_field "$r_sock" Slave_SQL_Running)
		got=$(sql "$r_sock" 'SELECT @@gtid_slave_pos' 2>/dev/null || true)
		if [ "$io" = Yes ] && [ "$sqlr" = Yes ] && [ "$got" = "$target" ]; then
			break
		fi
		if [ $SECONDS -ge $deadline ]; then
			log "replica not running/caught up after ${TIMEOUT}s (IO=$io SQL=$sqlr, primary at '$target', replica at '$got'):"
			"$CLIENT_BIN" --no-defaults -uroot --socket="$r_sock" -e 'SHOW SLAVE STATUS\G' >&2 || true
			tail -n 20 "$DIR/replica/error.log" >&2 || true
			die "replica failed to start replicating"
		fi
		sleep 0.1
	done
	log "replica: replicating from the primary (gtid $target)"

	local pg_status=0
	wait "$PG_JOB" || pg_status=$?
	PG_JOB=
	if [ $pg_status != 0 ] || [ ! -f "$DIR/pg.env" ]; then die "starting PostgreSQL failed"; fi

	cat >"$DIR/env.tmp" <<EOF
OSC_TEST_MYSQL_HOST=127.0.0.1
OSC_TEST_MYSQL_PORT=$p_port
OSC_TEST_MYSQL_REPLICA_PORT=$r_port
OSC_TEST_MYSQL_USER=osc
OSC_TEST_MYSQL_PASSWORD=osc
OSC_TEST_MYSQL_SOCKET=$p_sock
OSC_TEST_MYSQL_REPLICA_SOCKET=$r_sock
OSC_TEST_SERVERS_DIR=$DIR
EOF
	cat "$DIR/pg.env" >>"$DIR/env.tmp"
	mv "$DIR/env.tmp" "$DIR/env"
	ok=1
	trap - EXIT
	log "servers ready in ${SECONDS}s; environment in $DIR/env"
}

# ---------------------------------------------------------------------------
# stop

# stop_recorded DIR: signals every recorded process that is still ours (postgres
# postmasters SIGINT, a fast shutdown: SIGTERM's smart shutdown would wait for
# clients; everything else SIGTERM), waits, and kills leftovers.
stop_recorded() {
	local dir=$1 name pid f base
	local entries=()
	if [ -f "$dir/pids" ]; then
		while read -r name pid; do
			entries+=("$name ${pid:-}")
		done <"$dir/pids"
	fi
	# Postmasters also by their postmaster.pid: that covers one started by a
	# `start` killed before it recorded the PID, or started through runuser.
	base=$(pg_base_of "$dir")
	for f in "$base/primary/data/postmaster.pid" "$base/standby/data/postmaster.pid"; do
		[ -r "$f" ] || continue
		pid=$(head -n 1 "$f" 2>/dev/null) || continue
		entries+=("pg-pidfile $pid")
	done
	[ ${#entries[@]} -gt 0 ] || return 0

	local e pids=() pgpids=() seen=" "
	for e in "${entries[@]}"; do
		name=${e%% *} pid=${e#* }
		[ -n "$pid" ] || continue
		case "$pid" in *[!0-9]*) continue ;; esac
		case "$seen" in *" $pid "*) continue ;; esac
		seen="$seen$pid "
		# A watchdog running `stop` must not kill itself.
		[ "$pid" != "$$" ] || continue
		if alive "$pid" && ours "$dir" "$pid"; then
			case "$name" in
			pg-*)
				kill -INT "$pid" 2>/dev/null || true
				pgpids+=("$pid")
				;;
			*) kill -TERM "$pid" 2>/dev/null || true ;;
			esac
			pids+=("$pid")
		fi
	done
	[ ${#pids[@]} -gt 0 ] || return 0

	local deadline=$((SECONDS + TIMEOUT)) left quit=0
	while :; do
		left=()
		for pid in "${pids[@]}"; do
			if alive "$pid" && ours "$dir" "$pid"; then left+=("$pid"); fi
		done
		[ ${#left[@]} -gt 0 ] || return 0
		if [ $SECONDS -ge $deadline ]; then
			# A postmaster gets SIGQUIT first (immediate shutdown: it takes
			# its children with it, which SIGKILL would leave behind).
			if [ $quit = 0 ] && [ ${#pgpids[@]} -gt 0 ]; then
				log "postgres did not stop within ${TIMEOUT}s; sending SIGQUIT to ${pgpids[*]}"
				kill -QUIT "${pgpids[@]}" 2>/dev/null || true
				quit=1
				deadline=$((SECONDS + 5))
				continue
			fi
			log "killing processes that did not stop in time: ${left[*]}"
			kill -KILL "${left[@]}" 2>/dev/null || true
			sleep 0.5
			return 0
		fi
		sleep 0.1
	done
}

cmd_stop() {
	[ $# -eq 1 ] || usage
	if [ ! -d "$1" ]; then
		log "$1 does not exist; nothing to stop"
		return 0
	fi
	local dir
	dir=$(cd "$1" && pwd -P)
	[ -f "$dir/$MARKER" ] || die "$dir was not created by $PROG start (no $MARKER); refusing to touch it"
	stop_recorded "$dir"
	local pgbase
	pgbase=$(pg_base_of "$dir")
	if [ "$pgbase" != "$dir/pg" ]; then
		rm -rf "${pgbase:?}"
	fi
	rm -rf "${dir:?}/primary" "${dir:?}/replica" "${dir:?}/pg" "$dir/pg.env" "$dir/pg.external" \
		"$dir/env" "$dir/env.tmp" "$dir/pids" "${dir:?}/watchdog.log" "${dir:?}/$MARKER"
	rmdir "$dir" 2>/dev/null || true
}

# _watch DIR PID (internal): stop DIR's servers once PID has exited.
cmd_watch() {
	local dir=$1 wpid=$2
	while alive "$wpid"; do
		sleep 1
	done
	if [ -f "$dir/$MARKER" ]; then
		log "process $wpid exited; stopping servers in $dir"
		cmd_stop "$dir"
	fi
}

cmd_env() {
	[ $# -eq 1 ] || usage
	[ -f "$1/env" ] || die "$1/env not found (servers not started?)"
	cat "$1/env"
}

# ---------------------------------------------------------------------------

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
install) cmd_install "$@" ;;
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
env) cmd_env "$@" ;;
_watch) cmd_watch "$@" ;;
-h | --help | help) usage ;;
*)
	log "unknown command: $cmd"
	usage
	;;
esac
