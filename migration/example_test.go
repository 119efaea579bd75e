package migration_test

import (
	"context"
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/migration"
)

// A migration runner hands osc one table and acts on the exit code.
func ExampleRun() {
	log, _ := zap.NewProduction()
	res, err := migration.Run(context.Background(), migration.Options{
		Host: "127.0.0.1", Port: 3306, User: "osc", Password: os.Getenv("OSC_PASSWORD"),
		Database: "shop", Table: "orders",
		Alter:   "ADD COLUMN note VARCHAR(64) NOT NULL DEFAULT ''",
		Execute: true,
		Logger:  log,
	})
	switch migration.ExitCode(err) {
	case migration.ExitApplied:
		fmt.Println("applied; original kept as", res.OldTable)
	case migration.ExitRefused, migration.ExitUsage:
		fmt.Println("not attempted, nothing changed:", err)
	default:
		fmt.Println("failed, the original table is authoritative:", err)
	}
}
