#!/usr/bin/env bash
# Runs the whole test suite: installs the database servers if needed, starts
# one MariaDB primary + replica and one PostgreSQL primary + streaming standby
# for all packages (OSC_TEST_MYSQL_* and OSC_TEST_PG_* from servers.sh's
# DIR/env), then `go vet` and `go test`.
#
#   bash localtests/test.sh                         # everything
#   bash localtests/test.sh -run TestX ./mysqldb/   # extra args go to `go test`
#
# Works from any directory; used by CI (.ci/run).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
SERVERS="$ROOT/localtests/servers.sh"

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi
command -v go >/dev/null 2>&1 || {
	echo "test.sh: go not found on PATH" >&2
	exit 1
}

echo "==> installing database servers (if missing)"
bash "$SERVERS" install

DIR=$(mktemp -d "${TMPDIR:-/tmp}/osc-test.XXXXXX")
# shellcheck disable=SC2317 # invoked by the trap
cleanup() {
	echo "==> stopping database servers"
	bash "$SERVERS" stop "$DIR" || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

echo "==> starting database servers in $DIR"
# The watchdog stops the servers even if this script is killed outright.
OSC_SERVERS_WATCH_PID=$$ bash "$SERVERS" start "$DIR"
set -a
# shellcheck disable=SC1091
. "$DIR/env"
set +a

echo "==> go vet ./..."
if ! go vet ./...; then
	echo "test.sh: go vet failed" >&2
	exit 1
fi

if [ $# -eq 0 ]; then
	set -- ./...
fi
echo "==> go test -count=1 -timeout 25m -p 2 $*"
status=0
go test -count=1 -timeout 25m -p 2 "$@" || status=$?
if [ $status -eq 0 ]; then
	echo "==> PASS"
else
	echo "==> FAIL (go test exit status $status)"
fi
exit $status
