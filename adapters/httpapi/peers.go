package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/presence"
)

func (s *server) registerPeers(mux *http.ServeMux) {
	mux.HandleFunc("GET /api/peers", s.peersList)
	mux.HandleFunc("GET /api/peers/events", s.peersEvents)
}

// PeerJSON is one row of the peer table (GET /api/peers, and the `peer` of
// peer events). Times are Unix milliseconds (0: never).
type PeerJSON struct {
	PeerID              string   `json:"peer_id"`
	Label               string   `json:"label"`
	Addrs               []string `json:"addrs"`
	Online              bool     `json:"online"`
	Status              string   `json:"status"` // online | offline
	LastSeen            int64    `json:"last_seen"`
	OfflineSince        int64    `json:"offline_since,omitempty"`
	Verified            bool     `json:"verified"`
	Source              string   `json:"source"` // lan | wan | static
	Email               string   `json:"email,omitempty"`
	AvatarHash          string   `json:"avatar_hash,omitempty"`
	ActiveTemplate      string   `json:"active_template,omitempty"`
	Version             string   `json:"goop_client_version,omitempty"`
	EncryptionSupported bool     `json:"encryption_supported,omitempty"`
}

// PeerEventJSON is the data of a peer event on GET /api/peers/events; the
// SSE event name is its type: peer_online, peer_updated, peer_offline or
// peer_removed.
type PeerEventJSON struct {
	Type string   `json:"type"`
	Peer PeerJSON `json:"peer"`
}

func peerJSON(p presence.Peer) PeerJSON {
	addrs := p.Addrs
	if addrs == nil {
		addrs = []string{}
	}
	j := PeerJSON{PeerID: string(p.ID), Label: p.Label, Addrs: addrs, Online: p.Online, Status: "offline",
		Verified: p.Verified, Source: string(p.Source), Email: p.Email, AvatarHash: p.AvatarHash,
		ActiveTemplate: p.ActiveTemplate, Version: p.Version, EncryptionSupported: p.EncryptionSupported,
		LastSeen: unixMilli(p.LastSeen), OfflineSince: unixMilli(p.OfflineSince)}
	if p.Online {
		j.Status = "online"
	}
	return j
}

func unixMilli(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func (s *server) peersList(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), s.d.SendTimeout)
	defer cancel()
	var peers []presence.Peer
	err := s.d.Runtime.Do(ctx, func(_ time.Time, n *app.Node) { peers = n.Peers() })
	switch {
	case err == nil:
	case errors.Is(err, app.ErrStopped):
		writeError(w, http.StatusServiceUnavailable, "node is stopped")
		return
	case errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, "node is busy: it did not answer in time")
		return
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := make([]PeerJSON, 0, len(peers))
	for _, p := range peers {
		out = append(out, peerJSON(p))
	}
	writeJSON(w, http.StatusOK, out)
}

func encodePeerEvent(ev app.Event) (string, []byte) {
	if ev.Kind != app.EventPeer || ev.Presence == nil {
		return "", nil
	}
	b, err := json.Marshal(PeerEventJSON{Type: ev.Presence.Type, Peer: peerJSON(ev.Presence.Peer)})
	if err != nil {
		return "", nil
	}
	return ev.Presence.Type, b
}

// peersEvents streams peer table changes as SSE.
func (s *server) peersEvents(w http.ResponseWriter, r *http.Request) {
	s.stream(w, r, []app.EventKind{app.EventPeer}, encodePeerEvent)
}
