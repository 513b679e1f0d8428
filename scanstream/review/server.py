"""The review page: candidates served on localhost with keyboard-driven verdict buttons.

``scanstream review CANDIDATES --store STORE`` starts a :class:`http.server.ThreadingHTTPServer`
on 127.0.0.1 serving the gallery page of the chosen candidates (highest score first), each card
with three buttons: alpha (key ``a``), not alpha (``n``), unsure (``u``); arrow keys or ``j`` /
``k`` move between cards, and a verdict moves on to the next card. Every verdict is appended to
the verdicts table (:mod:`scanstream.verdicts`) before the page shows it as recorded.
With ``order="useful"`` (``--order useful``) the page asks in the useful order instead: a
stratified random sample over score bands around the threshold, from the top of the sheet to
its bulk (:mod:`scanstream.review.adapt`); each verdict records its band and the design, so
``scanstream threshold CANDIDATES --verdicts DIR`` can recalibrate the sheet's threshold.

Routes::

    GET  /                  the page
    GET  /crop/<i>.png      crop of the i-th candidate on the page
    GET  /api/verdicts      {"verdicts": {"<i>": "alpha", ...}} current verdicts of the page's rows
    POST /api/verdict       {"index": i, "verdict": "alpha" | "not_alpha" | "unsure"}

By default only 127.0.0.1 is bound. A POST must carry the page's per-session token in the
``X-Scanstream-Token`` header (a custom header: other web sites cannot send it without a CORS
preflight, which this server never grants) and the Host header must name this server, so
neither another site in the same browser nor DNS rebinding can record verdicts.

Behind an SSH tunnel or a notebook proxy the browser names another host or port:
``allowed_hosts`` (``--allowed-host``) adds names the Host header may carry (``name`` for any
port, ``name:port`` for one). Bound to another address (``--host``), every request needs the
token: the printed URL carries it once (``?token=...``), and the server answers with a
``SameSite=Strict`` HttpOnly cookie that the page's later requests send.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from scanstream.candidates.query import PARTIAL_LABEL, CandidateFilter, query_candidates
from scanstream.candidates.table import require_complete
from scanstream.errors import InputError
from scanstream.review.adapt import ORDERS, check_useful, useful_rows
from scanstream.review.gallery import CropLookup, png_bytes, recorded_stores, render_page
from scanstream.verdicts import VERDICTS, VerdictLog, parse_verdict, read_verdicts, verdict_key

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
COOKIE = "scanstream_token"
MAX_BODY = 4096

_KEYS = {"alpha": "a", "not_alpha": "n", "unsure": "u"}
_LABELS = {"alpha": "alpha", "not_alpha": "not alpha", "unsure": "unsure"}

REVIEW_SCRIPT = r"""
(function () {
  const TOKEN = document.body.dataset.token;
  const cards = Array.from(document.querySelectorAll('.card'));
  const status = document.getElementById('status');
  let focus = 0;
  function show(i) {
    if (!cards.length) return;
    focus = Math.max(0, Math.min(cards.length - 1, i));
    cards.forEach((c, k) => c.classList.toggle('focus', k === focus));
    cards[focus].scrollIntoView({block: 'nearest'});
  }
  function mark(i, verdict) {
    const c = cards[i];
    c.classList.remove('v-alpha', 'v-not_alpha', 'v-unsure');
    c.classList.add('v-' + verdict);
    c.dataset.verdict = verdict;
    c.querySelector('.verdict').textContent = 'recorded: ' + verdict.replace('_', ' ');
    const done = cards.filter(x => x.dataset.verdict).length;
    status.textContent = done + ' of ' + cards.length + ' reviewed';
  }
  async function record(i, verdict) {
    try {
      const r = await fetch('/api/verdict', {method: 'POST',
        headers: {'Content-Type': 'application/json', 'X-Scanstream-Token': TOKEN},
        body: JSON.stringify({index: i, verdict: verdict})});
      if (!r.ok) throw new Error(await r.text());
      mark(i, verdict);
    } catch (e) {
      status.textContent = 'NOT recorded (' + e.message + ')';
    }
  }
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const k = e.key;
    if (k === 'ArrowRight' || k === 'ArrowDown' || k === 'j') { show(focus + 1); e.preventDefault(); }
    else if (k === 'ArrowLeft' || k === 'ArrowUp' || k === 'k') { show(focus - 1); e.preventDefault(); }
    else if (KEYS[k]) { const i = focus; record(i, KEYS[k]); show(i + 1); e.preventDefault(); }
  });
  cards.forEach((c, i) => c.querySelectorAll('button[data-verdict]').forEach(b =>
    b.addEventListener('click', () => { show(i); record(i, b.dataset.verdict); })));
  fetch('/api/verdicts').then(r => r.json()).then(d => {
    Object.entries(d.verdicts).forEach(([i, v]) => mark(Number(i), v));
    document.body.dataset.ready = '1';
  });
  show(0);
})();
"""


class ReviewSession:
    """The rows on the review page, their crops, and the verdict log of this session.

    Parameters
    ----------
    candidates : path-like
        Candidate table directory.
    verdicts : path-like
        Verdicts table directory (appended to; created if missing).
    stores : sequence of path-like, optional
        Crop stores with the crops (default: the stores recorded in the rows).
    filters : CandidateFilter, optional
        Which candidates to review (default: the 200 highest scores).
    allow_partial : bool
        Review a table without its manifest (an unfinished run); the page title says so.
    order : {"score", "useful"}
        Highest score first, or the useful order (module docstring; it takes only the sheet
        and top filters, and a complete table).
    seed : int
        Seed of the useful order's permutations.
    """

    def __init__(
        self,
        candidates: str | os.PathLike,
        verdicts: str | os.PathLike,
        *,
        stores: Sequence[str | os.PathLike] | None = None,
        filters: CandidateFilter | None = None,
        allow_partial: bool = False,
        order: str = "score",
        seed: int = 0,
    ) -> None:
        self.candidates = Path(candidates)
        self.order = order
        self.partial = require_complete(self.candidates, allow_partial=allow_partial) is None
        filters = filters or CandidateFilter(top=200)
        if order == "useful":
            table, self.design_fields, self.matching = useful_rows(self.candidates, sheet=check_useful(filters),
                                                                   top=filters.top, seed=seed)
        elif order == "score":
            table = query_candidates(self.candidates, filters, allow_partial=allow_partial)
            self.design_fields = [{} for _ in range(table.num_rows)]
            self.matching = self._count_matching(filters, allow_partial)
        else:
            raise InputError(f"review order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.rows = table.to_pylist()
        self.lookup = CropLookup(list(stores) if stores else recorded_stores(table))
        self.where = [self.lookup.locate(r["object_id"], r.get("store"), r.get("store_index")) for r in self.rows]
        self.verdicts_dir = Path(verdicts)
        self.log = VerdictLog(self.verdicts_dir, context={"candidates": str(self.candidates.resolve())})
        self.token = secrets.token_urlsafe(24)
        self._png_lock = threading.Lock()

    def _count_matching(self, filters: CandidateFilter, allow_partial: bool) -> int:
        """Rows the filters select before ``top`` cuts them (the page says "200 of 424")."""
        counted = query_candidates(self.candidates, replace(filters, top=None), allow_partial=allow_partial,
                                   sql="SELECT count(*) AS n FROM candidates")
        return int(counted.column("n")[0].as_py())

    @property
    def shown(self) -> str:
        """``"200 of 424"`` when the page holds fewer rows than the filters select, else ``"424"``."""
        n = len(self.rows)
        return f"{n} of {self.matching}" if self.matching > n else str(n)

    def store_hash(self, i: int) -> str | None:
        return self.lookup.stores[self.where[i][0]].content_hash

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one session per server; bounded cache of PNGs
    def crop_png(self, i: int) -> bytes:
        k, row = self.where[i]
        with self._png_lock:
            crop = self.lookup.stores[k].read(row, row + 1)[0]
        return png_bytes(crop)

    def page(self) -> str:
        def footer(i: int, row: dict[str, Any]) -> str:
            buttons = "".join(
                f'<button type="button" data-verdict="{v}" title="key {_KEYS[v]}">{_LABELS[v]} ({_KEYS[v]})</button>'
                for v in VERDICTS
            )
            band = self.design_fields[i].get("band")
            where = "" if band is None else f'<div class="band">score band {band + 1}</div>'
            return f'{where}<div class="buttons">{buttons}</div><div class="verdict"></div>'

        keys = json.dumps({_KEYS[v]: v for v in VERDICTS})
        text = render_page(
            self.rows,
            [f"/crop/{i}.png" for i in range(len(self.rows))],
            title=f"scanstream review: {self.candidates.name}" + (f" [{PARTIAL_LABEL}]" if self.partial else ""),
            help_text=f"{self.shown} candidates, {ORDER_TEXT[self.order]}. Keys: a = alpha, n = not alpha, "
            "u = unsure (then on to the next card); arrows or j / k move. Verdicts are saved as you go.",
            card_footer=footer,
            script=f"const KEYS = {keys};\n{REVIEW_SCRIPT}",
        )
        status = '<p id="status" class="help" aria-live="polite"></p>'
        return text.replace("<body>", f'<body data-token="{self.token}">', 1).replace('<div class="grid">', status + '<div class="grid">', 1)

    def current(self) -> dict[str, str]:
        """Current verdicts of the page's rows, keyed by page index (as strings)."""
        by_key = {verdict_key(r): r["verdict"] for r in read_verdicts(self.verdicts_dir)}
        out = {}
        for i, row in enumerate(self.rows):
            v = by_key.get((str(row["object_id"]), str(self.store_hash(i) or row.get("store") or "")))
            if v is not None:
                out[str(i)] = v
        return out

    def record(self, index: Any, verdict: Any) -> dict[str, Any]:
        """Append a verdict for page row ``index``; return the record."""
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.rows):
            raise InputError(f"index must be a card number 0..{len(self.rows) - 1}, got {index!r}")
        return self.log.append(self.rows[index], parse_verdict(verdict), store_hash=self.store_hash(index),
                               **self.design_fields[index])


ORDER_TEXT = {
    "score": "highest score first",
    "useful": "in the useful order (a random sample of every score band, from the top of the sheet through the "
    "threshold to its bulk, band 1 first in each round: judge them in this order so the verdicts can recalibrate "
    "the sheet's threshold)",
}


class _Handler(BaseHTTPRequestHandler):
    session: ReviewSession  # these three are set on the subclass made by make_server
    allowed_hosts: frozenset[str] = frozenset()
    token_always: bool = False
    server_version = "scanstream-review"

    def log_message(self, fmt: str, *args: Any) -> None:  # route access logs to logging
        logger.debug("%s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, ctype: str, *, cache: bool = False, cookie: bool = False) -> None:
        self.send_response(status)
        if cookie and self.token_always:
            self.send_header("Set-Cookie", f"{COOKIE}={self.session.token}; HttpOnly; SameSite=Strict; Path=/")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _host_ok(self) -> bool:
        host = self.headers.get("Host", "")
        bound, port = self.server.server_address[:2]
        allowed = {f"127.0.0.1:{port}", f"localhost:{port}", f"{bound}:{port}", *self.allowed_hosts}
        return host in allowed or host.rsplit(":", 1)[0] in self.allowed_hosts

    def _token_ok(self, query: str) -> bool:
        """The session token from the header, the URL's ``token=`` or the cookie the page got."""
        given = [self.headers.get("X-Scanstream-Token", "")]
        given += [v for k, _, v in (kv.partition("=") for kv in query.split("&")) if k == "token"]
        given += [v for k, _, v in (c.strip().partition("=") for c in self.headers.get("Cookie", "").split(";"))
                  if k == COOKIE]
        return any(hmac.compare_digest(g, self.session.token) for g in given if g)

    def do_GET(self) -> None:
        if len(self.headers.get_all("Host") or ()) > 1:  # RFC 9112, 3.2: a 400, whatever the values
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "more than one Host header"})
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "bad Host header"})
        path, _, query = self.path.partition("?")
        if self.token_always and not self._token_ok(query):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "this server needs its token: open the URL it printed"})
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, self.session.page().encode(), "text/html; charset=utf-8", cookie=True)
        m = re.fullmatch(r"/crop/(\d{1,9})\.png", path)
        if m:
            i = int(m.group(1))
            if i >= len(self.session.rows):
                return self._json(HTTPStatus.NOT_FOUND, {"error": f"no candidate {i} on this page"})
            return self._send(HTTPStatus.OK, self.session.crop_png(i), "image/png", cache=True)
        if path == "/api/verdicts":
            return self._json(HTTPStatus.OK, {"verdicts": self.session.current()})
        return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:
        if len(self.headers.get_all("Host") or ()) > 1:  # RFC 9112, 3.2: a 400, whatever the values
            return self._json(HTTPStatus.BAD_REQUEST, {"error": "more than one Host header"})
        if not self._host_ok():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "bad Host header"})
        if self.path != "/api/verdict":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        if not hmac.compare_digest(self.headers.get("X-Scanstream-Token", ""), self.session.token):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong X-Scanstream-Token"})
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": f"body must be 1..{MAX_BODY} bytes of JSON"})
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise TypeError("body must be a JSON object")
            record = self.session.record(body.get("index"), body.get("verdict"))
        except (ValueError, TypeError, InputError) as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except OSError as exc:
            logger.error("could not write verdict: %s", exc)
            return self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"verdict not saved: {exc}"})
        return self._json(HTTPStatus.OK, {"ok": True, "object_id": record["object_id"], "verdict": record["verdict"]})


def make_server(session: ReviewSession, *, port: int = 8765, host: str = HOST,
                allowed_hosts: Sequence[str] = ()) -> ThreadingHTTPServer:
    """A threading HTTP server for ``session`` bound to ``host``:``port`` (0: any free port).

    ``allowed_hosts``: further names the Host header may carry (``name`` or ``name:port``: an SSH
    tunnel's local port, a notebook proxy). A ``host`` other than the loopback makes every
    request need the session token (module docstring).

    Raises
    ------
    InputError
        The port is taken or not allowed, or the host cannot be bound.
    """
    if not 0 <= int(port) <= 65535:
        raise InputError(f"port must be 0..65535, got {port}")
    attrs = {"session": session, "allowed_hosts": frozenset(allowed_hosts), "token_always": host not in LOOPBACK}
    handler = type("ReviewHandler", (_Handler,), attrs)
    try:
        server = ThreadingHTTPServer((host, int(port)), handler)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.daemon_threads = True
    return server


def default_verdicts_path(candidates: str | os.PathLike) -> Path:
    """Where verdicts go by default: ``<CANDIDATES>.verdicts/`` beside the candidate table."""
    p = Path(candidates)
    return p.with_name(p.name + ".verdicts")
