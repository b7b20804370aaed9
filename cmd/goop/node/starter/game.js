// Tic-tac-toe over a Goop group hosted by this site's peer. The host plays X,
// the visitor O. Moves travel as group messages; the board is also sent as
// group state so that a player who reloads gets it back on joining.
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var me = null, host = null, game = null;
  var board = ['', '', '', '', '', '', '', '', ''], turn = 'X', over = false, moves = [];
  var LINES = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 4, 8], [2, 4, 6]];

  function myMark() { return me === host ? 'X' : 'O'; }
  function winner() {
    for (var i = 0; i < LINES.length; i++) {
      var l = LINES[i];
      if (board[l[0]] && board[l[0]] === board[l[1]] && board[l[1]] === board[l[2]]) return { mark: board[l[0]], line: l };
    }
    return board.every(function (c) { return c; }) ? { mark: '', line: [] } : null;
  }
  function render() {
    var b = $('board');
    b.textContent = '';
    var w = winner();
    over = !!w;
    board.forEach(function (c, i) {
      var cell = document.createElement('button');
      cell.className = 'cell' + (c ? ' ' + c.toLowerCase() : '') + (w && w.line.indexOf(i) >= 0 ? ' win' : '');
      cell.textContent = c;
      cell.dataset.i = String(i);
      cell.disabled = !!c || over || turn !== myMark();
      cell.onclick = function () { play(i); };
      b.appendChild(cell);
    });
    var s = $('status');
    if (w) s.textContent = w.mark ? (w.mark === myMark() ? 'You win!' : 'You lose.') : 'Draw.';
    else s.textContent = turn === myMark() ? 'Your turn (' + myMark() + ')' : 'Waiting for ' + turn + '…';
    var ol = $('moves');
    ol.textContent = '';
    moves.forEach(function (m) {
      var li = document.createElement('li');
      li.textContent = m.mark + ' → ' + (m.cell + 1);
      ol.appendChild(li);
    });
  }
  function apply(m) {
    if (typeof m.cell !== 'number' || m.cell < 0 || m.cell > 8 || board[m.cell] || m.mark !== turn || over) return;
    board[m.cell] = m.mark;
    moves.push({ mark: m.mark, cell: m.cell });
    turn = m.mark === 'X' ? 'O' : 'X';
    render();
  }
  function play(i) {
    var m = { cell: i, mark: myMark() };
    apply(m);
    Goop.group.send(m, game).then(function () {
      return Goop.group.state({ board: board, turn: turn, moves: moves }, game);
    }).catch(function (e) { $('status').textContent = 'Could not send: ' + e.message; });
  }
  function onEvent(ev) {
    if (ev.type === 'msg' && ev.payload) apply(ev.payload);
    if (ev.type === 'state' && ev.payload && Array.isArray(ev.payload.board) && ev.payload.moves.length > moves.length) {
      board = ev.payload.board; turn = ev.payload.turn; moves = ev.payload.moves; render();
    }
  }
  function enter(id, name) {
    game = id;
    $('lobby').hidden = true;
    $('game').hidden = false;
    $('title').textContent = name || 'Game';
    return Goop.group.join(id, onEvent).then(function (res) {
      var st = res && res.state;
      if (st && Array.isArray(st.board)) { board = st.board; turn = st.turn; moves = st.moves || []; }
      render();
    });
  }
  function lobby() {
    return Goop.data.query('_groups').then(function (rows) {
      var ul = $('games');
      ul.textContent = '';
      var games = rows.filter(function (g) { return g.group_context === 'tictactoe'; });
      if (!games.length) {
        var li = document.createElement('li');
        li.className = 'muted';
        li.textContent = me === host ? 'No game yet: start one.' : 'No open game here yet.';
        ul.appendChild(li);
      }
      games.forEach(function (g) {
        var li = document.createElement('li');
        li.appendChild(document.createTextNode(g.name + ' '));
        var b = document.createElement('button');
        b.textContent = 'Play';
        b.dataset.group = g.id;
        b.onclick = function () { enter(g.id, g.name).catch(showError); };
        li.appendChild(b);
        ul.appendChild(li);
      });
    });
  }
  function showError(e) { $('lobby-error').textContent = (e.code ? e.code + ': ' : '') + e.message; }

  $('new').onclick = function () {
    Goop.group.create({ name: 'Tic-tac-toe ' + new Date().toLocaleTimeString(), group_type: 'realtime',
      group_context: 'tictactoe', lifecycle: 'ephemeral', max_members: 2 })
      .then(function (g) { return enter(g.id, g.name); }).catch(showError);
  };
  $('leave').onclick = function () {
    Goop.group.leave(game).then(function () { location.reload(); });
  };

  Goop.self().then(function (s) {
    me = s.id;
    host = Goop.peer() || me;
    $('new').hidden = me !== host;
    return lobby();
  }).catch(showError);
  setInterval(function () { if (!game) lobby().catch(function () {}); }, 3000);
})();
