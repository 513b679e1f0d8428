// scanstream review page: cards from /api/items, keyboard verdicts with undo, the zoomed
// plane viewer, filters and the two orders. Plain DOM; every value from the data goes in as
// text (textContent), never as markup. scanstream/review/server.py documents the routes.
(function () {
  'use strict';
  const body = document.body;
  const TOKEN = body.dataset.token;
  const KEYS = JSON.parse(body.dataset.keys); // key -> verdict
  const LABEL = {alpha: 'alpha', not_alpha: 'other', unsure: 'unsure'};
  const SCALE_UM = [1, 2, 5, 10, 20, 50, 100];
  const $ = (id) => document.getElementById(id);
  const state = {items: [], cards: [], view: [], focus: -1, order: body.dataset.order, planeView: 'composite',
                 zoom: 2, planes: [], orders: {}};

  function fmt(v, digits) { return v === null || v === undefined ? '?' : Number(v).toFixed(digits); }
  function list(v, digits) { return v && v.length ? v.map((x) => fmt(x, digits)).join(', ') : '-'; }

  function captionLines(it) {
    const lines = [];
    let s = 'score ' + fmt(it.score, 3);
    if (it.probability !== null) s += '  p ' + fmt(it.probability, 3);
    if (state.order === 'useful' && it.band !== null) s += '  score band ' + (it.band + 1);
    else if (it.rank !== null) s += '  rank ' + it.rank;
    lines.push(s);
    lines.push('multiplicity ' + (it.multiplicity === null ? '?' : it.multiplicity)
      + '  prongs ' + list(it.track_lengths_um, 1) + ' um');
    if (it.track_dips_deg) lines.push('dips ' + list(it.track_dips_deg, 0) + ' deg');
    lines.push('sheet ' + it.sheet + '  plate ' + it.plate);
    lines.push('x ' + fmt(it.x_mm, 3) + '  y ' + fmt(it.y_mm, 3) + '  z ' + fmt(it.z_mm, 4) + ' mm');
    return lines;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function buildCard(it) {
    const c = el('div', it.selected ? 'card selected' : 'card');
    c.id = 'card-' + it.index;
    c.dataset.index = it.index;
    c.dataset.objectId = it.object_id;
    const img = el('img', 'composite');
    img.loading = 'lazy';
    img.alt = it.object_id + ' composite';
    img.src = '/crop/' + it.index + '.png';
    c.appendChild(img);
    const planes = el('div', 'planes');
    state.planes.forEach((name, k) => {
      const p = el('img');
      p.loading = 'lazy';
      p.alt = it.object_id + ' ' + name + ' plane';
      p.title = name + ' plane (key ' + (k + 1) + ')';
      p.src = '/crop/' + it.index + '/' + k + '.png';
      p.dataset.plane = k;
      planes.appendChild(p);
    });
    c.appendChild(planes);
    const cap = el('div', 'cap');
    cap.appendChild(el('div', 'id', it.object_id));
    c.appendChild(cap);
    const buttons = el('div', 'buttons');
    Object.entries(KEYS).forEach(([key, verdict]) => {
      const b = el('button', '', LABEL[verdict] + ' (' + key + ')');
      b.type = 'button';
      b.dataset.verdict = verdict;
      b.addEventListener('click', (e) => { e.stopPropagation(); setFocus(it.index); record(it.index, verdict); });
      buttons.appendChild(b);
    });
    c.appendChild(buttons);
    c.appendChild(el('div', 'verdict'));
    c.addEventListener('click', (e) => {
      if (e.target.dataset.plane !== undefined) state.planeView = Number(e.target.dataset.plane);
      setFocus(it.index);
    });
    return c;
  }

  function fillCaption(it) {
    const cap = state.cards[it.index].querySelector('.cap');
    while (cap.children.length > 1) cap.removeChild(cap.lastChild);
    captionLines(it).forEach((line) => cap.appendChild(el('div', '', line)));
  }

  function mark(i, verdict) {
    const c = state.cards[i];
    state.items[i].verdict = verdict;
    c.classList.remove('v-alpha', 'v-not_alpha', 'v-unsure');
    if (verdict) {
      c.classList.add('v-' + verdict);
      c.dataset.verdict = verdict;
      c.querySelector('.verdict').textContent = 'recorded: ' + LABEL[verdict];
    } else {
      delete c.dataset.verdict;
      c.querySelector('.verdict').textContent = '';
    }
    progress();
  }

  function progress() {
    const done = state.view.filter((i) => state.items[i].verdict).length;
    const all = state.items.filter((it) => positionIn(it, state.order) !== null);
    const allDone = all.filter((it) => it.verdict).length;
    let text = done + ' of ' + state.view.length + ' reviewed';
    if (state.view.length !== all.length) text += ' (' + allDone + ' of ' + all.length + ' in this order)';
    $('progress').textContent = text;
  }

  function positionIn(it, order) { return order === 'useful' ? it.useful_pos : it.score_pos; }

  // The cards of the current order that pass the filters, in that order.
  function applyView() {
    const sheet = $('sheet').value;
    const lo = $('min-score').value === '' ? -Infinity : Number($('min-score').value);
    const hi = $('max-score').value === '' ? Infinity : Number($('max-score').value);
    const inOrder = state.items.filter((it) => positionIn(it, state.order) !== null);
    inOrder.sort((a, b) => positionIn(a, state.order) - positionIn(b, state.order));
    state.view = inOrder.filter((it) => (!sheet || it.sheet === sheet) && it.score >= lo && it.score <= hi)
      .map((it) => it.index);
    const shown = new Set(state.view);
    const grid = $('grid');
    inOrder.forEach((it) => grid.appendChild(state.cards[it.index]));
    state.items.forEach((it) => {
      state.cards[it.index].classList.toggle('hidden', !shown.has(it.index));
      fillCaption(it);
    });
    body.dataset.viewSize = state.view.length;
    progress();
    if (!shown.has(state.focus)) setFocus(state.view.length ? state.view[0] : -1);
  }

  function setFocus(i) {
    if (state.focus >= 0) state.cards[state.focus].classList.remove('focus');
    state.focus = i;
    if (i < 0) { $('detail').textContent = 'no candidate passes the filters'; return; }
    state.cards[i].classList.add('focus');
    state.cards[i].scrollIntoView({block: 'nearest'});
    showViewer();
  }

  function move(step) {
    if (!state.view.length) return;
    const at = state.view.indexOf(state.focus);
    setFocus(state.view[Math.max(0, Math.min(state.view.length - 1, at + step))]);
  }

  // The next card of the view without a verdict after the focused one, wrapping round
  // (``judged``: a card whose verdict is on its way to the server).
  function nextUnreviewed(judged) {
    const n = state.view.length;
    const at = state.view.indexOf(state.focus);
    for (let s = 1; s <= n; s++) {
      const i = state.view[(at + s + n) % n];
      if (!state.items[i].verdict && i !== judged) { setFocus(i); return true; }
    }
    $('note').textContent = 'every candidate in this view has a verdict';
    return false;
  }

  function scaleBar(it) {
    const bar = $('scalebar');
    if (!it.pixel_um) { bar.classList.add('none'); return; }
    const pxPerUm = state.zoom / it.pixel_um;
    const um = SCALE_UM.filter((u) => u * pxPerUm <= 150).pop() || SCALE_UM[0];
    bar.classList.remove('none');
    bar.querySelector('.bar').style.width = Math.round(um * pxPerUm) + 'px';
    bar.querySelector('.length').textContent = um + ' um';
    bar.dataset.um = um;
    bar.dataset.px = (um * pxPerUm).toFixed(2);
  }

  function showViewer() {
    const it = state.items[state.focus];
    const big = $('big');
    const view = state.planeView;
    big.src = '/crop/' + it.index + (view === 'composite' ? '' : '/' + view) + '.png';
    big.alt = it.object_id + ' ' + (view === 'composite' ? 'composite' : state.planes[view] + ' plane');
    big.dataset.view = view;
    big.style.width = big.style.height = (224 * state.zoom) + 'px';
    const frame = $('frame');
    frame.scrollLeft = frame.scrollTop = (224 * state.zoom - 448) / 2; // the vertex sits at the crop's centre
    document.querySelectorAll('#viewer [data-view]').forEach((b) => b.classList.toggle('on', b.dataset.view === String(view)));
    document.querySelectorAll('#viewer [data-zoom]').forEach((b) => b.classList.toggle('on', Number(b.dataset.zoom) === state.zoom));
    scaleBar(it);
    const detail = $('detail');
    detail.textContent = '';
    detail.appendChild(el('div', 'id', it.object_id + (view === 'composite' ? '' : ' - ' + state.planes[view] + ' plane')));
    captionLines(it).forEach((line) => detail.appendChild(el('div', '', line)));
  }

  function setZoom(z) { state.zoom = Math.max(1, Math.min(4, z)); if (state.focus >= 0) showViewer(); }
  function setPlaneView(v) { state.planeView = v; if (state.focus >= 0) showViewer(); }

  async function post(path, payload) {
    const r = await fetch(path, {method: 'POST',
      headers: {'Content-Type': 'application/json', 'X-Scanstream-Token': TOKEN}, body: JSON.stringify(payload)});
    const answer = await r.json().catch(() => ({error: r.statusText}));
    if (!r.ok) throw new Error(answer.error || r.statusText);
    return answer;
  }

  async function record(i, verdict) {
    try {
      await post('/api/verdict', {index: i, verdict: verdict, order: state.order});
      mark(i, verdict);
      $('note').textContent = '';
    } catch (e) {
      $('note').textContent = 'NOT recorded (' + e.message + ')';
    }
  }

  async function undo() {
    try {
      const r = await post('/api/undo', {});
      mark(r.index, r.verdict);
      $('note').textContent = 'undone: ' + state.items[r.index].object_id + ' is now '
        + (r.verdict ? LABEL[r.verdict] : 'unreviewed');
      if (state.view.includes(r.index)) setFocus(r.index);
    } catch (e) {
      $('note').textContent = e.message;
    }
  }

  // A verdict on the focused card, then on to the next unreviewed one at once.
  function judge(verdict) {
    const i = state.focus;
    if (i < 0) return;
    record(i, verdict);
    nextUnreviewed(i);
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === 'INPUT' || e.target.tagName === 'SELECT') return;
    const k = e.key;
    if (k === 'ArrowRight' || k === 'ArrowDown' || k === 'j') move(1);
    else if (k === 'ArrowLeft' || k === 'ArrowUp' || k === 'k') move(-1);
    else if (KEYS[k]) judge(KEYS[k]);
    else if (k === 'u') undo();
    else if (k === 'n') nextUnreviewed();
    else if (k === 'c') setPlaneView('composite');
    else if (k >= '1' && k <= String(state.planes.length)) setPlaneView(Number(k) - 1);
    else if (k === 'z') setZoom(state.zoom % 4 + 1);
    else if (k === '+' || k === '=') setZoom(state.zoom + 1);
    else if (k === '-') setZoom(state.zoom - 1);
    else return;
    e.preventDefault();
  }

  function wireControls() {
    document.addEventListener('keydown', onKey);
    ['sheet', 'min-score', 'max-score'].forEach((id) => ['input', 'change'].forEach((ev) => $(id).addEventListener(ev, applyView)));
    $('order').addEventListener('change', () => { state.order = $('order').value; body.dataset.order = state.order; applyView(); });
    $('next').addEventListener('click', () => nextUnreviewed());
    $('undo').addEventListener('click', undo);
    document.querySelectorAll('#viewer [data-view]').forEach((b) => b.addEventListener('click', () =>
      setPlaneView(b.dataset.view === 'composite' ? 'composite' : Number(b.dataset.view))));
    document.querySelectorAll('#viewer [data-zoom]').forEach((b) => b.addEventListener('click', () => setZoom(Number(b.dataset.zoom))));
    document.querySelectorAll('#viewer [data-verdict]').forEach((b) => b.addEventListener('click', () => judge(b.dataset.verdict)));
  }

  async function start() {
    const data = await (await fetch('/api/items')).json();
    state.items = data.items;
    state.planes = data.planes;
    state.orders = data.orders;
    const useful = data.orders.useful;
    const option = $('order').querySelector('option[value="useful"]');
    if (!useful.available) option.disabled = true;
    $('note').textContent = useful.note;
    $('order').value = state.order;
    [...new Set(state.items.map((it) => it.sheet))].sort().forEach((s) => {
      const o = el('option', '', s);
      o.value = s;
      $('sheet').appendChild(o);
    });
    state.cards = state.items.map(buildCard);
    state.items.forEach((it) => { if (it.verdict) mark(it.index, it.verdict); });
    wireControls();
    applyView();
    body.dataset.ready = '1';
  }

  start().catch((e) => { $('note').textContent = 'the page could not load its candidates: ' + e.message; });
})();
