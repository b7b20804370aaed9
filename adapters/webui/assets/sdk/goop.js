/* Goop browser SDK — served by every Goop node at /sdk/goop.js.
 *
 *   Goop.group.join(hostPeerId, groupId)      join a group hosted by a peer
 *   Goop.group.join(groupId, onMessage)       the seed's form: a group of this page's peer,
 *                                             onMessage({type, group, from, payload}) per message
 *   Goop.group.send(payload[, groupId])       send to a group (the last joined by default)
 *   Goop.group.state(payload[, groupId])      send shared state (handed to later joiners)
 *   Goop.group.leave([groupId])               leave
 *   Goop.group.create({name, group_type, lifecycle, access, max_members, id})
 *   Goop.group.subscribe(fn) -> unsubscribe   every group event {type, group, host, from, payload, members, error}
 *   Goop.group.subscriptions()                groups this node has joined
 *   Goop.group.history([groupId][, limit])    newest messages of a group, oldest first: [{from, type, payload, at}]
 *   Goop.group.history(hostPeerId, groupId[, limit])   (asked of the host; a group this node hosts: its store)
 *   Goop.group.invitations()                  invitations received, neither joined nor declined
 *                                             (newest first; joining one accepts it)
 *   Goop.group.decline(hostPeerId, groupId)   forget an invitation (the host is not told)
 *   Goop.data.query(table[, params])          rows of a table of this page's peer ("_groups")
 *   Goop.self()                               {id, label, addrs} of the local node
 */
(function (global) {
  'use strict';

  var m = global.location.pathname.match(/^\/p\/([^/]+)\//);
  var pagePeer = m ? decodeURIComponent(m[1]) : null;
  var selfInfo = null;
  var joined = {};        // groupId -> hostPeerId
  var current = null;     // last joined {host, id}
  var listeners = [];
  var source = null;
  var EVENT_TYPES = ['joined', 'join_failed', 'members', 'msg', 'state', 'meta', 'left', 'close',
    'member_joined', 'member_left', 'dissolved', 'invite', 'declined', 'created'];

  function api(method, path, body) {
    var opts = { method: method, headers: { 'Accept': 'application/json' }, credentials: 'same-origin' };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    return fetch(path, opts).then(function (res) {
      return res.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = { error: text }; }
        if (!res.ok) {
          var err = new Error((data && data.error) || res.statusText);
          err.status = res.status;
          err.code = data && data.code;
          throw err;
        }
        return data;
      });
    });
  }

  function self() {
    if (selfInfo) return Promise.resolve(selfInfo);
    return api('GET', '/api/self').then(function (s) { selfInfo = s; return s; });
  }

  function pageHost() {
    if (pagePeer) return Promise.resolve(pagePeer);
    return self().then(function (s) { return s.id; });
  }

  function ensureEvents() {
    if (source) return;
    source = new EventSource('/api/groups/events');
    EVENT_TYPES.forEach(function (t) {
      source.addEventListener(t, function (e) {
        var ev;
        try { ev = JSON.parse(e.data); } catch (err) { return; }
        listeners.slice().forEach(function (fn) {
          try { fn(ev); } catch (err) { console.error('Goop.group listener', err); }
        });
      });
    });
  }

  function subscribe(fn) {
    ensureEvents();
    listeners.push(fn);
    return function () {
      listeners = listeners.filter(function (x) { return x !== fn; });
    };
  }

  function resolveGroup(groupId) {
    if (groupId) return { id: groupId, host: joined[groupId] };
    if (!current) throw new Error('Goop.group: no group joined yet');
    return current;
  }

  function join(a, b) {
    var hostP, groupId, onMessage = null;
    if (typeof b === 'function' || b === undefined) {
      groupId = a;
      onMessage = b || null;
      hostP = pageHost();
    } else {
      hostP = Promise.resolve(a);
      groupId = b;
    }
    if (onMessage) {
      // Listen before joining so that nothing sent right after the welcome is missed.
      subscribe(function (ev) {
        if (ev.group === groupId && (ev.type === 'msg' || ev.type === 'state')) onMessage(ev);
      });
    }
    return hostP.then(function (host) {
      return api('POST', '/api/groups/join', { host_peer_id: host, group_id: groupId }).then(function (res) {
        joined[groupId] = host;
        current = { host: host, id: groupId };
        return res;
      });
    });
  }

  function sendKind(kind, payload, groupId) {
    var g = resolveGroup(groupId);
    var hostP = g.host ? Promise.resolve(g.host) : pageHost();
    return hostP.then(function (host) {
      return api('POST', '/api/groups/send', { host_peer_id: host, group_id: g.id, kind: kind, payload: payload });
    });
  }

  function leave(groupId) {
    var g = resolveGroup(groupId);
    var hostP = g.host ? Promise.resolve(g.host) : pageHost();
    return hostP.then(function (host) {
      return api('POST', '/api/groups/leave', { host_peer_id: host, group_id: g.id }).then(function (res) {
        delete joined[g.id];
        if (current && current.id === g.id) current = null;
        return res;
      });
    });
  }

  function history(a, b, c) {
    var g, limit, hostP;
    if (typeof b === 'string') {
      g = { id: b };
      hostP = Promise.resolve(a);
      limit = c;
    } else {
      g = resolveGroup(a);
      hostP = g.host ? Promise.resolve(g.host) : pageHost();
      limit = b;
    }
    return hostP.then(function (host) {
      return self().then(function (s) {
        var q = '/api/groups/history?group_id=' + encodeURIComponent(g.id) + (limit ? '&limit=' + limit : '') +
          (host === s.id ? '' : '&host_peer_id=' + encodeURIComponent(host));
        return api('GET', q);
      });
    });
  }

  function query(table, params) {
    var body = { op: 'query', table: table };
    if (params) Object.keys(params).forEach(function (k) { body[k] = params[k]; });
    return self().then(function (s) {
      var path = (pagePeer && pagePeer !== s.id) ? '/api/p/' + encodeURIComponent(pagePeer) + '/data/query' : '/api/data/query';
      return api('POST', path, body);
    }).then(function (res) { return (res && res.data) || []; });
  }

  global.Goop = {
    self: self,
    peer: function () { return pagePeer; },
    api: api,
    group: {
      join: join,
      send: function (payload, groupId) { return sendKind('msg', payload, groupId); },
      state: function (payload, groupId) { return sendKind('state', payload, groupId); },
      leave: leave,
      create: function (opts) { return api('POST', '/api/groups', opts || {}); },
      subscribe: subscribe,
      history: history,
      subscriptions: function () { return api('GET', '/api/groups/subscriptions'); },
      invitations: function () { return api('GET', '/api/groups/invitations'); },
      decline: function (host, groupId) {
        return api('POST', '/api/groups/invitations/decline', { host_peer_id: host, group_id: groupId });
      }
    },
    data: { query: query }
  };
})(window);
