#!/usr/bin/env bash
# bench.sh — measures osc against a bare table copy (and pt-online-schema-change
# on MariaDB) on throwaway servers, idle and under a paced write load, plus the
# applier's throughput; prints the tables and rewrites docs/benchmarks.md.
#
#   bash localtests/bench/bench.sh [flags]
#
#   --quick              smoke run (~2-3 minutes): 100k MariaDB rows, pgbench -s 1, 2 reps
#   --rows N             MariaDB table rows (default 1000000)
#   --pg-scales LIST     pgbench scale factors (default 10,50: the load and the
#                        applier run at the first, the others idle only)
#   --reps N             runs of each contender per condition, interleaved (default 3)
#   --only DB            mariadb or postgres
#   --memory             also osc's peak RSS on a 5x larger MariaDB table
#   --load-rate N        load generator transactions/s (default 500), --load-conns N (4)
#   --apply-rows N       row changes per applier burst (default 200000)
#   --no-apply           skip the applier measurement
#   --no-ptosc           skip pt-online-schema-change (else installed with apt-get if missing)
#   --no-docs            do not rewrite docs/benchmarks.md
#   --help               every flag of the Go program
#
# Starts its own MariaDB primary + replica and PostgreSQL primary + standby
# (localtests/servers.sh) in a temporary directory with a watchdog, and stops
# only those at exit. Logs and results.json stay in /tmp/osc-bench-logs.*.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd "$ROOT"
SERVERS="$ROOT/localtests/servers.sh"
T0=$(date +%s)
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

docs="$ROOT/docs/benchmarks.md"
ptosc=1
args=()
for a in "$@"; do
	case "$a" in
	--no-docs) docs= ;;
	--no-ptosc)
		ptosc=0
		args+=("$a")
		;;
	-h | --help | -help)
		awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}"
		echo
		go run ./localtests/bench -h 2>&1 || true
		exit 0
		;;
	*) args+=("$a") ;;
	esac
done

DIR=$(mktemp -d /tmp/osc-bench.XXXXXX)
LOGS=$(mktemp -d /tmp/osc-bench-logs.XXXXXX)
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
	echo "==> stopping the benchmark servers" >&2
	bash "$SERVERS" stop "$DIR/servers" || true
	rm -rf "$DIR"
	echo "==> logs and results.json: $LOGS" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

echo "==> installing database servers (if missing)" >&2
bash "$SERVERS" install

ptnote=
if [ $ptosc = 1 ] && ! command -v pt-online-schema-change >/dev/null 2>&1; then
	echo "==> installing percona-toolkit (pt-online-schema-change)" >&2
	run_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
	if ! { run_root apt-get update -q && run_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q percona-toolkit; } >"$LOGS/apt.log" 2>&1; then
		ptnote="apt-get install percona-toolkit failed: $(tail -n 1 "$LOGS/apt.log")"
		echo "==> $ptnote; pt-osc is skipped" >&2
	fi
fi

echo "==> building osc and the benchmark" >&2
go build -o "$DIR/osc" ./cmd/osc
go build -o "$DIR/bench" ./localtests/bench

echo "==> starting MariaDB primary + replica, PostgreSQL primary + standby" >&2
# MariaDB sized for the data, as a production server would be: a buffer
# pool that holds the 1M-row table and its copy (with the tests' 256M every
# full read is a read from disk), and a redo log that a copy running at
# full speed does not fill (with the default 96M InnoDB flushes pages
# synchronously and every writer waits: the load's p95 rose to 25-35 ms).
OSC_SERVERS_WATCH_PID=$$ OSC_SERVERS_INNODB_BUFFER_POOL=1G OSC_SERVERS_INNODB_LOG_FILE_SIZE=1G \
	bash "$SERVERS" start "$DIR/servers"

status=0
"$DIR/bench" --osc "$DIR/osc" --env "$DIR/servers/env" --work "$LOGS" --results "$LOGS/results.json" \
	--docs "$docs" --cmdline "bash localtests/bench/bench.sh${*:+ $*}" --t0 "$T0" --ptosc-note "$ptnote" \
	${args[@]+"${args[@]}"} || status=$?
echo "==> whole run: $(($(date +%s) - T0))s" >&2
exit $status
