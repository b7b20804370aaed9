package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestGroupsPageInTwoBrowsers drives the viewer's Groups page the way a user
// does, with its forms and buttons: the host creates a chat group, the guest
// joins it by host and id, both talk through the group's message box and see
// each other live, the host's page shows the conversation again after a
// reload (from the group's history), and the host kicks the guest.
func TestGroupsPageInTwoBrowsers(t *testing.T) {
	b := twoBrowsers(t, "guest")
	host, hostURL, guestURL, hctx, gctx := b.host, b.hostURL, b.otherURL, b.hctx, b.octx

	const card = `#hosted .group`
	const joined = `#joined .group`
	require.NoError(t, chromedp.Do(hctx, chromedp.Navigate(hostURL+"/groups"), chromedp.WaitVisible("#create"),
		chromedp.SetValue(`#create input[name=name]`, "book club"),
		chromedp.SetValue(`#create select[name=group_type]`, "chat"),
		chromedp.Click(`#create button`),
		chromedp.WaitVisible(card)))
	id, err := poll[string](hctx, `document.querySelector('`+card+`').dataset.key.split('/')[1]`)
	require.NoError(t, err)
	require.Len(t, id, 16)

	require.NoError(t, chromedp.Do(gctx, chromedp.Navigate(guestURL+"/groups"), chromedp.WaitVisible("#join"),
		chromedp.SetValue(`#join input[name=host_peer_id]`, host.PeerID.String()),
		chromedp.SetValue(`#join input[name=group_id]`, id),
		chromedp.Click(`#join button`),
		chromedp.WaitVisible(joined)))
	_, err = poll[bool](hctx, `document.querySelectorAll('`+card+` .members li').length === 2`)
	require.NoError(t, err, "the host's card lists the guest live")

	tabs := map[string]context.Context{"host": hctx, "guest": gctx}
	say := func(who, sel, text string) {
		t.Helper()
		require.NoError(t, chromedp.Do(tabs[who],
			chromedp.SetValue(sel+` form.say input[name=text]`, text),
			chromedp.Click(sel+` form.say button`)))
	}
	logOf := func(who, sel, want string) string {
		t.Helper()
		s, err := poll[string](tabs[who], fmt.Sprintf(`(function () { var l = document.querySelector(%q);
			return l && l.textContent.includes(%q) && l.innerText })()`, sel+" .log", want))
		require.NoError(t, err, "%s's log shows %q", who, want)
		return s
	}
	say("guest", joined, "hello from the guest")
	assert.Contains(t, logOf("host", card, "hello from the guest"), "guest:", "named by its sender")
	say("host", card, "hello from the host")
	assert.Contains(t, logOf("guest", joined, "hello from the host"), "host:")

	// A reload starts a new page: the host's card shows the conversation
	// from the group's history, in order and once.
	require.NoError(t, chromedp.Do(hctx, chromedp.Navigate(hostURL+"/groups"), chromedp.WaitVisible(card)))
	got := logOf("host", card, "hello from the host")
	lines := strings.Split(strings.TrimSpace(got), "\n")
	require.Len(t, lines, 2, "log after reload: %q", got)
	assert.Contains(t, lines[0], "hello from the guest")
	assert.Contains(t, lines[1], "hello from the host")
	require.NoError(t, chromedp.Do(hctx, screenshot(t, "groups-page-host.png")))

	require.NoError(t, chromedp.Do(hctx, chromedp.Click(card+` .members button.danger`)))
	_, err = poll[bool](gctx, `document.querySelectorAll('`+joined+`').length === 0`)
	require.NoError(t, err, "the kicked guest's card goes away")
	_, err = poll[bool](hctx, `document.querySelectorAll('`+card+` .members li').length === 1`)
	require.NoError(t, err, "the host's card no longer lists the guest")
}
