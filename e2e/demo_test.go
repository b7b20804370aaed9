package e2e

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemoGameInTwoBrowsers plays the starter site's tic-tac-toe as the seed's
// multiplayer use case: the host opens its own page and starts a game; the
// visitor's viewer opens the host's site (served from the host's own origin),
// finds the game with Goop.data.query("_groups"), joins it with Goop.group,
// and both play until X wins. The visiting page then tries the local node's
// mutating API and is refused.
func TestDemoGameInTwoBrowsers(t *testing.T) {
	b := twoBrowsers(t, "visitor")
	host, visitor, hctx, vctx := b.host, b.other, b.hctx, b.octx
	hostID := host.PeerID.String()

	// The host starts a game from its own site.
	require.NoError(t, chromedp.Do(hctx,
		chromedp.Navigate(strings.TrimRight(host.ViewerURL, "/")+"/p/"+hostID+"/"),
		chromedp.WaitVisible("#new"),
		evalOK(`document.getElementById("new").click()`),
		chromedp.WaitVisible("#board button"),
	))
	status, err := poll[string](hctx, `document.getElementById("status").textContent.startsWith("Your turn") && document.getElementById("status").textContent`)
	require.NoError(t, err)
	assert.Equal(t, "Your turn (X)", status)

	// The visitor opens the host's site through its own viewer.
	require.NoError(t, chromedp.Do(vctx,
		chromedp.Navigate(strings.TrimRight(visitor.ViewerURL, "/")+"/p/"+hostID+"/"),
		chromedp.WaitVisible("#games button"),
	))
	loc, err := eval[string](vctx, `location.href`)
	require.NoError(t, err)
	u, err := url.Parse(loc)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(u.Hostname(), "p-") && strings.HasSuffix(u.Hostname(), ".localhost"),
		"a remote site runs on its peer's own origin, not the viewer's: %s", loc)
	require.NoError(t, chromedp.Do(vctx,
		evalOK(`document.querySelector("#games button").click()`),
		chromedp.WaitVisible("#board button"),
	))

	cell := func(i int) string {
		return fmt.Sprintf(`document.querySelector('#board button[data-i="%d"]')`, i)
	}
	move := func(ctx, other contextPair, i int, mark string) {
		t.Helper()
		_, err := poll[bool](ctx.c, cell(i)+`&& !`+cell(i)+`.disabled`)
		require.NoError(t, err, "cell %d playable", i)
		require.NoError(t, chromedp.Do(ctx.c, evalOK(cell(i)+`.click()`)))
		got, err := poll[string](other.c, cell(i)+`.textContent === "`+mark+`" && `+cell(i)+`.textContent`)
		require.NoError(t, err, "the move reached the other player")
		assert.Equal(t, mark, got)
	}
	h, v := contextPair{hctx}, contextPair{vctx}
	move(h, v, 0, "X")
	move(v, h, 4, "O")
	move(h, v, 1, "X")
	move(v, h, 5, "O")
	move(h, v, 2, "X")

	hs, err := poll[string](hctx, `document.getElementById("status").textContent === "You win!" && "won"`)
	require.NoError(t, err)
	assert.Equal(t, "won", hs)
	vs, err := poll[string](vctx, `document.getElementById("status").textContent === "You lose." && "lost"`)
	require.NoError(t, err)
	assert.Equal(t, "lost", vs)
	require.NoError(t, chromedp.Do(hctx, screenshot(t, "demo-host.png")))
	require.NoError(t, chromedp.Do(vctx, screenshot(t, "demo-visitor.png")))

	// The visited page runs untrusted code: it cannot drive the visitor's node.
	for _, js := range []string{
		fmt.Sprintf(`fetch("/api/mq/send", {method: "POST", headers: {"Content-Type": "application/json"},
			body: JSON.stringify({peer_id: %q, topic: "spam", payload: 1})}).then(r => r.status)`, hostID),
		`fetch("/api/groups", {method: "POST", headers: {"Content-Type": "application/json"}, body: '{"name":"evil"}'}).then(r => r.status)`,
		fmt.Sprintf(`fetch("/api/groups/invite", {method: "POST", headers: {"Content-Type": "application/json"},
			body: JSON.stringify({group_id: "0123456789abcdef", peer_id: %q})}).then(r => r.status)`, hostID),
		`fetch("/api/peers").then(r => r.status)`,
	} {
		code, err := eval[float64](vctx, js)
		require.NoError(t, err)
		assert.Equal(t, float64(403), code, "refused: %s", js)
	}
	// Nor can it reach the viewer's own origin: the browser blocks it (CORS),
	// and the viewer refuses state changes from another origin.
	blocked, err := eval[string](vctx, fmt.Sprintf(`fetch(%q, {method: "POST", headers: {"Content-Type": "application/json"},
		body: '{"name":"evil"}'}).then(r => "status " + r.status, e => "blocked")`, strings.TrimRight(visitor.ViewerURL, "/")+"/api/groups"))
	require.NoError(t, err)
	assert.Equal(t, "blocked", blocked)
	hosted, err := eval[float64](hctx, `fetch("/api/groups").then(r => r.json()).then(gs => gs.filter(g => g.name === "evil").length)`)
	require.NoError(t, err)
	assert.Zero(t, hosted, "nothing was created behind anyone's back")
}

type contextPair struct{ c context.Context }
