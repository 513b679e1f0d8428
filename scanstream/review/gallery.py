"""Galleries: candidate crops on a static HTML page and a PNG contact sheet.

The rows come from :func:`scanstream.candidates.query.query_candidates` (highest score first); their crops
come from the crop stores, located by the candidate row's ``store_index`` (checked against the
object id) and, when a store was moved or rebuilt, by object id. The review page, with its
planes, zoom and verdicts, is built by :mod:`scanstream.review.page`.

Layout of a gallery directory::

    index.html          one card per candidate: crop, id, score, probability, rank, position
    crops/000001.png    the crops, numbered in page order (names never derive from ids)
    contact_sheet.png   a grid of thumbnails with rank, id and score
    gallery.json        the rows shown, the filters and the source table (marks a gallery)
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont

from scanstream.atomic import atomic_dir, write_bytes, write_png, write_text
from scanstream.candidates.query import PARTIAL_LABEL, CandidateFilter, query_candidates
from scanstream.candidates.table import require_complete
from scanstream.errors import InputError
from scanstream.review.adapt import ORDERS, check_useful, useful_rows
from scanstream.store import CropStore, open_store

logger = logging.getLogger(__name__)

MARKER = "gallery.json"
THUMB_PX = 112


# -- finding crops ------------------------------------------------------------------------


class CropLookup:
    """Crops of candidate rows, read from a set of complete crop stores.

    Parameters
    ----------
    stores : sequence of path-like or CropStore
        Stores that hold the candidates' crops.
    """

    def __init__(self, stores: Sequence[str | os.PathLike | CropStore]) -> None:
        if not stores:
            raise InputError("no crop store given to read candidate crops from (use --store)")
        self.stores = [s if isinstance(s, CropStore) else open_store(s) for s in stores]
        self._ids = [s.table.column("object_id") for s in self.stores]
        self._index: dict[int, dict[str, int]] = {}

    def _by_id(self, k: int) -> dict[str, int]:
        if k not in self._index:
            self._index[k] = {oid: i for i, oid in enumerate(self._ids[k].to_pylist())}
        return self._index[k]

    def locate(self, object_id: str, store: str | None = None, store_index: int | None = None) -> tuple[int, int]:
        """``(store number, row)`` of ``object_id``; the recorded store and row are tried first.

        Raises
        ------
        InputError
            The object is in none of the stores.
        """
        order = list(range(len(self.stores)))
        if store:
            recorded = os.path.realpath(store)
            order.sort(key=lambda k: os.path.realpath(self.stores[k].path) != recorded)
        if store_index is not None:
            for k in order:
                if 0 <= store_index < self.stores[k].n and self._ids[k][int(store_index)].as_py() == object_id:
                    return k, int(store_index)
        for k in order:
            row = self._by_id(k).get(object_id)
            if row is not None:
                return k, row
        names = ", ".join(str(s.path) for s in self.stores)
        raise InputError(f"candidate {object_id!r} (store {store}) is in none of the crop stores given: {names}")

    def read(self, rows: Sequence[dict[str, Any]]) -> np.ndarray:
        """Crops for ``rows`` (dicts with object_id and optionally store, store_index).

        Returns
        -------
        ndarray, uint8 (k, 224, 224, 3)
            In the order of ``rows``; each store is read once, chunk by chunk.
        """
        where = [self.locate(r["object_id"], r.get("store"), r.get("store_index")) for r in rows]
        out = np.empty((len(rows), 224, 224, 3), np.uint8)
        for k in sorted({w[0] for w in where}):
            pos = [i for i, w in enumerate(where) if w[0] == k]
            out[pos] = self.stores[k].read_rows(np.array([where[i][1] for i in pos], np.int64))
        return out


def recorded_stores(rows: pa.Table) -> list[str]:
    """The distinct store paths recorded in candidate rows (column ``store``)."""
    if "store" not in rows.column_names:
        raise InputError("candidate rows have no 'store' column; give the crop stores with --store")
    return sorted({s for s in rows.column("store").to_pylist() if s})


# -- rendering ----------------------------------------------------------------------------


def png_bytes(crop: np.ndarray) -> bytes:
    """PNG encoding of one uint8 (224, 224, 3) crop."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(crop)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _fmt(v: Any, spec: str) -> str:
    return "" if v is None else format(v, spec)


def card_caption(row: dict[str, Any]) -> list[str]:
    """Caption lines of one candidate card (plain text; escape before putting in HTML)."""
    lines = [str(row["object_id"])]
    score = f"score {_fmt(row.get('score'), '.3f')}"
    if row.get("probability") is not None:
        score += f"  p {_fmt(row.get('probability'), '.3f')}"
    if row.get("rank") is not None:
        score += f"  rank {row['rank']}"
    lines.append(score)
    lines.append(
        f"sheet {row.get('sheet', '')}  plate {row.get('plate', '')}"
    )
    lines.append(
        f"x {_fmt(row.get('x_mm'), '.3f')}  y {_fmt(row.get('y_mm'), '.3f')}  z {_fmt(row.get('z_mm'), '.4f')} mm"
    )
    return lines


PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em; background: #f4f4f4; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em 0; }
.help { color: #555; margin: 0 0 1em 0; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
.card { background: #fff; border: 3px solid #ddd; border-radius: 6px; padding: 6px; width: 236px; }
.card img { width: 224px; height: 224px; image-rendering: pixelated; display: block; }
.card .cap { font-size: 11px; line-height: 1.35; word-break: break-all; }
.card .id { font-weight: bold; font-size: 12px; }
.card.selected .id::after { content: " \\2605"; color: #b36b00; }
"""


def render_page(
    rows: Sequence[dict[str, Any]],
    image_urls: Sequence[str],
    *,
    title: str,
    help_text: str = "",
) -> str:
    """The HTML page: one card per row, in the given order; every value from the data is HTML-escaped."""
    cards = []
    for i, (row, url) in enumerate(zip(rows, image_urls)):
        cap = card_caption(row)
        cls = "card selected" if row.get("selected") else "card"
        cards.append(
            f'<div class="{cls}" id="card-{i}" data-index="{i}" data-object-id="{html.escape(str(row["object_id"]))}">'
            f'<img src="{html.escape(url)}" alt="{html.escape(cap[0])}" loading="lazy">'
            f'<div class="cap"><div class="id">{html.escape(cap[0])}</div>'
            + "".join(f"<div>{html.escape(line)}</div>" for line in cap[1:])
            + "</div></div>"
        )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"help\">{html.escape(help_text)}</p>"
        f"<div class=\"grid\">{''.join(cards)}</div>"
        + "</body></html>\n"
    )


def contact_sheet(crops: np.ndarray, rows: Sequence[dict[str, Any]], *, columns: int = 10, thumb: int = THUMB_PX) -> Image.Image:
    """A grid of thumbnails, each captioned with rank, object id and score.

    Parameters
    ----------
    crops : ndarray, uint8 (k, 224, 224, 3)
    rows : sequence of dict
        The candidates in the same order (object_id, score, rank).
    columns : int
        Thumbnails per grid row.
    thumb : int
        Thumbnail edge in pixels.
    """
    if columns < 1:
        raise InputError(f"contact sheet columns must be >= 1, got {columns}")
    k = len(crops)
    cols = max(1, min(columns, k))
    nrows = max(1, -(-k // cols))
    cap_h = 28
    sheet = Image.new("RGB", (cols * (thumb + 4) + 4, nrows * (thumb + cap_h + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=10)
    for i in range(k):
        r, c = divmod(i, cols)
        x0, y0 = 4 + c * (thumb + 4), 4 + r * (thumb + cap_h + 4)
        img = Image.fromarray(crops[i]).resize((thumb, thumb), Image.Resampling.BILINEAR)
        sheet.paste(img, (x0, y0))
        row = rows[i]
        oid = str(row["object_id"])
        oid = oid if len(oid) <= 22 else "~" + oid[-21:]
        rank = f"#{row['rank']} " if row.get("rank") is not None else ""
        draw.text((x0, y0 + thumb + 1), oid, fill=(0, 0, 0), font=font)
        draw.text((x0, y0 + thumb + 13), f"{rank}score {_fmt(row.get('score'), '.2f')}", fill=(60, 60, 60), font=font)
    return sheet


# -- the gallery directory -----------------------------------------------------------------


@dataclass(frozen=True)
class GalleryResult:
    """Where a gallery was written and how many candidates it shows."""

    out: Path
    html: Path
    contact_sheet: Path
    count: int
    partial: bool = False


def gallery_rows(
    candidates: str | os.PathLike, filters: CandidateFilter | None = None, *, allow_partial: bool = False
) -> pa.Table:
    """Candidate rows for a gallery: the filtered rows, highest score first."""
    return query_candidates(candidates, filters or CandidateFilter(top=200), allow_partial=allow_partial)


def ordered_rows(candidates: str | os.PathLike, filters: CandidateFilter | None = None, *, order: str = "score",
                 seed: int = 0, allow_partial: bool = False) -> pa.Table:
    """Candidate rows highest score first (``order="score"``), or in the review's useful order."""
    if order == "score":
        return gallery_rows(candidates, filters, allow_partial=allow_partial)
    if order != "useful":
        raise InputError(f"gallery order must be one of {', '.join(ORDERS)}, got {order!r}")
    f = filters or CandidateFilter(top=200)
    return useful_rows(candidates, sheet=check_useful(f), top=f.top, seed=seed)[0]


def write_gallery(
    candidates: str | os.PathLike,
    out: str | os.PathLike,
    *,
    stores: Sequence[str | os.PathLike] | None = None,
    filters: CandidateFilter | None = None,
    columns: int = 10,
    contact_limit: int = 200,
    allow_partial: bool = False,
    order: str = "score",
    seed: int = 0,
) -> GalleryResult:
    """Write a gallery directory for the filtered candidates (see the module docstring).

    Parameters
    ----------
    candidates : path-like
        Candidate table directory.
    out : path-like
        Gallery directory; built beside it and swapped in, so a failure leaves the old one.
        An existing directory that is not a gallery is refused.
    stores : sequence of path-like, optional
        Crop stores with the crops (default: the stores recorded in the rows).
    filters : CandidateFilter, optional
        Which candidates (default: the 200 highest scores).
    columns : int
        Thumbnails per row of the contact sheet.
    contact_limit : int
        At most this many thumbnails on the contact sheet (the page shows all rows).
    allow_partial : bool
        Show a table without its manifest (an unfinished run) instead of refusing it; the
        page's title and ``gallery.json`` then say it is partial.
    order : {"score", "useful"}
        Highest score first, or the review's useful order (:mod:`scanstream.review.adapt`;
        only the sheet and top filters apply).
    seed : int
        Seed of the useful order.
    """
    out = Path(out)
    if out.exists() and not (out / MARKER).exists():
        raise InputError(f"{out}: exists and is not a scanstream gallery; choose a new --out directory")
    if columns < 1:
        raise InputError(f"contact sheet columns must be >= 1, got {columns}")
    partial = require_complete(candidates, allow_partial=allow_partial) is None
    table = ordered_rows(candidates, filters, order=order, seed=seed, allow_partial=allow_partial)
    rows = table.to_pylist()
    lookup = CropLookup(list(stores) if stores else recorded_stores(table))
    crops = lookup.read(rows) if rows else np.zeros((0, 224, 224, 3), np.uint8)

    with atomic_dir(out) as tmp:
        (tmp / "crops").mkdir()
        urls = []
        for i, crop in enumerate(crops):
            name = f"crops/{i + 1:06d}.png"
            write_bytes(tmp / name, png_bytes(crop))
            urls.append(name)
        shown = min(len(rows), contact_limit)
        write_png(tmp / "contact_sheet.png", contact_sheet(crops[:shown], rows[:shown], columns=columns))
        title = f"scanstream candidates: {Path(candidates).name}" + (f" [{PARTIAL_LABEL}]" if partial else "")
        first = "highest score first" if order == "score" else "in the review's useful order (a sample of every score band)"
        help_text = f"{len(rows)} candidates, {first} (score = logit; star = selected by the threshold)."
        write_text(tmp / "index.html", render_page(rows, urls, title=title, help_text=help_text))
        f = filters or CandidateFilter(top=200)
        meta = {
            "candidates": str(Path(candidates).resolve()),
            "stores": [str(s.path) for s in lookup.stores],
            "filters": asdict(f),
            "order": order,
            "seed": seed,
            "count": len(rows),
            "partial": partial,
            "rows": [{k: v for k, v in r.items()} for r in rows],
        }
        write_text(tmp / MARKER, json.dumps(meta, indent=1, default=str))
    logger.info("gallery of %d candidates in %s", len(rows), out)
    return GalleryResult(out=out, html=out / "index.html", contact_sheet=out / "contact_sheet.png", count=len(rows),
                         partial=partial)
