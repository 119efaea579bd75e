#!/usr/bin/env bash
# servers.sh — throwaway database servers for osc's integration tests.
#
# Usage:
#   servers.sh install      install the server packages if missing (apt-get, Debian)
#   servers.sh start DIR    start a MariaDB primary + replica on free loopback ports,
#                           data under DIR; writes DIR/env and DIR/pids
#   servers.sh stop DIR     stop only the processes recorded in DIR/pids, then delete
#                           what start created in DIR
#   servers.sh env DIR      print DIR/env (KEY=value lines, suitable for `set -a; . DIR/env`)
#
# Environment:
#   OSC_SERVERS_WATCH_PID   with `start`: also start a watchdog that runs `stop DIR`
#                           as soon as this PID exits (so a killed test run never
#                           leaves servers behind)
#   OSC_SERVERS_TIMEOUT     seconds to wait for a server / the replica (default 60)
#
# Nothing here touches servers it did not start, except that `install` stops the
# Debian package's own system service if installing the package started it.
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

install_mariadb() {
	if find_bin mariadbd mysqld >/dev/null && find_bin mariadb-install-db mysql_install_db >/dev/null &&
		find_bin mariadb mysql >/dev/null; then
		return 0
	fi
	local was_running=0
	if system_service_running mariadb; then was_running=1; fi
	apt_install mariadb-server mariadb-client
	# The package's postinst may start its own system service (where no
	# policy-rc.d forbids it). The tests never use it: stop it, unless it was
	# already running before we installed.
	if [ "$was_running" = 0 ] && system_service_running mariadb; then
		log "stopping the mariadb system service started by the package"
		as_root service mariadb stop >/dev/null 2>&1 || log "warning: could not stop the mariadb system service"
	fi
}

system_service_running() {
	command -v service >/dev/null 2>&1 || return 1
	service "$1" status >/dev/null 2>&1
}

# install_postgresql: PostgreSQL 15 (initdb, postgres) goes here.
# install_postgresql() { ... }

cmd_install() {
	install_mariadb
	# install_postgresql
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
			--innodb-buffer-pool-size=256M
			--innodb-flush-log-at-trx-commit=2
			--innodb-doublewrite=0
			--innodb-use-native-aio=0
			--sync-binlog=0
			--max-connections=500
			--max-allowed-packet=64M
			--character-set-server=utf8mb4
			--collation-server=utf8mb4_general_ci
		)
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
# start

cmd_start() {
	[ $# -eq 1 ] || usage
	mariadb_bins
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
	# On any failure, stop whatever this invocation started.
	trap 'if [ $ok = 0 ]; then log "start failed; stopping what was started"; stop_recorded "$DIR" || true; fi' EXIT

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
	mv "$DIR/env.tmp" "$DIR/env"
	ok=1
	trap - EXIT
	log "servers ready in ${SECONDS}s; environment in $DIR/env"
}

# ---------------------------------------------------------------------------
# stop

# stop_recorded DIR: TERM every recorded process that is still ours, wait, KILL leftovers.
stop_recorded() {
	local dir=$1 name pid
	[ -f "$dir/pids" ] || return 0
	local pids=()
	while read -r name pid; do
		[ -n "${pid:-}" ] || continue
		case "$pid" in *[!0-9]*) continue ;; esac
		# A watchdog running `stop` must not kill itself.
		[ "$pid" != "$$" ] || continue
		if alive "$pid" && ours "$dir" "$pid"; then
			kill -TERM "$pid" 2>/dev/null || true
			pids+=("$pid")
		fi
	done <"$dir/pids"
	[ ${#pids[@]} -gt 0 ] || return 0

	local deadline=$((SECONDS + TIMEOUT)) left
	while :; do
		left=()
		for pid in "${pids[@]}"; do
			if alive "$pid" && ours "$dir" "$pid"; then left+=("$pid"); fi
		done
		[ ${#left[@]} -gt 0 ] || return 0
		if [ $SECONDS -ge $deadline ]; then
			log "killing processes that did not stop within ${TIMEOUT}s: ${left[*]}"
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
	rm -rf "${dir:?}/primary" "${dir:?}/replica" "$dir/env" "$dir/env.tmp" "$dir/pids" \
		"${dir:?}/watchdog.log" "${dir:?}/$MARKER"
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
