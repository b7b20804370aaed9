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
		chromedp.SetValue(`#create input[name=roles]`, "player, judge"),
		chromedp.Click(`#create button`),
		chromedp.WaitVisible(card)))
	id, err := poll[string](hctx, `document.querySelector('`+card+`').dataset.key.split('/')[1]`)
	require.NoError(t, err)
	require.Len(t, id, 16)

	// The host starts typing; the guest's arrival redraws the card.
	require.NoError(t, chromedp.Do(hctx, chromedp.Focus(card+` form.say input[name=text]`),
		chromedp.SendKeys(card+` form.say input[name=text]`, "a draft")))
	require.NoError(t, chromedp.Do(gctx, chromedp.Navigate(guestURL+"/groups"), chromedp.WaitVisible("#join"),
		chromedp.SetValue(`#join input[name=host_peer_id]`, host.PeerID.String()),
		chromedp.SetValue(`#join input[name=group_id]`, id),
		chromedp.Click(`#join button`),
		chromedp.WaitVisible(joined)))
	_, err = poll[bool](hctx, `document.querySelectorAll('`+card+` .members li').length === 2`)
	require.NoError(t, err, "the host's card lists the guest live")
	draft, err := eval[string](hctx, `document.querySelector('`+card+` form.say input[name=text]').value + '|' +
		(document.activeElement && document.activeElement.name)`)
	require.NoError(t, err)
	assert.Equal(t, "a draft|text", draft, "what the host was typing, and the focus, survived the redraw")

	// The host makes the guest a player; the guest's card says so.
	require.NoError(t, chromedp.Do(hctx, evalOK(`(function (s) { s.value = 'player'; s.dispatchEvent(new Event('change')); })(
		document.querySelector('`+card+` .members select.role'))`)))
	_, err = poll[bool](gctx, `document.querySelector('`+joined+` .meta').textContent.includes('my role player')`)
	require.NoError(t, err, "the guest's card shows its new role")
	opts, err := eval[[]string](hctx, `Array.from(document.querySelectorAll('`+card+` .members select.role option')).map(o => o.value)`)
	require.NoError(t, err)
	assert.Equal(t, []string{"viewer", "player", "judge"}, opts, "the default role, then the custom ones")

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

	// The guest's page, reloaded, asks the host for the conversation.
	require.NoError(t, chromedp.Do(gctx, chromedp.Navigate(guestURL+"/groups"), chromedp.WaitVisible(joined)))
	got = logOf("guest", joined, "hello from the host")
	lines = strings.Split(strings.TrimSpace(got), "\n")
	require.Len(t, lines, 2, "guest's log after reload: %q", got)
	assert.Contains(t, lines[0], "me:")
	assert.Contains(t, lines[0], "hello from the guest")
	assert.Contains(t, lines[1], "host:")
	assert.Contains(t, lines[1], "hello from the host")
	hist, err := eval[[]map[string]any](gctx, `Goop.group.history('`+host.PeerID.String()+`', '`+id+`', 1)`)
	require.NoError(t, err)
	require.Len(t, hist, 1, "the SDK's history, newest first within the limit")
	assert.Equal(t, map[string]any{"text": "hello from the host"}, hist[0]["payload"])

	require.NoError(t, chromedp.Do(hctx, chromedp.Click(card+` .members button.danger`)))
	_, err = poll[bool](gctx, `document.querySelectorAll('`+joined+`').length === 0`)
	require.NoError(t, err, "the kicked guest's card goes away")
	_, err = poll[bool](hctx, `document.querySelectorAll('`+card+` .members li').length === 1`)
	require.NoError(t, err, "the host's card no longer lists the guest")
}

// TestGroupsPageInvitations: the host invites the guest from the group's
// card, picking it from the known peers; the guest, whose Groups page was
// not open when the invitation came, finds it there, joins with one click,
// and declines a second one.
func TestGroupsPageInvitations(t *testing.T) {
	b := twoBrowsers(t, "guest")
	guest, hostURL, guestURL, hctx, gctx := b.other, b.hostURL, b.otherURL, b.hctx, b.octx
	guestID := guest.PeerID.String()

	// The host's page offers the peers of its peer table to invite.
	require.NoError(t, chromedp.Do(hctx, chromedp.Navigate(hostURL+"/groups"), chromedp.WaitVisible("#create")))
	_, err := poll[bool](hctx, fmt.Sprintf(`fetch('/api/peers').then(r => r.json()).then(l => l.some(p => p.peer_id === %q))`, guestID))
	require.NoError(t, err, "the host's peer table knows the guest")
	create := func(name string) string {
		t.Helper()
		n, err := eval[int](hctx, `document.querySelectorAll('#hosted .group').length`)
		require.NoError(t, err)
		require.NoError(t, chromedp.Do(hctx,
			chromedp.SetValue(`#create input[name=name]`, name),
			chromedp.SetValue(`#create select[name=access]`, "invite-only"),
			chromedp.Click(`#create button`)))
		id, err := poll[string](hctx, fmt.Sprintf(`document.querySelectorAll('#hosted .group').length > %d &&
			document.querySelectorAll('#hosted .group')[%d].dataset.key.split('/')[1]`, n, n))
		require.NoError(t, err)
		return id
	}
	invite := func(id string) {
		t.Helper()
		card := fmt.Sprintf(`#hosted .group[data-key$=%q]`, "/"+id)
		require.NoError(t, chromedp.Do(hctx, chromedp.Navigate(hostURL+"/groups"), chromedp.WaitVisible(card)))
		label, err := poll[string](hctx, fmt.Sprintf(`(function () {
			var o = document.querySelector('#known-peers option[value=%q]'); return o && o.label })()`, guestID))
		require.NoError(t, err, "the guest is offered in the invite box")
		assert.Equal(t, "guest", label)
		require.NoError(t, chromedp.Do(hctx,
			chromedp.SetValue(card+` form.invite input[name=peer]`, guestID),
			chromedp.Click(card+` form.invite button`)))
		_, err = poll[bool](hctx, `document.querySelector('`+card+` .log').textContent.includes('invited guest')`)
		require.NoError(t, err)
	}
	club := create("secret club")
	invite(club)

	// The invitation reached the guest's node while no Groups page was open.
	require.NoError(t, chromedp.Do(gctx, chromedp.Navigate(guestURL+"/")))
	_, err = poll[bool](gctx, fmt.Sprintf(`fetch('/api/groups/invitations').then(r => r.json()).then(l => l.some(i => i.group_id === %q))`, club))
	require.NoError(t, err)
	_, err = poll[bool](gctx, `document.getElementById('invited').textContent === '1' &&
		document.getElementById('self').textContent.startsWith('guest · ')`)
	require.NoError(t, err, "the home page counts the invitation waiting")
	require.NoError(t, chromedp.Do(gctx, chromedp.Navigate(guestURL+"/groups"), chromedp.WaitVisible("#join")))
	_, err = poll[bool](gctx, `document.querySelector('#invites').innerText.includes('secret club (general) from host')`)
	require.NoError(t, err, "the guest's page lists the invitation, naming the host by its label")
	require.NoError(t, chromedp.Do(gctx, screenshot(t, "groups-page-invitation.png")))
	require.NoError(t, chromedp.Do(gctx, chromedp.Click(`#invites button:not(.danger)`)))
	_, err = poll[bool](gctx, fmt.Sprintf(`!!document.querySelector('#joined .group[data-key$=%q]') &&
		document.querySelector('#invites').innerText.trim() === 'none'`, "/"+club))
	require.NoError(t, err, "joined, and the invitation is gone")
	_, err = poll[bool](gctx, fmt.Sprintf(`document.querySelector('#joined .group[data-key$=%q] .meta').textContent.includes('host host')`, "/"+club))
	require.NoError(t, err, "the card names the host by its label")

	// A second invitation comes while the page is open; the guest declines it.
	spare := create("spare")
	invite(spare)
	_, err = poll[bool](gctx, `document.querySelector('#invites').innerText.includes('spare')`)
	require.NoError(t, err, "a new invitation shows up live")
	require.NoError(t, chromedp.Do(gctx, chromedp.Click(`#invites button.danger`)))
	_, err = poll[bool](gctx, `document.querySelector('#invites').innerText.trim() === 'none'`)
	require.NoError(t, err)
	list, err := eval[[]any](gctx, `Goop.group.invitations()`)
	require.NoError(t, err)
	assert.Empty(t, list, "declined on the node, not only on the page")

	// A third one goes away by itself when the host closes the group.
	gone := create("gone soon")
	invite(gone)
	_, err = poll[bool](gctx, `document.querySelector('#invites').innerText.includes('gone soon')`)
	require.NoError(t, err)
	card := fmt.Sprintf(`#hosted .group[data-key$=%q]`, "/"+gone)
	require.NoError(t, chromedp.Do(hctx, evalOK(`window.confirm = () => true`), chromedp.Click(card+` button.close`)))
	_, err = poll[bool](gctx, `document.querySelector('#invites').innerText.trim() === 'none'`)
	require.NoError(t, err, "the invitation to a closed group is withdrawn")
}
