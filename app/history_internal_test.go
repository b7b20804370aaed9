package app

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/domain/group"
)

// Members' history questions wait in a bounded queue: a member asking in a
// loop cannot grow the host's memory; the extra questions are dropped, and
// none reaches the node's subscribers.
func TestHistoryQuestionsAreBounded(t *testing.T) {
	r := NewRuntime(NewNode("H", State{}, system.Rand{}, NodeOptions{}), nil, nil, system.Clock{}, nil)
	r.history = make(chan historyJob, historyQueue)
	sub := r.Subscribe(1)
	q, err := json.Marshal(group.HistoryQuestion{Req: "r", Limit: 5})
	require.NoError(t, err)
	for range 3 * historyQueue {
		r.publish([]Event{{Kind: EventGroup, Group: &group.Event{Type: group.EvHistoryRequest, Group: "g", From: "A", Payload: q}}})
	}
	assert.Len(t, r.history, historyQueue)
	assert.Equal(t, historyJob{group: "g", from: "A", q: group.HistoryQuestion{Req: "r", Limit: 5}}, <-r.history)
	assert.Empty(t, sub.C)
}
