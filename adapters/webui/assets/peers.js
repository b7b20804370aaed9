// The Peers page: the peer table, kept live from /api/peers/events.
(function () {
  'use strict';
  var peers = {}; // peer id -> row (PeerJSON)
  var EVENTS = ['peer_online', 'peer_updated', 'peer_offline', 'peer_removed'];

  function $(sel) { return document.querySelector(sel); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function short(id) { return id && id.length > 16 ? id.slice(0, 8) + '…' + id.slice(-6) : (id || ''); }
  function ago(ms) {
    if (!ms) return 'never';
    var s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return new Date(ms).toLocaleString();
  }
  function showError(err) { $('#error').textContent = err ? (err.message || String(err)) : ''; }

  function render() {
    var tbody = $('#peers tbody');
    tbody.textContent = '';
    var list = Object.keys(peers).map(function (k) { return peers[k]; });
    list.sort(function (a, b) {
      if (a.online !== b.online) return a.online ? -1 : 1;
      var la = (a.label || a.peer_id).toLowerCase(), lb = (b.label || b.peer_id).toLowerCase();
      return la < lb ? -1 : la > lb ? 1 : 0;
    });
    var online = list.filter(function (p) { return p.online; }).length;
    $('#counts').textContent = list.length ? '· ' + online + ' online of ' + list.length : '';
    if (!list.length) {
      var tr = el('tr');
      var td = el('td', 'muted', 'no peers yet');
      td.colSpan = 6;
      tr.appendChild(td);
      tbody.appendChild(tr);
      return;
    }
    list.forEach(function (p) {
      var tr = el('tr');
      tr.dataset.peer = p.peer_id;
      var who = el('td');
      who.appendChild(el('div', '', p.label || '(no label)'));
      var pid = el('div', 'pid', short(p.peer_id));
      pid.title = p.peer_id;
      who.appendChild(pid);
      tr.appendChild(who);
      var st = el('td');
      st.appendChild(el('span', 'badge ' + (p.online ? 'online' : 'offline'), p.online ? 'online' : 'offline'));
      if (p.verified) st.appendChild(el('span', 'badge', 'verified'));
      tr.appendChild(st);
      tr.appendChild(el('td', '', p.source || ''));
      var seen = el('td', 'seen', ago(p.last_seen));
      seen.dataset.ms = String(p.last_seen || 0);
      tr.appendChild(seen);
      var addrs = el('td', 'pid');
      (p.addrs || []).slice(0, 3).forEach(function (a) { addrs.appendChild(el('div', '', a)); });
      if ((p.addrs || []).length > 3) addrs.appendChild(el('div', 'muted', '+' + (p.addrs.length - 3) + ' more'));
      tr.appendChild(addrs);
      var act = el('td');
      var visit = el('a', '', 'Visit');
      visit.href = '/p/' + encodeURIComponent(p.peer_id) + '/';
      act.appendChild(visit);
      tr.appendChild(act);
      tbody.appendChild(tr);
    });
  }

  function load() {
    return Goop.api('GET', '/api/peers').then(function (list) {
      peers = {};
      (list || []).forEach(function (p) { peers[p.peer_id] = p; });
      showError(null);
      render();
    }, showError);
  }

  function follow() {
    var source = new EventSource('/api/peers/events');
    EVENTS.forEach(function (t) {
      source.addEventListener(t, function (e) {
        var ev;
        try { ev = JSON.parse(e.data); } catch (err) { return; }
        if (!ev.peer || !ev.peer.peer_id) return;
        if (ev.type === 'peer_removed') delete peers[ev.peer.peer_id];
        else peers[ev.peer.peer_id] = ev.peer;
        render();
      });
    });
    // After a reconnect, events may have been missed: reload the table.
    source.addEventListener('connected', function () { load(); });
  }

  // Keep "last seen" fresh without re-rendering.
  setInterval(function () {
    document.querySelectorAll('#peers td.seen').forEach(function (td) { td.textContent = ago(parseInt(td.dataset.ms, 10)); });
  }, 5000);

  Goop.self().then(function (s) {
    $('#self').textContent = (s.label ? s.label + ' · ' : '') + s.id;
  });
  follow();
})();
