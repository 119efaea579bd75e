#!/usr/bin/env bash
# Runs a real demo migration on a fresh machine: installs MariaDB if needed,
# starts a throwaway primary + replica, loads a 200,000-row table, and runs
# osc --execute on it while a load generator writes to the table. Prints
# osc's progress, then the final table. Stops everything it started.
#
#   bash localtests/demo.sh [ROWS]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
SERVERS="$ROOT/localtests/servers.sh"
ROWS=${1:-200000}
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	export PATH="$PATH:/usr/local/go/bin"
fi

echo "==> installing MariaDB (if missing)"
bash "$SERVERS" install
DIR=$(mktemp -d "${TMPDIR:-/tmp}/osc-demo.XXXXXX")
LOADPID=
cleanup() {
	[ -n "$LOADPID" ] && kill "$LOADPID" 2>/dev/null || true
	echo "==> stopping the demo servers"
	bash "$SERVERS" stop "$DIR" || true
}
trap cleanup EXIT

echo "==> building osc"
go build -o "$DIR/osc" ./cmd/osc
go build -o "$DIR/demoload" ./localtests/demoload
echo "==> starting MariaDB primary + replica"
OSC_SERVERS_WATCH_PID=$$ bash "$SERVERS" start "$DIR"
set -a
. "$DIR/env"
set +a
CLIENT=$(command -v mariadb || command -v mysql)
sql() { "$CLIENT" -h127.0.0.1 -P"$OSC_TEST_MYSQL_PORT" -u"$OSC_TEST_MYSQL_USER" -p"$OSC_TEST_MYSQL_PASSWORD" "$@"; }

echo "==> loading demo.orders with $ROWS rows"
sql -e "CREATE DATABASE demo"
sql demo -e "CREATE TABLE orders (
	id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
	customer_id INT NOT NULL,
	amount INT NOT NULL,
	status VARCHAR(16) NOT NULL,
	created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB"
sql demo -e "INSERT INTO orders (customer_id, amount, status)
	SELECT seq % 10000, seq % 100000, ELT(1 + seq % 3, 'new', 'paid', 'shipped') FROM seq_1_to_${ROWS}; ANALYZE TABLE orders" >/dev/null
sql demo -e "SHOW CREATE TABLE orders\G"

echo "==> starting a load generator (random inserts, updates, deletes)"
"$DIR/demoload" -dsn "$OSC_TEST_MYSQL_USER:$OSC_TEST_MYSQL_PASSWORD@tcp(127.0.0.1:$OSC_TEST_MYSQL_PORT)/demo" -table orders -rate 200 &
LOADPID=$!

ALTER="ADD COLUMN note VARCHAR(64) NOT NULL DEFAULT '', MODIFY amount BIGINT NOT NULL, ADD INDEX idx_customer (customer_id)"
echo "==> dry run: osc --alter \"$ALTER\""
OSC_PASSWORD=$OSC_TEST_MYSQL_PASSWORD "$DIR/osc" --host 127.0.0.1 --port "$OSC_TEST_MYSQL_PORT" --user "$OSC_TEST_MYSQL_USER" \
	--database demo --table orders --alter "$ALTER"
echo "==> osc --execute"
OSC_PASSWORD=$OSC_TEST_MYSQL_PASSWORD "$DIR/osc" --host 127.0.0.1 --port "$OSC_TEST_MYSQL_PORT" --user "$OSC_TEST_MYSQL_USER" \
	--database demo --table orders --alter "$ALTER" --execute --chunk-size 2000 --status-interval 300ms
kill "$LOADPID" && wait "$LOADPID" || true
LOADPID=

echo "==> the final table"
sql demo -e "SHOW CREATE TABLE orders\G"
sql demo -e "SELECT COUNT(*) AS rows_now FROM orders; SELECT * FROM orders ORDER BY id DESC LIMIT 5; SHOW TABLES"
