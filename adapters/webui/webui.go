// Package webui holds the viewer's browser assets: the Goop SDK
// (/sdk/goop.js), the pages (groups, peers) and their scripts and styles.
// They are embedded in the binary; package httpapi serves them.
package webui

import (
	"embed"
	"io/fs"
)

//go:embed assets
var assets embed.FS

// FS returns the asset tree: sdk/goop.js, groups.html, groups.js, goop.css, ...
func FS() fs.FS {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree always has assets/
	}
	return sub
}
