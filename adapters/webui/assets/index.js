// The viewer's home page: who this peer is, and a live feed of group activity.
(function () {
  'use strict';
  function $(id) { return document.getElementById(id); }
  function counts() {
    Promise.all([Goop.api('GET', '/api/groups'), Goop.group.subscriptions(), Goop.group.invitations()]).then(function (r) {
      $('hosted').textContent = String((r[0] || []).length);
      $('joined').textContent = String((r[1] || []).length);
      $('invited').textContent = String((r[2] || []).length);
    }).catch(function () {});
  }
  Goop.self().then(function (s) {
    $('label').textContent = s.label || '';
    $('pid').textContent = s.id;
    $('self').textContent = (s.label ? s.label + ' · ' : '') + s.id;
    var ul = $('addrs');
    (s.addrs || []).forEach(function (a) {
      var li = document.createElement('li');
      li.textContent = a;
      ul.appendChild(li);
    });
  });
  counts();
  Goop.group.subscribe(function (ev) {
    var line = document.createElement('div');
    var who = ev.from ? ev.from.slice(-6) : '';
    line.textContent = new Date().toLocaleTimeString() + ' ' + ev.type + ' in ' + ev.group + (who ? ' from …' + who : '');
    var box = $('activity');
    var quiet = $('quiet');
    if (quiet) quiet.remove();
    box.appendChild(line);
    while (box.children.length > 100) box.removeChild(box.firstChild);
    box.scrollTop = box.scrollHeight;
    if (ev.type !== 'msg' && ev.type !== 'state') counts();
  });
})();
