// The Groups page: create, join, invite, kick, close, chat — live from the event stream.
(function () {
  'use strict';
  var selfId = '';
  var logs = {};      // "host/group" -> [{from, text, sys}]
  var names = {};     // peer id -> display name, learned from member lists
  var invites = [];
  var historyAsked = {}; // "host/group" -> true once the host's history was asked for
  var historyLimit = 100;

  function $(sel, root) { return (root || document).querySelector(sel); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function short(id) { return id && id.length > 16 ? id.slice(0, 8) + '…' + id.slice(-6) : (id || ''); }
  function who(id) { return id === selfId ? 'me' : (names[id] || short(id)); }
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
  // loadHistory fills a hosted group's log, once per page, with the newest
  // messages the node kept for it (the host keeps the history of its
  // groups; members keep none). Entries that arrived live meanwhile stay
  // after it, except messages the history already holds.
  function loadHistory(id) {
    var k = key(selfId, id);
    if (historyAsked[k]) return;
    historyAsked[k] = true;
    Goop.api('GET', '/api/groups/history?group_id=' + encodeURIComponent(id) + '&limit=' + historyLimit).then(function (hist) {
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
    }, function (e) { console.error('group history', e); });
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
    var meta = 'id ' + g.id + (hosted ? '' : ' · host ' + short(host)) +
      (g.max_members ? ' · max ' + g.max_members : '') + (g.role ? ' · my role ' + g.role : '');
    $('.meta', node).textContent = meta;
    var ul = $('.members', node);
    (g.members || []).forEach(function (m) {
      names[m.peer_id] = m.name || names[m.peer_id];
      var li = el('li');
      var label = el('span', '', (m.name || short(m.peer_id)) + (m.peer_id === selfId ? ' (me)' : ''));
      label.title = m.peer_id;
      li.appendChild(label);
      li.appendChild(el('span', 'badge', m.role));
      if (hosted && m.peer_id !== selfId) {
        var kick = el('button', 'small danger', 'kick');
        kick.onclick = function () {
          Goop.api('POST', '/api/groups/kick', { group_id: g.id, peer_id: m.peer_id }).then(refresh, function (e) { showError($('.error', node), e); });
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
    if (hosted) loadHistory(g.id);
    var err = $('.error', node);
    var inv = $('form.invite', node);
    if (inv) inv.onsubmit = function (e) {
      e.preventDefault();
      Goop.api('POST', '/api/groups/invite', { group_id: g.id, peer_id: inv.peer.value.trim() }).then(function () {
        log(host, g.id, { sys: true, text: 'invited ' + short(inv.peer.value.trim()) });
        inv.reset(); showError(err, null);
      }, function (e) { showError(err, e); });
    };
    var say = $('form.say', node);
    say.onsubmit = function (e) {
      e.preventDefault();
      var t = say.text.value;
      Goop.api('POST', '/api/groups/send', { host_peer_id: host, group_id: g.id, payload: { text: t } }).then(function () {
        log(host, g.id, { from: selfId, text: t });
        say.reset(); showError(err, null);
      }, function (e) { showError(err, e); });
    };
    var close = $('button.close', node);
    if (close) close.onclick = function () {
      if (!confirm('Close "' + (g.name || g.id) + '" for everyone?')) return;
      Goop.api('POST', '/api/groups/close', { group_id: g.id }).then(refresh, function (e) { showError(err, e); });
    };
    var leave = $('button.leave', node);
    if (leave) leave.onclick = function () {
      Goop.api('POST', '/api/groups/leave', { host_peer_id: host, group_id: g.id }).then(refresh, function (e) { showError(err, e); });
    };
    return node;
  }

  function render(box, list, hosted) {
    box.textContent = '';
    if (!list.length) { box.appendChild(el('p', 'muted', 'none yet')); return; }
    list.forEach(function (g) { box.appendChild(card(g, hosted)); });
  }

  function renderInvites() {
    var ul = $('#invites');
    ul.textContent = '';
    if (!invites.length) { ul.appendChild(el('li', 'muted', 'none')); return; }
    invites.forEach(function (inv, i) {
      var li = el('li');
      li.appendChild(el('span', '', (inv.group_name || inv.group_id) + ' from ' + short(inv.host_peer_id) + ' '));
      var b = el('button', 'small', 'join');
      b.onclick = function (e) {
        e.preventDefault();
        Goop.group.join(inv.host_peer_id, inv.group_id).then(function () { invites.splice(i, 1); renderInvites(); refresh(); },
          function (err) { showError($('#join-error'), err); });
      };
      li.appendChild(b);
      ul.appendChild(li);
    });
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
      access: f.access.value, max_members: parseInt(f.max_members.value || '0', 10), host_join: f.host_join.checked
    }).then(function () { f.name.value = ''; showError($('#create-error'), null); refresh(); },
      function (err) { showError($('#create-error'), err); });
  };
  $('#join').onsubmit = function (e) {
    e.preventDefault();
    var f = e.target;
    Goop.group.join(f.host_peer_id.value.trim(), f.group_id.value.trim()).then(function () {
      f.reset(); showError($('#join-error'), null); refresh();
    }, function (err) { showError($('#join-error'), err); });
  };

  Goop.self().then(function (s) {
    selfId = s.id;
    $('#self').textContent = (s.label ? s.label + ' · ' : '') + s.id;
    Goop.group.subscribe(function (ev) {
      switch (ev.type) {
        case 'msg': case 'state':
          log(ev.host, ev.group, { from: ev.from, text: (ev.type === 'state' ? '[state] ' : '') + text(ev.payload) });
          break;
        case 'invite':
          invites.push(ev.payload); renderInvites();
          break;
        case 'member_joined':
          log(ev.host, ev.group, { sys: true, text: who(ev.from) + ' joined' }); refresh();
          break;
        case 'member_left':
          log(ev.host, ev.group, { sys: true, text: who(ev.from) + ' left (' + (ev.reason || 'left') + ')' }); refresh();
          break;
        case 'close': case 'dissolved':
          log(ev.host, ev.group, { sys: true, text: 'group ' + ev.type + (ev.error ? ': ' + ev.error.message : '') }); refresh();
          break;
        default:
          refresh();
      }
    });
    refresh();
  });
})();
