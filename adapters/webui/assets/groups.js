// The Groups page: create, join, invite, kick, close, chat — live from the event stream.
(function () {
  'use strict';
  var selfId = '';
  var logs = {};      // "host/group" -> [{from, text, sys}]
  var names = {};     // peer id -> display name, learned from member lists
  var labels = {};    // peer id -> label, from the peer table
  var invites = [];   // invitations received, neither joined nor declined (from the node)
  var historyAsked = {}; // "host/group" -> when it may be asked again (Infinity once loaded)
  var historyLimit = 100;

  function $(sel, root) { return (root || document).querySelector(sel); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function short(id) { return id && id.length > 16 ? id.slice(0, 8) + '…' + id.slice(-6) : (id || ''); }
  function who(id) { return id === selfId ? 'me' : (names[id] || labels[id] || short(id)); }
  function key(host, id) { return host + '/' + id; }
  function text(payload) {
    if (payload && typeof payload === 'object' && typeof payload.text === 'string') return payload.text;
    return JSON.stringify(payload);
  }
  function log(host, id, entry) {
    var k = key(host, id);
    (logs[k] = logs[k] || []).push(entry);
    if (logs[k].length > 200) logs[k].shift();
    var box = document.querySelector('[data-key="' + CSS.escape(k) + '"] .log');
    if (box) renderLog(box, logs[k]);
  }
  function renderLog(box, entries) {
    box.textContent = '';
    (entries || []).forEach(function (e) {
      var line = el('div', e.sys ? 'sys' : '');
      if (!e.sys) line.appendChild(el('span', 'from', who(e.from) + ':'));
      line.appendChild(document.createTextNode(e.text));
      box.appendChild(line);
    });
    box.scrollTop = box.scrollHeight;
  }
  // loadHistory fills a group's log, once per page, with its newest
  // messages: from this node's store for a group it hosts, from the host
  // for a group it joined. Entries that arrived live meanwhile stay after
  // them, except messages the history already holds.
  function loadHistory(host, id) {
    var k = key(host, id);
    if (historyAsked[k] && Date.now() < historyAsked[k]) return;
    historyAsked[k] = Infinity;
    var q = '/api/groups/history?group_id=' + encodeURIComponent(id) + '&limit=' + historyLimit +
      (host === selfId ? '' : '&host_peer_id=' + encodeURIComponent(host));
    Goop.api('GET', q).then(function (hist) {
      var entries = (hist || []).map(function (h) {
        return { from: h.from, text: (h.type === 'state' ? '[state] ' : '') + text(h.payload) };
      });
      var tail = entries.slice(-50);
      (logs[k] || []).forEach(function (e) {
        if (!e.sys) {
          var i = tail.findIndex(function (h) { return h && h.from === e.from && h.text === e.text; });
          if (i >= 0) { tail[i] = null; return; }
        }
        entries.push(e);
      });
      logs[k] = entries.slice(-200);
      var box = document.querySelector('[data-key="' + CSS.escape(k) + '"] .log');
      if (box) renderLog(box, logs[k]);
    }, function (e) {
      // A Goop2 host keeps no history for members: never ask it again.
      if (e && e.code === 'unsupported') return;
      // e.g. the host is away: try again at a redraw a minute from now at
      // the earliest.
      historyAsked[k] = Date.now() + 60000;
      console.error('group history', e);
    });
  }
  function showError(p, err) { p.textContent = err ? (err.code ? err.code + ': ' : '') + err.message : ''; }

  function card(g, hosted) {
    var host = hosted ? selfId : g.host_peer_id;
    var node = $('#group-card').content.firstElementChild.cloneNode(true);
    node.dataset.key = key(host, g.id);
    $('.name', node).textContent = g.name || g.group_name || g.id;
    var badges = $('.badges', node);
    [g.group_type, g.lifecycle, g.access, g.volatile ? 'volatile' : ''].forEach(function (b) {
      if (b) badges.appendChild(el('span', 'badge', b));
    });
    var meta = 'id ' + g.id + (hosted ? '' : ' · host ' + who(host)) +
      (g.max_members ? ' · max ' + g.max_members : '') + (g.role ? ' · my role ' + g.role : '');
    $('.meta', node).textContent = meta;
    var ul = $('.members', node);
    (g.members || []).forEach(function (m) {
      names[m.peer_id] = m.name || names[m.peer_id];
      var li = el('li');
      var label = el('span', '', (m.name || short(m.peer_id)) + (m.peer_id === selfId ? ' (me)' : ''));
      label.title = m.peer_id;
      li.appendChild(label);
      if (hosted && m.peer_id !== selfId && m.role !== 'owner') {
        // The host gives members a role: the default one or a custom one.
        var sel = el('select', 'role');
        sel.setAttribute('aria-label', 'role of ' + (m.name || m.peer_id));
        [g.default_role].concat(g.roles || [], [m.role]).forEach(function (r) {
          if (!r || Array.prototype.some.call(sel.options, function (o) { return o.value === r; })) return;
          var o = el('option', '', r);
          o.value = r;
          sel.appendChild(o);
        });
        sel.value = m.role;
        sel.onchange = function () {
          Goop.api('POST', '/api/groups/set-role', { group_id: g.id, peer_id: m.peer_id, role: sel.value }).then(function () {
            log(host, g.id, { sys: true, text: who(m.peer_id) + ' is now ' + sel.value });
            refresh();
          }, function (e) { fail(e); refresh(); });
        };
        li.appendChild(sel);
      } else {
        li.appendChild(el('span', 'badge', m.role));
      }
      if (hosted && m.peer_id !== selfId) {
        var kick = el('button', 'small danger', 'kick');
        kick.onclick = function () {
          Goop.api('POST', '/api/groups/kick', { group_id: g.id, peer_id: m.peer_id }).then(refresh, function (e) { showError(live('.error'), e); });
        };
        li.appendChild(kick);
      }
      ul.appendChild(li);
    });
    if (!ul.children.length) ul.appendChild(el('li', 'muted', 'no members'));
    if (!hosted) node.querySelectorAll('.hosted-only').forEach(function (x) { x.remove(); });
    var amMember = !hosted || (g.members || []).some(function (m) { return m.peer_id === selfId; });
    if (!amMember) $('.leave', node).remove();
    renderLog($('.log', node), logs[node.dataset.key]);
    if (hosted || g.joined) loadHistory(host, g.id);
    // The card may be rebuilt while a request runs: answers go to the
    // card on the page now.
    var k = node.dataset.key;
    function live(sel) { return document.querySelector('[data-key="' + CSS.escape(k) + '"] ' + sel) || $(sel, node); }
    function fail(e) { showError(live('.error'), e); }
    // clearBox empties a box once its text went out, unless the user typed on.
    function clearBox(sel, sent) {
      var b = live(sel);
      if (b && b.value.trim() === sent.trim()) b.value = '';
      showError(live('.error'), null);
    }
    var inv = $('form.invite', node);
    if (inv) inv.onsubmit = function (e) {
      e.preventDefault();
      var p = inv.peer.value.trim();
      Goop.api('POST', '/api/groups/invite', { group_id: g.id, peer_id: p }).then(function () {
        log(host, g.id, { sys: true, text: 'invited ' + who(p) });
        clearBox('form.invite input[name=peer]', p);
      }, fail);
    };
    var say = $('form.say', node);
    say.onsubmit = function (e) {
      e.preventDefault();
      var t = say.text.value;
      Goop.api('POST', '/api/groups/send', { host_peer_id: host, group_id: g.id, payload: { text: t } }).then(function () {
        log(host, g.id, { from: selfId, text: t });
        clearBox('form.say input[name=text]', t);
      }, fail);
    };
    var close = $('button.close', node);
    if (close) close.onclick = function () {
      if (!confirm('Close "' + (g.name || g.id) + '" for everyone?')) return;
      Goop.api('POST', '/api/groups/close', { group_id: g.id }).then(refresh, fail);
    };
    var leave = $('button.leave', node);
    if (leave) leave.onclick = function () {
      Goop.api('POST', '/api/groups/leave', { host_peer_id: host, group_id: g.id }).then(refresh, fail);
    };
    return node;
  }

  // render rebuilds the cards; what the user was typing in a card's boxes,
  // and which box had the focus, survive it.
  function render(box, list, hosted) {
    var typed = {}, focus = null;
    box.querySelectorAll('.group').forEach(function (c) {
      c.querySelectorAll('input').forEach(function (i) {
        if (i.value) typed[c.dataset.key + ' ' + i.name] = i.value;
        if (i === document.activeElement) focus = { key: c.dataset.key, name: i.name, start: i.selectionStart, end: i.selectionEnd };
      });
    });
    box.textContent = '';
    if (!list.length) { box.appendChild(el('p', 'muted', 'none yet')); return; }
    list.forEach(function (g) {
      var c = card(g, hosted);
      box.appendChild(c);
      c.querySelectorAll('input').forEach(function (i) {
        var v = typed[c.dataset.key + ' ' + i.name];
        if (v !== undefined) i.value = v;
        if (focus && focus.key === c.dataset.key && focus.name === i.name) {
          i.focus();
          try { i.setSelectionRange(focus.start, focus.end); } catch (e) { /* not a text box */ }
        }
      });
    });
  }
  // renderLogs redraws the open cards' logs (names may have changed).
  function renderLogs() {
    document.querySelectorAll('.group').forEach(function (c) { renderLog($('.log', c), logs[c.dataset.key]); });
  }

  function renderInvites() {
    var ul = $('#invites');
    ul.textContent = '';
    if (!invites.length) { ul.appendChild(el('li', 'muted', 'none')); return; }
    invites.forEach(function (inv) {
      var li = el('li');
      var what = (inv.group_name || inv.group_id) + (inv.group_type ? ' (' + inv.group_type + ')' : '') +
        ' from ' + who(inv.host_peer_id) + ' ';
      var label = el('span', '', what);
      label.title = 'group ' + inv.group_id + ' · host ' + inv.host_peer_id +
        (inv.received_at ? ' · ' + new Date(inv.received_at).toLocaleString() : '');
      li.appendChild(label);
      var b = el('button', 'small', 'join');
      b.onclick = function (e) {
        e.preventDefault();
        Goop.group.join(inv.host_peer_id, inv.group_id).then(function () { showError($('#join-error'), null); loadInvites(); refresh(); },
          function (err) { showError($('#join-error'), err); loadInvites(); });
      };
      li.appendChild(b);
      var d = el('button', 'small danger', 'decline');
      d.onclick = function (e) {
        e.preventDefault();
        Goop.group.decline(inv.host_peer_id, inv.group_id).then(loadInvites, function (err) { showError($('#join-error'), err); });
      };
      li.appendChild(d);
      ul.appendChild(li);
    });
  }
  // loadInvites shows the invitations the node keeps: those that came while
  // no page was open too.
  function loadInvites() {
    return Goop.group.invitations().then(function (list) { invites = list || []; renderInvites(); },
      function (e) { console.error('invitations', e); });
  }
  // loadPeers offers the peer table's peers to the invite boxes, and their
  // labels for senders no member list names.
  function loadPeers() {
    return Goop.api('GET', '/api/peers').then(function (list) {
      var dl = $('#known-peers');
      dl.textContent = '';
      (list || []).forEach(function (p) {
        if (p.label) labels[p.peer_id] = p.label;
        var o = el('option');
        o.value = p.peer_id;
        o.label = (p.label || short(p.peer_id)) + (p.online ? '' : ' (offline)');
        dl.appendChild(o);
      });
    }, function (e) { console.error('peers', e); });
  }

  var pending = null;
  function refresh() {
    if (pending) return pending;
    pending = Promise.all([Goop.api('GET', '/api/groups'), Goop.group.subscriptions()]).then(function (r) {
      render($('#hosted'), r[0] || [], true);
      render($('#joined'), r[1] || [], false);
    }).catch(function (e) { console.error(e); }).then(function () { pending = null; });
    return pending;
  }

  $('#create').onsubmit = function (e) {
    e.preventDefault();
    var f = e.target;
    Goop.group.create({
      name: f.name.value, group_type: f.group_type.value, lifecycle: f.lifecycle.value,
      access: f.access.value, max_members: parseInt(f.max_members.value || '0', 10), host_join: f.host_join.checked,
      roles: f.roles.value.split(',').map(function (r) { return r.trim(); }).filter(Boolean)
    }).then(function () { f.name.value = ''; f.roles.value = ''; showError($('#create-error'), null); refresh(); },
      function (err) { showError($('#create-error'), err); });
  };
  $('#join').onsubmit = function (e) {
    e.preventDefault();
    var f = e.target;
    Goop.group.join(f.host_peer_id.value.trim(), f.group_id.value.trim()).then(function () {
      f.reset(); showError($('#join-error'), null); refresh(); loadInvites();
    }, function (err) { showError($('#join-error'), err); loadInvites(); });
  };

  Goop.self().then(function (s) {
    selfId = s.id;
    $('#self').textContent = (s.label ? s.label + ' · ' : '') + s.id;
    Goop.group.subscribe(function (ev) {
      switch (ev.type) {
        case 'msg': case 'state':
          log(ev.host, ev.group, { from: ev.from, text: (ev.type === 'state' ? '[state] ' : '') + text(ev.payload) });
          break;
        case 'invite': case 'declined':
          loadInvites();
          break;
        case 'member_joined':
          log(ev.host, ev.group, { sys: true, text: who(ev.from) + ' joined' }); refresh();
          break;
        case 'member_left':
          log(ev.host, ev.group, { sys: true, text: who(ev.from) + ' left (' + (ev.reason || 'left') + ')' }); refresh();
          break;
        case 'close': case 'dissolved':
          log(ev.host, ev.group, { sys: true, text: 'group ' + ev.type + (ev.error ? ': ' + ev.error.message : '') }); refresh();
          if (invites.some(function (i) { return i.group_id === ev.group && i.host_peer_id === ev.host; })) loadInvites();
          break;
        default:
          refresh();
      }
    });
    refresh();
    loadInvites();
    loadPeers().then(function () { renderInvites(); renderLogs(); });
  });
})();
