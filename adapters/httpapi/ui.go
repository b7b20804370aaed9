package httpapi

import (
	"io/fs"
	"net/http"

	"github.com/goop-p2p/goop/adapters/webui"
)

// registerUI serves the browser SDK (/sdk/goop.js) and the viewer's pages.
func (s *server) registerUI(mux *http.ServeMux) {
	assets := webui.FS()
	files := http.FileServerFS(assets)
	page := func(name string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			b, err := fs.ReadFile(assets, name)
			if err != nil {
				http.NotFound(w, r)
				return
			}
			uiHeaders(w)
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(b)
		}
	}
	mux.HandleFunc("GET /{$}", page("index.html"))
	mux.HandleFunc("GET /groups", page("groups.html"))
	mux.HandleFunc("GET /peers", page("peers.html"))
	mux.Handle("GET /sdk/", http.StripPrefix("", withUIHeaders(files)))
	mux.Handle("GET /ui/", http.StripPrefix("/ui", withUIHeaders(files)))
}

// uiHeaders set a strict Content-Security-Policy on the viewer's own pages:
// scripts and styles only from the viewer itself, no framing.
func uiHeaders(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; worker-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-cache")
}

func withUIHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uiHeaders(w)
		next.ServeHTTP(w, r)
	})
}
