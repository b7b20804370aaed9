package dataproto

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/domain/group"
)

func TestDecodeRequest(t *testing.T) {
	ok := []struct {
		name   string
		in     string
		extra  bool
		expect Request
	}{
		{"groups", `{"op":"query","table":"_groups"}`, false, Request{Op: "query", Table: "_groups"}},
		{"op defaults to query", `{"table":"_groups"}`, false, Request{Op: "query", Table: "_groups"}},
		{"params", `{"op":"query","table":"scores","params":{"game":"chess","min":3,"open":true,"x":null}}`, false,
			Request{Op: "query", Table: "scores", Params: map[string]any{"game": "chess", "min": 3.0, "open": true, "x": nil}}},
		{"compat paging", `{"op":"query","table":"_groups","limit":5,"offset":2,"columns":["id","name"]}`, false,
			Request{Op: "query", Table: "_groups", Limit: 5, Offset: 2, Columns: []string{"id", "name"}}},
		{"SDK spreads params at the top level", `{"op":"query","table":"scores","game":"chess"}`, true,
			Request{Op: "query", Table: "scores", Params: map[string]any{"game": "chess"}}},
	}
	for _, c := range ok {
		t.Run(c.name, func(t *testing.T) {
			got, err := DecodeRequest([]byte(c.in), c.extra)
			require.NoError(t, err)
			assert.Equal(t, c.expect, got)
		})
	}
	bad := []struct {
		name, in string
		extra    bool
		code     string
		msg      string
	}{
		{"SQL text", `{"op":"query","sql":"SELECT * FROM _mq_outbox"}`, false, CodeSQLText, "SQL text is not accepted"},
		{"query text", `{"op":"query","table":"_groups","query":"SELECT 1"}`, true, CodeSQLText, "SQL text is not accepted"},
		{"compat where clause", `{"op":"query","table":"_groups","where":"1=1; DROP TABLE _groups"}`, false, CodeSQLText, "SQL text is not accepted"},
		{"SQL field in any case", `{"op":"query","table":"t","SQL":"x"}`, false, CodeSQLText, "SQL text is not accepted"},
		{"insert", `{"op":"insert","table":"_groups","data":{"id":"x"}}`, false, CodeUnsupported, `op "insert" is not supported`},
		{"missing table", `{"op":"query"}`, false, CodeBadRequest, "missing table"},
		{"table is SQL", `{"op":"query","table":"_groups; DROP TABLE x"}`, false, CodeNotExposed, "is not exposed by this peer"},
		{"unknown wire field", `{"op":"query","table":"_groups","data":{}}`, false, CodeBadRequest, `field "data" is not accepted`},
		{"nested param", `{"op":"query","table":"t","params":{"a":{"b":1}}}`, false, CodeBadRequest, "must be a string, number, boolean or null"},
		{"bad param name", `{"op":"query","table":"t","params":{"a b":1}}`, false, CodeBadRequest, "not an identifier"},
		{"bad column", `{"op":"query","table":"t","columns":["id; --"]}`, false, CodeBadRequest, "not an identifier"},
		{"negative limit", `{"op":"query","table":"t","limit":-1}`, false, CodeBadRequest, "must not be negative"},
		{"wrong type", `{"op":"query","table":5}`, false, CodeBadRequest, "table has the wrong type"},
		{"not an object", `[1,2]`, false, CodeBadRequest, "not a JSON object"},
		{"null", `null`, false, CodeBadRequest, "not a JSON object"},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeRequest([]byte(c.in), c.extra)
			require.Error(t, err)
			assert.Equal(t, c.code, CodeOf(err))
			assert.Contains(t, err.Error(), c.msg)
		})
	}
}

func hostedGroups() []group.HostedView {
	at := time.UnixMilli(1_700_000_000_000)
	return []group.HostedView{
		{Group: group.Group{ID: "aaaa000000000001", Name: "chess", Owner: "host", Type: "realtime", Context: "chess",
			MaxMembers: 2, CreatedAt: at, Lifecycle: group.Ephemeral, Access: group.Open, DefaultRole: "viewer",
			Roles: []string{"viewer", "player"}, State: []byte(`{"board":"secret"}`)},
			Members: []group.Member{{PeerID: "p1"}}},
		{Group: group.Group{ID: "aaaa000000000002", Name: "secret club", Owner: "host", Type: "general",
			CreatedAt: at.Add(time.Second), Lifecycle: group.Persistent, Access: group.InviteOnly},
			Invited: []group.PeerID{"friend"}},
	}
}

func fakeHosted(vs []group.HostedView) HostedFunc {
	return func(_ context.Context, fn func([]group.HostedView)) error { fn(vs); return nil }
}

func TestGroupsViewShowsPublicRowsOnly(t *testing.T) {
	pub, err := NewRegistry(PublicGroupsView(fakeHosted(hostedGroups())))
	require.NoError(t, err)
	rows, err := pub.Query(context.Background(), Request{Table: "_groups"})
	require.NoError(t, err)
	require.Len(t, rows, 1, "the invite-only group is not listed")
	assert.Equal(t, map[string]any{
		"id": "aaaa000000000001", "name": "chess", "owner": "host", "group_type": "realtime", "group_context": "chess",
		"max_members": 2, "created_at": int64(1_700_000_000_000), "volatile": false, "lifecycle": group.Ephemeral,
		"access": group.Open, "member_count": 1,
	}, rows[0], "only the public columns: no state, roles or invites")

	local, err := NewRegistry(LocalGroupsView(fakeHosted(hostedGroups())))
	require.NoError(t, err)
	rows, err = local.Query(context.Background(), Request{Table: "_groups"})
	require.NoError(t, err)
	require.Len(t, rows, 2, "the owner's own pages see invite-only groups too")
	assert.Equal(t, []string{"viewer", "player"}, rows[0]["roles"])
	assert.NotContains(t, rows[1], "state")
}

func TestSurfaceRefusesWhatIsNotExposed(t *testing.T) {
	reg, err := NewRegistry(PublicGroupsView(fakeHosted(hostedGroups())))
	require.NoError(t, err)
	for _, table := range []string{"_mq_outbox", "_mq_inbox", "_migrations", "_group_invites", "_group_history",
		"_group_members", "_group_subscriptions", "_peers", "sqlite_master", "users"} {
		t.Run(table, func(t *testing.T) {
			_, err := reg.Query(context.Background(), Request{Table: table})
			require.Error(t, err)
			assert.True(t, errors.Is(err, ErrNotExposed))
			assert.Equal(t, `table "`+table+`" is not exposed by this peer`, err.Error())
		})
	}
	t.Run("op other than query", func(t *testing.T) {
		_, err := reg.Query(context.Background(), Request{Op: "delete", Table: "_groups"})
		assert.True(t, errors.Is(err, ErrUnsupported))
	})
	t.Run("undeclared parameter", func(t *testing.T) {
		_, err := reg.Query(context.Background(), Request{Table: "_groups", Params: map[string]any{"owner": "x"}})
		assert.True(t, errors.Is(err, ErrBadRequest))
		assert.Contains(t, err.Error(), `table "_groups" takes no parameters`)
	})
	t.Run("unknown column", func(t *testing.T) {
		_, err := reg.Query(context.Background(), Request{Table: "_groups", Columns: []string{"state"}})
		assert.True(t, errors.Is(err, ErrBadRequest))
		assert.Contains(t, err.Error(), `has no column "state"`)
	})
}

func TestRegistryPolicy(t *testing.T) {
	reg, err := NewRegistry()
	require.NoError(t, err)
	for _, name := range []string{"_mq_outbox", "_migrations", "_group_invites", "_group_history", "_peers", "sqlite_master", "bad name"} {
		assert.Error(t, reg.Register(View{Name: name, Columns: []string{"id"}, Query: func(context.Context, map[string]any) ([]map[string]any, error) { return nil, nil }}), name)
	}
	assert.Error(t, reg.Register(View{Name: "scores"}), "a view needs columns and a query")

	var got map[string]any
	require.NoError(t, reg.Register(View{Name: "scores", Columns: []string{"player", "points"}, Params: []string{"game"},
		Query: func(_ context.Context, params map[string]any) ([]map[string]any, error) {
			got = params
			var rows []map[string]any
			for i := range 5 {
				rows = append(rows, map[string]any{"player": i, "points": i * 10, "secret": "never shown"})
			}
			return rows, nil
		}}))
	assert.Equal(t, []string{"scores"}, reg.Names())
	rows, err := reg.Query(context.Background(), Request{Table: "scores", Params: map[string]any{"game": "chess"}, Offset: 1, Limit: 2})
	require.NoError(t, err)
	assert.Equal(t, map[string]any{"game": "chess"}, got, "declared params reach the view")
	assert.Equal(t, []map[string]any{{"player": 1, "points": 10}, {"player": 2, "points": 20}}, rows, "undeclared columns are dropped; offset and limit apply")
	rows, err = reg.Query(context.Background(), Request{Table: "scores", Columns: []string{"points"}, Offset: 10})
	require.NoError(t, err)
	assert.Empty(t, rows)
	assert.NotNil(t, rows)
	_, err = reg.Query(context.Background(), Request{Table: "scores", Params: map[string]any{"where": "1=1"}})
	assert.Contains(t, err.Error(), `does not accept parameter "where" (it accepts game)`)

	require.NoError(t, reg.Register(View{Name: "broken", Columns: []string{"x"}, Query: func(context.Context, map[string]any) ([]map[string]any, error) {
		return nil, errors.New("disk on fire at /secret/path")
	}}))
	_, err = reg.Query(context.Background(), Request{Table: "broken"})
	assert.Equal(t, CodeInternal, CodeOf(err))
	assert.Equal(t, `table "broken" could not be read`, err.Error(), "internal errors do not leak")
}
