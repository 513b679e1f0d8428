"""The review page: candidates served on localhost, judged from their focal planes with the keyboard.

``scanstream review CANDIDATES --store STORE`` starts a :class:`http.server.ThreadingHTTPServer`
on 127.0.0.1 serving the review page (:mod:`scanstream.review.page`). Each candidate's card
shows the composite crop, each focal plane alone, the picker's features and the stage
position; the focused candidate is shown again beside the grid, zoomed 1-4x with a scale bar in
um. Keys: ``a`` alpha, ``o`` other (not alpha), ``?`` unsure, ``u`` undo, ``n`` the next
unreviewed candidate. A progress count ("12 of 200 reviewed") is on the page from the start,
and filters by sheet and score range narrow the grid.

The page offers two orders of the same candidates: highest score first, and the useful order
(:mod:`scanstream.review.adapt`: a stratified random sample over score bands around the
threshold, from the top of the sheet to its bulk), when the table has a threshold and the
filters leave whole sheets. ``order`` (``--order``) picks the one the page opens in. A verdict
given while the page shows the useful order records its band and the design, so
``scanstream threshold CANDIDATES --verdicts DIR`` can recalibrate the sheet's threshold;
verdicts given in score order record no design.

Every verdict is appended to the verdicts table (:mod:`scanstream.verdicts`) before the page
shows it as recorded; a verdict equal to the object's current one is not written again. Undo
withdraws the last verdict given through this server (a withdrawal line, nothing rewritten), so
the object's earlier verdict, or none, is current again.

Routes::

    GET  /                      the page shell
    GET  /static/review.js      the page's script (and /static/review.css, its style)
    GET  /api/items             the cards: rows, features, positions in each order, verdicts
    GET  /crop/<i>.png          composite crop of the i-th row (the three planes as RGB)
    GET  /crop/<i>/<k>.png      plane k (0 shallower, 1 vertex, 2 deeper) of the i-th row, grey
    GET  /api/verdicts          {"verdicts": {"<i>": "alpha", ...}} current verdicts of the rows
    POST /api/verdict           {"index": i, "verdict": "alpha" | "not_alpha" | "unsure",
                                 "order": "score" | "useful" (optional: the page's first order)}
    POST /api/undo              {} -> {"index": i, "verdict": the row's verdict now, or null}

A bad row index, plane or verdict is answered with a 4xx and a one-line JSON ``error``.

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

import numpy as np
import pyarrow as pa

from scanstream.candidates.query import PARTIAL_LABEL, CandidateFilter, query_candidates
from scanstream.candidates.table import require_complete
from scanstream.errors import InputError, NothingToUndoError, ScanstreamError
from scanstream.review.adapt import ORDERS, check_useful, useful_rows
from scanstream.review.gallery import CropLookup, png_bytes, recorded_stores
from scanstream.review.page import FEATURE_FIELDS, HELP, card_items, page_shell, static_file
from scanstream.store.schema import CROP_PLANES
from scanstream.verdicts import VerdictLog, parse_verdict, read_verdicts, verdict_key

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
COOKIE = "scanstream_token"
MAX_BODY = 4096

ORDER_TEXT = {
    "score": "highest score first",
    "useful": "in the useful order (a random sample of every score band, from the top of the sheet through the "
    "threshold to its bulk, band 1 first in each round; each card shows its score band: judge them in this order "
    "so the verdicts can recalibrate the sheet's threshold)",
}


class ReviewSession:
    """The rows on the review page, their crops and features, and the verdict log of this session.

    Parameters
    ----------
    candidates : path-like
        Candidate table directory.
    verdicts : path-like
        Verdicts table directory (appended to; created if missing).
    stores : sequence of path-like, optional
        Crop stores with the crops (default: the stores recorded in the rows).
    filters : CandidateFilter, optional
        Which candidates to review (default: the 200 highest scores; the useful order takes
        the first ``top`` of its order of the filtered sheet).
    allow_partial : bool
        Review a table without its manifest (an unfinished run); the page title says so.
    order : {"score", "useful"}
        The order the page opens in (module docstring). ``"useful"`` needs the useful order
        (a complete table with a threshold; only the sheet and top filters); with ``"score"``
        the page offers it beside the score order when it can (over whole sheets, whatever the
        other filters), and says why when it cannot.
    seed : int
        Seed of the useful order's permutations.

    ``rows`` holds the rows of the opening order, in that order; ``cards``, every row on the page
    (``rows``, then those only the other order has), indexed as the routes' card numbers.
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
        if order not in ORDERS:
            raise InputError(f"review order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.candidates = Path(candidates)
        self.order = order
        self.partial = require_complete(self.candidates, allow_partial=allow_partial) is None
        filters = filters or CandidateFilter(top=200)
        score = query_candidates(self.candidates, filters, allow_partial=allow_partial)
        score_total = self._count_matching(filters, allow_partial)
        useful, fields, useful_total, self.useful_note = self._useful(filters, seed, required=order == "useful")
        first, second = (useful, score) if order == "useful" else (score, useful)
        table = first if second is None else _union(first, second)
        self.cards = table.to_pylist()
        self.rows = self.cards[: first.num_rows]
        self.matching = useful_total if order == "useful" else score_total
        self.score_pos = _positions(self.cards, score)
        self.useful_pos = _positions(self.cards, useful)
        by_key = {_row_key(r): f for r, f in zip(useful.to_pylist() if useful is not None else [], fields)}
        self.design_fields = [by_key.get(_row_key(r), {}) for r in self.cards]
        self.order_sizes = {"score": (score.num_rows, score_total),
                            "useful": (0 if useful is None else useful.num_rows, useful_total)}
        self.lookup = CropLookup(list(stores) if stores else recorded_stores(table))
        self.where = [self.lookup.locate(r["object_id"], r.get("store"), r.get("store_index")) for r in self.cards]
        self.features = self._features()
        self.verdicts_dir = Path(verdicts)
        self.log = VerdictLog(self.verdicts_dir, context={"candidates": str(self.candidates.resolve())})
        self.token = secrets.token_urlsafe(24)
        self._png_lock = threading.Lock()
        self._lock = threading.Lock()
        self._done: list[tuple[int, dict[str, Any]]] = []  # verdicts given through this server, for undo

    def _useful(self, filters: CandidateFilter, seed: int, *, required: bool):
        """(rows, design fields, rows spanned, note): the useful order, or why the page cannot offer it.

        Offered beside the score order, it samples whole sheets: ``--selected``, ``--min-score``
        and ``--region`` narrow the score order only, and the note says so.
        """
        whole = filters if required else replace(filters, selected=False, min_score=None, region=None)
        note = "" if whole == filters else ("most useful first samples whole sheets: --selected, --min-score and "
                                            "--region narrow the score order only")
        try:
            sheet = check_useful(whole)
            if self.partial:
                raise InputError(f"{self.candidates}: the useful order needs a finished table")
            rows, fields, total = useful_rows(self.candidates, sheet=sheet, top=whole.top, seed=seed)
        except ScanstreamError as exc:
            if required:
                raise
            return None, [], 0, f"most useful first is not offered: {exc}"
        return rows, fields, total, note

    def _count_matching(self, filters: CandidateFilter, allow_partial: bool) -> int:
        """Rows the filters select before ``top`` cuts them (the page says "200 of 424")."""
        counted = query_candidates(self.candidates, replace(filters, top=None), allow_partial=allow_partial,
                                   sql="SELECT count(*) AS n FROM candidates")
        return int(counted.column("n")[0].as_py())

    def _features(self) -> list[dict[str, Any]]:
        """The picker's features of each row, from its crop store's object table."""
        out: list[dict[str, Any]] = [{} for _ in self.cards]
        for k, store in enumerate(self.lookup.stores):
            pos = [i for i, w in enumerate(self.where) if w[0] == k]
            cols = [c for c in FEATURE_FIELDS if c in store.table.column_names]
            if not pos or not cols:
                continue
            taken = store.table.select(cols).take(pa.array([self.where[i][1] for i in pos], pa.int64())).to_pylist()
            for i, feats in zip(pos, taken):
                out[i] = feats
        return out

    @property
    def shown(self) -> str:
        """``"200 of 424"`` when the page's first order holds fewer rows than it spans, else ``"424"``."""
        n = self.order_sizes[self.order][0]
        return f"{n} of {self.matching}" if self.matching > n else str(n)

    def store_hash(self, i: int) -> str | None:
        return self.lookup.stores[self.where[i][0]].content_hash

    def pixel_um(self, i: int) -> float | None:
        """Pixel size of row ``i``'s crop, um (None when its store does not record it)."""
        v = self.lookup.stores[self.where[i][0]].attrs.get("pixel_size_um")
        return None if v is None else float(v)

    def _check_index(self, index: Any) -> int:
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(self.cards):
            raise InputError(f"index must be a card number 0..{len(self.cards) - 1}, got {index!r}")
        return index

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one session per server; bounded cache of crops
    def _crop(self, i: int) -> np.ndarray:
        k, row = self.where[i]
        with self._png_lock:
            return self.lookup.stores[k].read(row, row + 1)[0]

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - one session per server; bounded cache of PNGs
    def crop_png(self, i: int, plane: int | None = None) -> bytes:
        """PNG of row ``i``'s composite crop (``plane`` None) or of one focal plane alone, in grey."""
        crop = self._crop(self._check_index(i))
        if plane is None:
            return png_bytes(crop)
        if not 0 <= plane < len(CROP_PLANES):
            raise InputError(f"plane must be 0..{len(CROP_PLANES) - 1} ({', '.join(CROP_PLANES)}), got {plane}")
        return png_bytes(crop[:, :, plane])

    def page(self) -> str:
        """The page shell with the title, the help line and the progress of the opening order."""
        done = sum(1 for i in self.current() if self._in_order(int(i), self.order))
        return page_shell(
            title=f"scanstream review: {self.candidates.name}" + (f" [{PARTIAL_LABEL}]" if self.partial else ""),
            help_text=f"{self.shown} candidates, {ORDER_TEXT[self.order]}. {HELP}",
            token=self.token, order=self.order,
            progress=f"{done} of {self.order_sizes[self.order][0]} reviewed",
        )

    def _in_order(self, i: int, order: str) -> bool:
        return (self.useful_pos if order == "useful" else self.score_pos)[i] is not None

    def items(self) -> dict[str, Any]:
        """What ``GET /api/items`` answers: the cards, the orders on offer and the planes."""
        current = {int(i): v for i, v in self.current().items()}
        cards = card_items(self.cards, self.features, pixel_um=[self.pixel_um(i) for i in range(len(self.cards))],
                           score_pos=self.score_pos, useful_pos=self.useful_pos,
                           bands=[f.get("band") for f in self.design_fields], verdicts=current)
        orders = {name: {"available": n > 0 or name == "score", "rows": n, "of": total,
                         "text": ORDER_TEXT[name]} for name, (n, total) in self.order_sizes.items()}
        orders["useful"]["note"] = self.useful_note
        return {"items": cards, "order": self.order, "orders": orders, "planes": list(CROP_PLANES)}

    def _latest(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {verdict_key(r): r for r in read_verdicts(self.verdicts_dir)}

    def _key(self, i: int) -> tuple[str, str]:
        return verdict_key({**self.cards[i], "store_hash": self.store_hash(i)})

    def current(self) -> dict[str, str]:
        """Current verdicts of the page's rows, keyed by page index (as strings)."""
        latest = self._latest()
        out = {}
        for i in range(len(self.cards)):
            r = latest.get(self._key(i))
            if r is not None:
                out[str(i)] = r["verdict"]
        return out

    def record(self, index: Any, verdict: Any, order: Any = None) -> dict[str, Any]:
        """Record ``verdict`` for page row ``index`` given in ``order`` (default: the opening order).

        Returns the record written, or the object's current record when it already says the
        same (in the same useful-order design): nothing is written twice.
        """
        i = self._check_index(index)
        verdict = parse_verdict(verdict)
        order = self.order if order is None else order
        if order not in ORDERS:
            raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if not self._in_order(i, order):
            raise InputError(f"card {i} ({self.cards[i]['object_id']}) is not in the {order} order of this page")
        fields = self.design_fields[i] if order == "useful" else {}
        with self._lock:
            now = self._latest().get(self._key(i))
            if now is not None and now["verdict"] == verdict and now.get("design") == fields.get("design"):
                return now
            rec = self.log.append(self.cards[i], verdict, store_hash=self.store_hash(i), **fields)
            self._done.append((i, rec))
        return rec

    def undo(self) -> tuple[int, str | None]:
        """Withdraw the last verdict given through this server; (its row, the row's verdict now)."""
        with self._lock:
            if not self._done:
                raise NothingToUndoError("nothing to undo: no verdict has been given on this page since the server started")
            i, rec = self._done.pop()
            self.log.withdraw(rec)
            now = self._latest().get(self._key(i))
        return i, None if now is None else now["verdict"]


def _row_key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row["object_id"]), str(row.get("store") or "")


def _union(first: pa.Table, second: pa.Table) -> pa.Table:
    """``first``'s rows, then ``second``'s rows that ``first`` lacks (same object and store)."""
    seen = {_row_key(r) for r in first.select(["object_id", "store"]).to_pylist()}
    extra = [j for j, r in enumerate(second.select(["object_id", "store"]).to_pylist()) if _row_key(r) not in seen]
    if not extra:
        return first
    more = second.take(pa.array(extra, pa.int64())).select(first.column_names).cast(first.schema)
    return pa.concat_tables([first, more])


def _positions(rows: Sequence[dict[str, Any]], order: pa.Table | None) -> list[int | None]:
    """Position of each of ``rows`` in ``order``'s rows (None: not in it, or no such order)."""
    if order is None:
        return [None] * len(rows)
    pos = {_row_key(r): p for p, r in enumerate(order.select(["object_id", "store"]).to_pylist())}
    return [pos.get(_row_key(r)) for r in rows]


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
        # scripts and styles from this server only: the page has no inline code
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self'; script-src 'self'; "
                         "style-src 'self'; frame-ancestors 'none'")
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

    def _refused(self) -> bool:
        """Answer a request that names more than one Host, or a foreign one; True when refused."""
        if len(self.headers.get_all("Host") or ()) > 1:  # RFC 9112, 3.2: a 400, whatever the values
            self._json(HTTPStatus.BAD_REQUEST, {"error": "more than one Host header"})
            return True
        if not self._host_ok():
            self._json(HTTPStatus.FORBIDDEN, {"error": "bad Host header"})
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return None
        path, _, query = self.path.partition("?")
        if self.token_always and not self._token_ok(query):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "this server needs its token: open the URL it printed"})
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, self.session.page().encode(), "text/html; charset=utf-8", cookie=True)
        static = static_file(path)
        if static is not None:
            return self._send(HTTPStatus.OK, static[0], static[1])
        m = re.fullmatch(r"/crop/(\d{1,9})(?:/(\d{1,3}))?\.png", path)
        if m:
            try:
                png = self.session.crop_png(int(m.group(1)), None if m.group(2) is None else int(m.group(2)))
            except InputError as exc:
                return self._json(HTTPStatus.NOT_FOUND, {"error": str(exc)})
            return self._send(HTTPStatus.OK, png, "image/png", cache=True)
        if path == "/api/items":
            return self._json(HTTPStatus.OK, self.session.items())
        if path == "/api/verdicts":
            return self._json(HTTPStatus.OK, {"verdicts": self.session.current()})
        return self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {path[:80]}"})

    def _body(self) -> dict[str, Any]:
        """The request's JSON object (ValueError or TypeError when it is not one)."""
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            raise ValueError(f"body must be 1..{MAX_BODY} bytes of JSON")
        body = json.loads(self.rfile.read(length))
        if not isinstance(body, dict):
            raise TypeError("body must be a JSON object")
        return body

    def do_POST(self) -> None:
        if self._refused():
            return None
        if self.path not in ("/api/verdict", "/api/undo"):
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"not found: {self.path[:80]}"})
        if not hmac.compare_digest(self.headers.get("X-Scanstream-Token", ""), self.session.token):
            return self._json(HTTPStatus.FORBIDDEN, {"error": "missing or wrong X-Scanstream-Token"})
        try:
            body = self._body()
            if self.path == "/api/undo":
                i, now = self.session.undo()
                return self._json(HTTPStatus.OK, {"ok": True, "index": i, "verdict": now})
            record = self.session.record(body.get("index"), body.get("verdict"), body.get("order"))
        except NothingToUndoError as exc:
            return self._json(HTTPStatus.CONFLICT, {"error": str(exc)})
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
