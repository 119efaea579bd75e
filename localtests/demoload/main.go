// Command demoload writes random inserts, updates and deletes to the demo
// table until it is stopped, so the demo migration runs under load.
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func main() {
	driver := flag.String("driver", "mysql", "mysql (go-sql-driver DSN) or postgres (pgx URL)")
	dsn := flag.String("dsn", "", "DSN of the demo database")
	table := flag.String("table", "orders", "table to write to")
	rate := flag.Int("rate", 200, "transactions per second")
	flag.Parse()
	name, insert, del, update := "mysql", "INSERT INTO `%s` (customer_id, amount, status) VALUES (?, ?, 'new')",
		"DELETE FROM `%s` WHERE id = ?", "UPDATE `%s` SET amount = amount + 1, status = 'paid' WHERE id = ?"
	if *driver == "postgres" {
		name, insert, del, update = "pgx", `INSERT INTO "%s" (customer_id, amount, status) VALUES ($1, $2, 'new')`,
			`DELETE FROM "%s" WHERE id = $1`, `UPDATE "%s" SET amount = amount + 1, status = 'paid' WHERE id = $1`
	}
	insert, del, update = fmt.Sprintf(insert, *table), fmt.Sprintf(del, *table), fmt.Sprintf(update, *table)
	db, err := sql.Open(name, *dsn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demoload:", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var maxID int64
	db.QueryRowContext(ctx, "SELECT COALESCE(MAX(id), 0) FROM "+*table).Scan(&maxID)
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	defer tick.Stop()
	var done, failed int
	for {
		select {
		case <-ctx.Done():
			fmt.Printf("demoload: %d writes, %d failed\n", done, failed)
			return
		case <-tick.C:
		}
		id := rand.Int64N(maxID) + 1
		var err error
		switch rand.IntN(4) {
		case 0:
			_, err = db.ExecContext(ctx, insert, rand.IntN(10000), rand.IntN(100000))
		case 1:
			_, err = db.ExecContext(ctx, del, id)
		default:
			_, err = db.ExecContext(ctx, update, id)
		}
		if err != nil && ctx.Err() == nil {
			failed++
			continue
		}
		done++
	}
}
