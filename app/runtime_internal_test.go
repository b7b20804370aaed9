package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/goop-p2p/goop/adapters/system"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
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
	ask := func(from mq.PeerID) {
		r.publish([]Event{{Kind: EventGroup, Group: &group.Event{Type: group.EvHistoryRequest, Group: "g", From: from, Payload: q}}})
	}
	for range 10 {
		ask("A")
	}
	assert.Len(t, r.history, historyPerPeer, "one member cannot crowd the others out")
	for i := range 3 * historyQueue {
		ask(mq.PeerID(fmt.Sprint("M", i)))
	}
	assert.Len(t, r.history, historyQueue)
	j := <-r.history
	assert.Equal(t, historyJob{group: "g", from: "A", q: group.HistoryQuestion{Req: "r", Limit: 5}}, j)
	ask("A")
	assert.Len(t, r.history, historyQueue-1, "A still has one waiting and one being answered")
	r.answered(j)
	ask("A")
	assert.Len(t, r.history, historyQueue, "answered: A may ask again")
	assert.Empty(t, sub.C, "questions reach no subscriber")
}

// A message given up is logged (quiet logs show warnings): one line per
// destination, however many of its messages failed together.
func TestFailuresAreLoggedOncePerPeer(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	r := NewRuntime(NewNode("H", State{}, system.Rand{}, NodeOptions{}), nil, nil, system.Clock{}, log)
	var evs []Event
	for i := range 5 {
		evs = append(evs, Event{Kind: EventFailed, Peer: "B", MsgID: fmt.Sprint("m", i), Reason: "no ack from B after 10 attempts"})
	}
	evs = append(evs, Event{Kind: EventDelivered, Peer: "C", MsgID: "ok"}, Event{Kind: EventFailed, Peer: "C", MsgID: "c1", Reason: "bad JSON"})
	r.publish(evs)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 2, buf.String())
	assert.Contains(t, lines[0], "to=B count=5 first_msg_id=m0")
	assert.Contains(t, lines[0], `reason="no ack from B after 10 attempts"`)
	assert.Contains(t, lines[1], "to=C count=1 first_msg_id=c1")
}
