"""The review page's markup and data: the HTML shell, the cards' JSON, the static script and style.

The page is plain HTML, CSS and JavaScript with no framework and nothing inline but data: the
server (:mod:`scanstream.review.server`) sends a short HTML shell, ``static/review.js`` builds
the cards from ``GET /api/items`` (JSON made by :func:`card_items`), and ``static/review.css``
styles them, so the Content-Security-Policy allows scripts and styles from the server only.

What a card shows, and why: the composite (the three focal planes as red, green and blue) and
each plane alone in grey, as a physicist steps through focus at the microscope; the score and
its rank, or its score band in the useful order; the picker's features from the crop store's
object table (multiplicity, prong lengths in um, prong dips in degrees when the picker measured
them); the sheet, plate and stage position in mm. The store's pixel size (``pixel_size_um``)
gives the scale bar of the zoomed view.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from scanstream.store.schema import CROP_PLANES

STATIC = Path(__file__).with_name("static")
#: The static files the page loads, by URL path: (file, content type).
STATIC_FILES = {
    "/static/review.js": ("review.js", "text/javascript; charset=utf-8"),
    "/static/review.css": ("review.css", "text/css; charset=utf-8"),
}
#: Candidate-row fields a card shows, as the candidate table has them.
ROW_FIELDS = ("object_id", "sheet", "plate", "x_mm", "y_mm", "z_mm", "score", "probability", "rank", "selected")
#: Picker features a card shows, from the crop store's object table when it has the column.
FEATURE_FIELDS = ("multiplicity", "track_lengths_um", "track_dips_deg")
#: Keys of the page (the help line and the script agree on them).
KEYS = {"alpha": "a", "not_alpha": "o", "unsure": "?"}
LABELS = {"alpha": "alpha", "not_alpha": "other", "unsure": "unsure"}
HELP = ("Keys: a = alpha, o = other (not alpha), ? = unsure, u = undo the last verdict, n = next unreviewed; "
        "arrows or j / k move; c = composite, 1 / 2 / 3 = the shallower / vertex / deeper plane alone; "
        "z or + / - = zoom (1-4x). Verdicts are saved as you go.")


@cache
def static_file(url_path: str) -> tuple[bytes, str] | None:
    """Bytes and content type of a static file of the page, or None for any other path."""
    entry = STATIC_FILES.get(url_path)
    if entry is None:
        return None
    return (STATIC / entry[0]).read_bytes(), entry[1]


def _plain(v: Any) -> Any:
    """A JSON-safe value: NaN and infinities (unknown stage positions) become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def card_items(
    rows: Sequence[Mapping[str, Any]],
    features: Sequence[Mapping[str, Any]],
    *,
    pixel_um: Sequence[float | None],
    score_pos: Sequence[int | None],
    useful_pos: Sequence[int | None],
    bands: Sequence[int | None],
    verdicts: Mapping[int, str],
) -> list[dict[str, Any]]:
    """One JSON object per page row: what its card shows and where it stands in each order.

    Parameters
    ----------
    rows : sequence of mapping
        Candidate rows (:data:`ROW_FIELDS` are taken).
    features : sequence of mapping
        The picker's features of each row (:data:`FEATURE_FIELDS`; absent keys are null).
    pixel_um : sequence of float or None
        Pixel size of each row's crop store, um per pixel (None: unknown, no scale bar).
    score_pos, useful_pos : sequence of int or None
        Position of each row in the score order and in the useful order (None: not in it).
    bands : sequence of int or None
        Score band of each row in the useful order (0 = the top of the selection).
    verdicts : mapping of int to str
        Current verdict of the rows that have one.

    Examples
    --------
    >>> card_items([{"object_id": "o1", "x_mm": float("nan")}], [{"multiplicity": 2}], pixel_um=[0.39],
    ...            score_pos=[0], useful_pos=[None], bands=[None], verdicts={})[0]["x_mm"] is None
    True
    """
    out = []
    for i, row in enumerate(rows):
        item = {k: _plain(row.get(k)) for k in ROW_FIELDS}
        item.update({k: _plain(features[i].get(k)) for k in FEATURE_FIELDS})
        item.update({"index": i, "pixel_um": pixel_um[i], "score_pos": score_pos[i], "useful_pos": useful_pos[i],
                     "band": bands[i], "verdict": verdicts.get(i)})
        out.append(item)
    return out


def page_shell(*, title: str, help_text: str, token: str, order: str, progress: str) -> str:
    """The HTML shell of the review page; the script fills it from ``/api/items``.

    ``progress`` ("3 of 200 reviewed") is written into the shell, so the count shows before
    the script has run.
    """
    views = "".join(f'<button type="button" data-view="{k}" title="key {k + 1}">{k + 1} {html.escape(p)}</button>'
                    for k, p in enumerate(CROP_PLANES))
    zooms = "".join(f'<button type="button" data-zoom="{z}">{z}x</button>' for z in (1, 2, 3, 4))
    verdicts = "".join(f'<button type="button" data-verdict="{v}" title="key {KEYS[v]}">{LABELS[v]} ({KEYS[v]})</button>'
                       for v in KEYS)
    keys = html.escape(json.dumps({k: v for v, k in KEYS.items()}))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<title>{html.escape(title)}</title><link rel="stylesheet" href="/static/review.css"></head>'
        f'<body data-token="{html.escape(token)}" data-order="{html.escape(order)}" data-keys="{keys}">'
        f'<header><h1>{html.escape(title)}</h1><p class="help">{html.escape(help_text)}</p>'
        '<form id="controls" autocomplete="off">'
        '<label>order <select id="order"><option value="score">highest score first</option>'
        '<option value="useful">most useful first</option></select></label> '
        '<label>sheet <select id="sheet"><option value="">all sheets</option></select></label> '
        '<label>score from <input id="min-score" type="number" step="0.1" size="6"></label> '
        '<label>to <input id="max-score" type="number" step="0.1" size="6"></label> '
        '<button type="button" id="next">next unreviewed (n)</button> '
        '<button type="button" id="undo">undo (u)</button></form>'
        f'<p id="progress" aria-live="polite">{html.escape(progress)}</p><p id="note" class="help"></p></header>'
        '<main><section id="viewer" aria-label="the focused candidate, zoomed">'
        f'<div class="views"><button type="button" data-view="composite" title="key c">c composite</button>{views}</div>'
        f'<div class="zooms">zoom {zooms}</div>'
        '<div id="frame-box"><div id="frame"><img id="big" alt="focused candidate"></div>'
        '<div id="scalebar"><div class="bar"></div><span class="length"></span></div></div>'
        f'<div id="detail"></div><div class="buttons">{verdicts}</div></section>'
        '<div id="grid" class="grid"></div></main>'
        '<script src="/static/review.js"></script></body></html>\n'
    )
