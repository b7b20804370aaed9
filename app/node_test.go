package app_test

import (
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/ports/memory"
)

// TestMessageIDsAreRandomUUIDs: every message gets a distinct version 4
// UUID (RFC 4122 variant) as its id, drawn from the node's random source.
func TestMessageIDsAreRandomUUIDs(t *testing.T) {
	n := app.NewNode("A", app.State{}, memory.NewRand(7), app.NodeOptions{})
	seen := map[string]bool{}
	for range 200 {
		f, err := n.Send(time.Unix(1, 0), "B", "t", []byte(`1`), "")
		require.NoError(t, err)
		u, err := uuid.Parse(f.ID)
		require.NoError(t, err, "id %q", f.ID)
		assert.Equal(t, uuid.Version(4), u.Version(), "id %q", f.ID)
		assert.Equal(t, uuid.RFC4122, u.Variant(), "id %q", f.ID)
		assert.Len(t, f.ID, 36)
		assert.False(t, seen[f.ID], "id %q given twice", f.ID)
		seen[f.ID] = true
	}
}
