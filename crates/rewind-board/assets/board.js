// rewind's board: applies server-sent events to pages the server rendered complete.
// Run page: /api/v1/runs/{id}/stream (`progress`, `targets`, `end`). Runs list: /api/v1/stream
// (`runs`). No framework, no build step; without JavaScript the pages show the same data as of
// their loading.
(function () {
  'use strict';

  var STATES = ['succeeded', 'running', 'pending', 'failed', 'blocked', 'skipped', 'cancelled'];
  var TARGET_STATES = ['succeeded', 'running', 'pending', 'failed', 'blocked', 'cancelled'];

  // The same as the server's `secs`: 4.2s, 42s, 3m 05s, 2h 04m, 1d 3h.
  function secs(s) {
    if (typeof s !== 'number' || !isFinite(s) || s < 0) return '\u2014';
    if (s < 60) return s < 10 ? s.toFixed(1) + 's' : Math.round(s) + 's';
    var t = Math.round(s), d = Math.floor(t / 86400), h = Math.floor(t / 3600) % 24,
      m = Math.floor(t / 60) % 60, sec = t % 60;
    var two = function (n) { return (n < 10 ? '0' : '') + n; };
    if (d > 0) return d + 'd ' + h + 'h';
    if (h > 0) return h + 'h ' + two(m) + 'm';
    return m + 'm ' + two(sec) + 's';
  }

  function percent(p) { return (Math.round(p * 10) / 10).toFixed(1) + '%'; }

  function setText(id, text) {
    var e = document.getElementById(id);
    if (e && e.textContent !== String(text)) e.textContent = text;
  }

  function liveBadge(on) {
    var e = document.getElementById('live');
    if (!e) return;
    e.hidden = false;
    e.textContent = on ? 'live' : 'disconnected, retrying';
    e.className = on ? 'live' : 'live off';
  }

  // The curve, with the geometry of the server's chart.rs (W 960, H 220, margins 44/12/10/24).
  var W = 960, H = 220, L = 44, R = 12, T = 10, B = 24;
  function drawCurve(svg, times, total, clock) {
    times.sort(function (a, b) { return a - b; });
    var xmax = Math.max(times.length ? times[times.length - 1] : 0, clock, 1e-9);
    var pw = W - L - R, ph = H - T - B;
    var x = function (t) { return (L + pw * t / xmax).toFixed(1); };
    var y = function (n) { return (T + ph * (1 - (total ? n / total : 1))).toFixed(1); };
    var pts = [x(0) + ',' + y(0)];
    for (var i = 0; i < times.length;) {
      var j = i;
      while (j < times.length && times[j] === times[i]) j++;
      pts.push(x(times[i]) + ',' + y(i), x(times[i]) + ',' + y(j));
      i = j;
    }
    pts.push(x(xmax) + ',' + y(times.length));
    var line = pts.join(' ');
    svg.querySelector('polyline.curve').setAttribute('points', line);
    svg.querySelector('polygon.area').setAttribute('points', line + ' ' + x(xmax) + ',' + y(0));
    var labels = svg.querySelectorAll('text.xlab');
    for (var k = 0; k < labels.length; k++) labels[k].textContent = secs(xmax * k / (labels.length - 1));
  }

  // Replaces the sections the stream does not carry (steps, failures, waves) with the server's
  // current rendering of them: no reload, no scroll jump.
  function refreshSections() {
    return fetch(location.pathname, { headers: { Accept: 'text/html' } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, 'text/html');
        ['steps', 'failures', 'waves'].forEach(function (id) {
          var fresh = doc.getElementById(id), old = document.getElementById(id);
          if (fresh && old) old.replaceWith(fresh);
          else if (fresh && !old) document.getElementById('steps').after(fresh);
        });
      })
      .catch(function () { /* the next refresh tries again */ });
  }

  function runPage(run) {
    var svg = document.getElementById('chart');
    var grid = document.getElementById('grid');
    if (!svg || !grid) return;
    var cells = new Map();
    for (var i = 0; i < grid.children.length; i++) {
      var a = grid.children[i];
      cells.set(a.getAttribute('href').split('/').pop(), a);
    }
    var clock = parseFloat(svg.getAttribute('data-clock')) || 0;
    var total = parseInt(svg.getAttribute('data-total'), 10) || cells.size;
    var pending = false;

    function redraw() {
      if (pending) return;
      pending = true;
      requestAnimationFrame(function () {
        pending = false;
        var times = [], n = {};
        cells.forEach(function (c) {
          var at = c.getAttribute('data-at');
          if (at !== null) times.push(parseFloat(at));
          var s = c.className.slice(2);
          n[s] = (n[s] || 0) + 1;
        });
        TARGET_STATES.forEach(function (s) { setText('t-' + s, n[s] || 0); });
        drawCurve(svg, times, total, clock);
      });
    }

    if (document.body.getAttribute('data-follow') !== '1' || !window.EventSource) return;
    var es = new EventSource('/api/v1/runs/' + encodeURIComponent(run) + '/stream');
    // The sections the stream does not carry are redrawn from the server after a change, at most
    // every 2 s (the last change is always followed by a redraw).
    var refreshed = 0, queued = false;
    function refreshSoon() {
      if (queued) return;
      queued = true;
      setTimeout(function () {
        queued = false;
        refreshed = Date.now();
        refreshSections();
      }, Math.max(0, 2000 - (Date.now() - refreshed)));
    }
    es.onopen = function () { liveBadge(true); };
    es.onerror = function () { if (es.readyState !== EventSource.CLOSED) liveBadge(false); };
    es.addEventListener('progress', function (ev) {
      var p = JSON.parse(ev.data);
      setText('pct', percent(p.percent_restored));
      setText('restored', p.targets_restored + ' / ' + p.targets_total);
      setText('eta', p.state === 'succeeded' ? 'done'
        : (p.state === 'running' && typeof p.eta_s === 'number' ? secs(p.eta_s) : '\u2014'));
      setText('clock', secs(p.clock_s));
      var st = document.getElementById('state');
      if (st && p.state) { st.textContent = p.state; st.className = 'badge ' + p.state; }
      var by = p.instances_by_state || {};
      STATES.forEach(function (s) { setText('n-' + s, by[s] || 0); });
      if (typeof p.clock_s === 'number') clock = p.clock_s;
      if (p.targets_total) total = p.targets_total;
      redraw();
      refreshSoon();
    });
    es.addEventListener('targets', function (ev) {
      var d = JSON.parse(ev.data);
      (d.targets || []).forEach(function (t) {
        var c = cells.get(t.target);
        if (!c) return;
        // The API says `restored` where the grid's classes say `succeeded`.
        c.className = 'c ' + (t.state === 'restored' ? 'succeeded' : t.state);
        if (typeof t.restored_at_s === 'number') c.setAttribute('data-at', t.restored_at_s);
        else c.removeAttribute('data-at');
        c.title = c.title.replace(/^[a-z]+/, t.state === 'restored' ? 'succeeded' : t.state);
      });
      redraw();
    });
    es.addEventListener('end', function () {
      es.close();
      document.body.setAttribute('data-follow', '0');
      var e = document.getElementById('live');
      if (e) { e.textContent = 'ended'; e.className = 'live'; }
      setText('eta', 'done');
      setText('clock-label', 'makespan');
      refreshSections();
    });
  }

  function cell(tr, text, cls) {
    var td = document.createElement('td');
    if (cls) td.className = cls;
    if (text instanceof Node) td.appendChild(text); else td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // The runs list, rebuilt from a `runs` event (every value set as text, never as HTML).
  function runsPage() {
    var body = document.getElementById('runs');
    if (!body || !window.EventSource) return;
    var es = new EventSource('/api/v1/stream');
    es.onopen = function () { liveBadge(true); };
    es.onerror = function () { if (es.readyState !== EventSource.CLOSED) liveBadge(false); };
    es.addEventListener('runs', function (ev) {
      var d = JSON.parse(ev.data);
      var rows = Array.isArray(d) ? d : (d.runs || []);
      var frag = document.createDocumentFragment();
      rows.forEach(function (r) {
        var href = '/runs/' + encodeURIComponent(r.run_id);
        var tr = document.createElement('tr');
        tr.setAttribute('data-run', r.run_id);
        var a = el('a'); a.href = href; a.appendChild(el('b', '', r.workflow));
        var wf = cell(tr, a);
        if (r.simulated) { wf.appendChild(document.createTextNode(' ')); wf.appendChild(el('span', 'badge sim', 'simulated')); }
        cell(tr, el('span', 'badge ' + r.state, r.state));
        var p = typeof r.percent_restored === 'number' ? r.percent_restored : 0;
        var bar = el('span', 'meter'), fill = el('span', 'fill');
        fill.style.width = p.toFixed(1) + '%'; bar.appendChild(fill);
        var pc = cell(tr, bar, 'pct');
        pc.appendChild(document.createTextNode(' '));
        pc.appendChild(el('span', 'v', percent(p)));
        cell(tr, (r.targets_restored || 0) + ' / ' + (r.targets_total || 0), 'num');
        cell(tr, r.state === 'succeeded' ? 'done' : (r.state === 'running' && typeof r.eta_s === 'number' ? secs(r.eta_s) : '\u2014'), 'num eta');
        cell(tr, r.started_by || '\u2014', 'by');
        cell(tr, r.created_at || '');
        var id = el('a'); id.href = href; id.appendChild(el('code', '', String(r.run_id).slice(0, 8)));
        cell(tr, id);
        frag.appendChild(tr);
      });
      body.replaceChildren(frag);
      var table = body.closest('table');
      if (table && rows.length) table.hidden = false;
    });
  }

  var page = document.body.getAttribute('data-page');
  if (page === 'run') runPage(document.body.getAttribute('data-run'));
  else if (page === 'runs') runsPage();
})();
