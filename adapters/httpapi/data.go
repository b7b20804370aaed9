package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/goop-p2p/goop/adapters/dataproto"
	"github.com/goop-p2p/goop/domain/mq"
)

// Data queries (SPEC §3, §7): POST (or GET) /api/data/query runs a query on
// this node's local surface (Deps.LocalViews: the user's own pages only);
// /api/p/<peer>/data/query runs it on that peer's public surface over
// /goop/data/1.0.0 (Deps.QueryData), or on this node's public surface when
// <peer> is this node and the page is on its peer origin.
//
// Body: {"op":"query","table":"…","params":{…}} (other top-level fields are
// parameters too, as the SDK sends them); GET takes table, limit, offset,
// columns (comma-separated) and parameters from the query string. Reply:
// {"ok":true,"data":[rows]} or {"ok":false,"error":"…","code":"…"} with a
// status that says whose fault it is: 4xx refused, 502 unreachable or bad
// answer, 504 no answer in time.

func (s *server) registerData(mux *http.ServeMux) {
	mux.HandleFunc("POST /api/data/query", s.dataLocal)
	mux.HandleFunc("GET /api/data/query", s.dataLocal)
	mux.HandleFunc("POST /api/p/{peer}/data/query", s.dataPeer)
	mux.HandleFunc("GET /api/p/{peer}/data/query", s.dataPeer)
}

type dataReply struct {
	OK    bool            `json:"ok"`
	Data  json.RawMessage `json:"data,omitempty"`
	Error string          `json:"error,omitempty"`
	Code  string          `json:"code,omitempty"`
}

// dataRequest reads a query from the body (POST) or the query string (GET);
// on error it writes the reply and reports false.
func dataRequest(w http.ResponseWriter, r *http.Request) (dataproto.Request, bool) {
	var raw []byte
	if r.Method == http.MethodPost {
		b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, dataproto.MaxRequestBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				dataError(w, &dataproto.Error{Code: dataproto.CodeBadRequest, Msg: fmt.Sprintf("request body is larger than %d bytes", tooBig.Limit)}, false)
			} else {
				dataError(w, &dataproto.Error{Code: dataproto.CodeBadRequest, Msg: "reading the request: " + err.Error()}, false)
			}
			return dataproto.Request{}, false
		}
		raw = b
	} else {
		m := map[string]any{}
		for k, vs := range r.URL.Query() {
			v := vs[0]
			switch k {
			case "limit", "offset":
				n, err := strconv.Atoi(v)
				if err != nil {
					dataError(w, &dataproto.Error{Code: dataproto.CodeBadRequest, Msg: fmt.Sprintf("bad request: %s %q is not a number", k, truncate(v, 20))}, false)
					return dataproto.Request{}, false
				}
				m[k] = n
			case "columns":
				m[k] = strings.Split(v, ",")
			default:
				m[k] = v
			}
		}
		raw, _ = json.Marshal(m)
	}
	req, err := dataproto.DecodeRequest(raw, true)
	if err != nil {
		dataError(w, err, false)
		return dataproto.Request{}, false
	}
	return req, true
}

func (s *server) dataLocal(w http.ResponseWriter, r *http.Request) {
	req, ok := dataRequest(w, r)
	if !ok {
		return
	}
	s.runLocal(w, r, s.d.LocalViews, req)
}

func (s *server) runLocal(w http.ResponseWriter, r *http.Request, reg *dataproto.Registry, req dataproto.Request) {
	if reg == nil {
		dataError(w, &dataproto.Error{Code: dataproto.CodeNotExposed, Msg: fmt.Sprintf("table %q is not exposed by this peer", req.Table)}, false)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.d.DataTimeout)
	defer cancel()
	rows, err := reg.Query(ctx, req)
	if err != nil {
		if dataproto.CodeOf(err) == dataproto.CodeInternal {
			s.d.Log.Warn("data query", "table", req.Table, "err", errors.Unwrap(err))
		}
		dataError(w, err, false)
		return
	}
	data, err := json.Marshal(rows)
	if err != nil {
		dataError(w, &dataproto.Error{Code: dataproto.CodeInternal, Msg: "the rows could not be encoded"}, false)
		return
	}
	writeJSON(w, http.StatusOK, dataReply{OK: true, Data: data})
}

func (s *server) dataPeer(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("peer")
	if len(id) > mq.MaxPeerIDBytes {
		dataError(w, &dataproto.Error{Code: dataproto.CodeBadRequest, Msg: "invalid peer id: too long"}, false)
		return
	}
	if _, err := peer.Decode(id); err != nil {
		dataError(w, &dataproto.Error{Code: dataproto.CodeBadRequest, Msg: fmt.Sprintf("invalid peer id %q: not a libp2p peer id", truncate(id, 80))}, false)
		return
	}
	req, ok := dataRequest(w, r)
	if !ok {
		return
	}
	if mq.PeerID(id) == s.d.Runtime.Self() {
		if _, scoped := peerOrigin(r.Host); scoped {
			s.runLocal(w, r, s.d.PublicViews, req)
		} else {
			s.runLocal(w, r, s.d.LocalViews, req)
		}
		return
	}
	if s.d.QueryData == nil {
		dataError(w, &dataproto.Error{Code: dataproto.CodeUnreachable, Msg: "this viewer cannot query other peers"}, true)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.d.DataTimeout)
	defer cancel()
	data, err := s.d.QueryData(ctx, mq.PeerID(id), req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && dataproto.CodeOf(err) == dataproto.CodeInternal {
			err = &dataproto.Error{Code: dataproto.CodeTimeout, Msg: fmt.Sprintf("peer %s did not answer within %s", id, s.d.DataTimeout), Err: err}
		}
		dataError(w, err, true)
		return
	}
	writeJSON(w, http.StatusOK, dataReply{OK: true, Data: data})
}

// dataError writes a refused or failed query; remote says the error came
// from (or on the way to) another peer.
func dataError(w http.ResponseWriter, err error, remote bool) {
	code := dataproto.CodeOf(err)
	msg := err.Error()
	status := http.StatusInternalServerError
	switch code {
	case dataproto.CodeNotExposed, dataproto.CodeSQLText, dataproto.CodeRefused:
		status = http.StatusForbidden
	case dataproto.CodeBadRequest, dataproto.CodeUnsupported:
		status = http.StatusBadRequest
	case dataproto.CodeTooLarge:
		status = http.StatusRequestEntityTooLarge
	case dataproto.CodeUnreachable, dataproto.CodeProtocol:
		status = http.StatusBadGateway
	case dataproto.CodeTimeout:
		status = http.StatusGatewayTimeout
	case dataproto.CodeUnavailable:
		status = http.StatusServiceUnavailable
	case dataproto.CodeInternal:
		if remote {
			status = http.StatusBadGateway
		}
		var e *dataproto.Error
		if !errors.As(err, &e) {
			msg = "the query failed"
		}
	}
	writeJSON(w, status, dataReply{Error: msg, Code: code})
}
