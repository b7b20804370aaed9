package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/goop-p2p/goop/adapters/dataproto"
	"github.com/goop-p2p/goop/adapters/site"
	"github.com/goop-p2p/goop/app"
	"github.com/goop-p2p/goop/domain/group"
	"github.com/goop-p2p/goop/domain/mq"
)

// Visiting is what a node offers visiting peers and uses to visit theirs
// (SPEC §1, §7): its site folder over /goop/site/1.0.0, its public data
// surface over /goop/data/1.0.0, and the clients the viewer's /p/<peer>/
// pages and /api/p/<peer>/data/query use. It holds no goroutine.
type Visiting struct {
	// SiteRoot is the absolute site folder (paths.site_root).
	SiteRoot string
	// PublicViews is what remote peers may query: by default `_groups` with
	// the open groups this node hosts. Register application views on it to
	// expose them (see package dataproto); it is safe to do so while running.
	PublicViews *dataproto.Registry
	// LocalViews is what this node's own pages may query (/api/data/query):
	// by default `_groups` with every hosted group, invite-only ones included.
	LocalViews *dataproto.Registry

	h host.Host
}

// startVisiting registers the site and data protocol handlers on h.
func startVisiting(h host.Host, rt *app.Runtime, siteRoot string, log *slog.Logger) (*Visiting, error) {
	hosted := func(ctx context.Context, fn func([]group.HostedView)) error {
		return rt.Do(ctx, func(_ time.Time, n *app.Node) { fn(n.Groups().Hosted()) })
	}
	public, err := dataproto.NewRegistry(dataproto.PublicGroupsView(hosted))
	if err != nil {
		return nil, fmt.Errorf("data views: %w", err)
	}
	local, err := dataproto.NewRegistry(dataproto.LocalGroupsView(hosted))
	if err != nil {
		return nil, fmt.Errorf("data views: %w", err)
	}
	site.Register(h, siteRoot, site.ServerOptions{Log: log})
	dataproto.Register(h, public, dataproto.ServerOptions{Log: log})
	return &Visiting{SiteRoot: siteRoot, PublicViews: public, LocalViews: local, h: h}, nil
}

// FetchSite fetches a file of peer p's site over /goop/site/1.0.0 (see
// site.Fetch: the header within 10 s, each body read within 30 s).
func (v *Visiting) FetchSite(ctx context.Context, p mq.PeerID, path string) (string, int64, io.ReadCloser, error) {
	pid, err := peer.Decode(string(p))
	if err != nil {
		return "", 0, nil, fmt.Errorf("%w: %q is not a peer id", site.ErrNotFound, p)
	}
	return site.Fetch(ctx, v.h, pid, path)
}

// QueryData runs req on peer p's public data surface over /goop/data/1.0.0.
func (v *Visiting) QueryData(ctx context.Context, p mq.PeerID, req dataproto.Request) (json.RawMessage, error) {
	pid, err := peer.Decode(string(p))
	if err != nil {
		return nil, &dataproto.Error{Code: dataproto.CodeBadRequest, Msg: fmt.Sprintf("%q is not a peer id", p)}
	}
	return dataproto.Query(ctx, v.h, pid, req)
}
