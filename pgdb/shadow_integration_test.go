package pgdb

import (
	"context"
	"testing"
)

// TestIndexBuildMemory: the shadow's index builds get at least the
// configured maintenance_work_mem, and keep a higher one the server gives.
func TestIndexBuildMemory(t *testing.T) {
	ddl := "CREATE TABLE t (id int PRIMARY KEY)"
	raise := `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET maintenance_work_mem = ''1GB''', current_database()); END $$`
	for _, tc := range []struct {
		name, configured string
		setup            []string
		want             string
	}{
		{name: "raised", configured: "300MB", setup: []string{ddl}, want: "300MB"},
		{name: "server's is higher", configured: "300MB", setup: []string{raise, ddl}, want: "1GB"},
		{name: "server's kept", configured: "", setup: []string{ddl}, want: "64MB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _, _ := prepareShadow(t, "ADD COLUMN z int", func(c *Config) { c.MaintenanceWorkMem = tc.configured }, tc.setup...)
			ctx := context.Background()
			tx, err := e.indexBuildTx(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			var got string
			if err := tx.QueryRow(ctx, "SHOW maintenance_work_mem").Scan(&got); err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("maintenance_work_mem %s in the index build's transaction, want %s", got, tc.want)
			}
		})
	}
}
