package sqlstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/goop-p2p/goop/domain/presence"
	"github.com/goop-p2p/goop/ports"
)

func init() {
	Register(Migration{Version: 3, Name: "peer cache", Up: createPeerTables})
}

// peerRow is one row of the cached peer table (domain/presence.Peer): what a
// restarted node knew of its peers. Times are Unix milliseconds
// (offline_since 0 while online); addrs is a JSON array of strings.
type peerRow struct {
	bun.BaseModel `bun:"table:_peers"`

	PeerID              string `bun:"peer_id,pk"`
	Label               string `bun:"label,notnull"`
	Email               string `bun:"email,notnull"`
	AvatarHash          string `bun:"avatar_hash,notnull"`
	ActiveTemplate      string `bun:"active_template,notnull"`
	PublicKey           string `bun:"public_key,notnull"`
	EncryptionSupported bool   `bun:"encryption_supported,notnull"`
	Version             string `bun:"goop_client_version,notnull"`
	Addrs               string `bun:"addrs,notnull"`
	Verified            bool   `bun:"verified,notnull"`
	Source              string `bun:"source,notnull"`
	Online              bool   `bun:"online,notnull"`
	LastSeen            int64  `bun:"last_seen,notnull"`
	OfflineSince        int64  `bun:"offline_since,notnull"`
	TS                  int64  `bun:"ts,notnull"`
}

func createPeerTables(ctx context.Context, tx bun.Tx) error {
	_, err := tx.NewCreateTable().Model((*peerRow)(nil)).Exec(ctx)
	return err
}

// peerChunk bounds the rows of one multi-row statement (15 columns each,
// well under SQLite's and Postgres' bind variable limits).
const peerChunk = 500

// applyPeers writes the net effect of cs (in order: of several changes of a
// peer the last wins) inside tx. A change with an invalid peer id, a missing
// row, a row for another id, or text a SQL column cannot hold (invalid
// UTF-8, NUL) fails the whole transaction, with an error naming it.
func (s *Store) applyPeers(ctx context.Context, tx bun.Tx, cs []presence.Change) error {
	if len(cs) == 0 {
		return nil
	}
	net := make(map[presence.PeerID]*presence.Peer, len(cs))
	for i := range cs {
		c := &cs[i]
		if err := presence.ValidatePeerID(c.ID); err != nil {
			return fmt.Errorf("peer change %d: %w", i, err)
		}
		switch c.Kind {
		case presence.PutPeer:
			if c.Peer == nil || c.Peer.ID != c.ID {
				return fmt.Errorf("peer change %d (PutPeer %q): missing row or row of another peer", i, c.ID)
			}
			p := c.Peer
			if err := checkText(p.Label, p.Email, p.AvatarHash, p.ActiveTemplate, p.PublicKey, p.Version, string(p.Source)); err != nil {
				return fmt.Errorf("peer change %d (PutPeer %q): %w", i, c.ID, err)
			}
			if err := checkText(p.Addrs...); err != nil {
				return fmt.Errorf("peer change %d (PutPeer %q): %w", i, c.ID, err)
			}
			net[c.ID] = p
		case presence.DeletePeer:
			net[c.ID] = nil
		default:
			return fmt.Errorf("peer change %d: unknown kind %d", i, c.Kind)
		}
	}
	ids := make([]string, 0, len(net))
	for id := range net {
		ids = append(ids, string(id))
	}
	slices.Sort(ids) // deterministic statements (and lock order on Postgres)
	var dels []string
	var puts []peerRow
	for _, id := range ids {
		p := net[presence.PeerID(id)]
		if p == nil {
			dels = append(dels, id)
			continue
		}
		puts = append(puts, newPeerRow(p))
	}
	for chunk := range slices.Chunk(dels, peerChunk) {
		if _, err := tx.NewDelete().Model((*peerRow)(nil)).Where("peer_id IN (?)", bun.In(chunk)).Exec(ctx); err != nil {
			return fmt.Errorf("delete %d peers: %w", len(chunk), err)
		}
	}
	for chunk := range slices.Chunk(puts, peerChunk) {
		if _, err := tx.NewInsert().Model(&chunk).On("CONFLICT (peer_id) DO UPDATE").Exec(ctx); err != nil {
			return fmt.Errorf("store %d peers: %w", len(chunk), err)
		}
	}
	return nil
}

func newPeerRow(p *presence.Peer) peerRow {
	addrs := p.Addrs
	if addrs == nil {
		addrs = []string{}
	}
	b, _ := json.Marshal(addrs) // strings always encode
	var off int64
	if !p.OfflineSince.IsZero() {
		off = p.OfflineSince.UnixMilli()
	}
	var seen int64
	if !p.LastSeen.IsZero() {
		seen = p.LastSeen.UnixMilli()
	}
	return peerRow{PeerID: string(p.ID), Label: p.Label, Email: p.Email, AvatarHash: p.AvatarHash,
		ActiveTemplate: p.ActiveTemplate, PublicKey: p.PublicKey, EncryptionSupported: p.EncryptionSupported,
		Version: p.Version, Addrs: string(b), Verified: p.Verified, Source: string(p.Source), Online: p.Online,
		LastSeen: seen, OfflineSince: off, TS: p.TS}
}

func (r *peerRow) peer() (presence.Peer, error) {
	p := presence.Peer{ID: presence.PeerID(r.PeerID), Label: r.Label, Email: r.Email, AvatarHash: r.AvatarHash,
		ActiveTemplate: r.ActiveTemplate, PublicKey: r.PublicKey, EncryptionSupported: r.EncryptionSupported,
		Version: r.Version, Verified: r.Verified, Source: presence.Source(r.Source), Online: r.Online, TS: r.TS}
	if err := json.Unmarshal([]byte(r.Addrs), &p.Addrs); err != nil {
		return presence.Peer{}, fmt.Errorf("peer %q: addrs: %w", r.PeerID, err)
	}
	if len(p.Addrs) == 0 {
		p.Addrs = nil
	}
	if r.LastSeen != 0 {
		p.LastSeen = time.UnixMilli(r.LastSeen).UTC()
	}
	if r.OfflineSince != 0 {
		p.OfflineSince = time.UnixMilli(r.OfflineSince).UTC()
	}
	return p, nil
}

// LoadPeers implements ports.Store: the cached peer table sorted by peer id
// (byte order, whatever the database's collation), times in UTC to the
// millisecond. A row that cannot be read is skipped with a warning: the
// cache is only a head start.
func (s *Store) LoadPeers(ctx context.Context) ([]presence.Peer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, fmt.Errorf("sqlstore: load peers: %w", ports.ErrClosed)
	}
	var rows []peerRow
	if err := s.db.NewSelect().Model(&rows).Scan(ctx); err != nil {
		return nil, fmt.Errorf("sqlstore: load peers: %w", err)
	}
	out := make([]presence.Peer, 0, len(rows))
	for i := range rows {
		p, err := rows[i].peer()
		if err != nil {
			s.log.Warn("sqlstore: skipping unreadable cached peer", "err", err)
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b presence.Peer) int { return strings.Compare(string(a.ID), string(b.ID)) })
	return out, nil
}
