"""The listing of ``ingest --format images``: one row per crop, read as text and parsed into object rows.

Columns are matched case-insensitively against :data:`COLUMN_ALIASES`. Besides the file, the
object id and the stage position, a listing may carry the picker's per-object outputs, which
models that read the picker's features need (a store without them is refused by such a model,
never scored as if the object had no prongs):

``multiplicity``
    The number of prongs (an integer >= 0).
``track_lengths_um``
    The prong lengths in um, one per prong (so as many as ``multiplicity`` where both are
    given), each finite and >= 0. In Parquet a list column; in CSV one text field with the
    lengths separated by ``;`` (``"31.5;12.0;140"``), empty for an object without prongs.
``track_dips_deg``
    Where the picker gives directions: each prong's dip angle in degrees, in [-90, 90], one per
    length, in the same form.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from scanstream.candidates.ids import check_sheet_name
from scanstream.errors import IngestError

#: Accepted listing column names (case-insensitive) for each object-table column.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "file": ("file", "filename", "file_name", "path", "image", "image_path", "crop"),
    "object_id": ("object_id", "objectid", "id", "object", "obj_id"),
    "x_mm": ("x_mm", "x", "stage_x", "stage_x_mm"),
    "y_mm": ("y_mm", "y", "stage_y", "stage_y_mm"),
    "z_mm": ("z_mm", "z", "stage_z", "stage_z_mm"),
    "label": ("label",),
    "sheet": ("sheet", "volume"),
    "plate": ("plate",),
    "module": ("module",),
    "experiment": ("experiment",),
    "category": ("category",),
    "multiplicity": ("multiplicity",),
    "track_lengths_um": ("track_lengths_um", "track_lengths", "prong_lengths_um", "prong_lengths", "lengths_um"),
    "track_dips_deg": ("track_dips_deg", "track_dips", "prong_dips_deg", "prong_dips", "dips_deg"),
}
#: The separator of a CSV listing's per-prong values (``"31.5;12.0;140"``).
LIST_SEPARATOR = ";"
#: Physical range of each per-prong column: (low, high).
PRONG_RANGES = {"track_lengths_um": (0.0, math.inf), "track_dips_deg": (-90.0, 90.0)}
REQUIRED_COLUMNS = ("file", "object_id", "x_mm", "y_mm", "z_mm")
LABEL_WORDS = {
    "1": 1, "alpha": 1, "positive": 1, "true": 1,
    "0": 0, "other": 0, "negative": 0, "false": 0,
    "-1": -1, "unknown": -1, "": -1,
}  # fmt: skip


def read_listing(path: Path) -> pa.Table:
    """Read a CSV or Parquet listing with every column as text (ids keep leading zeros)."""
    if not path.is_file():
        raise IngestError(f"{path}: listing not found")
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="") as f:
                header = next(csv.reader(f), None)
            if not header:
                raise IngestError(f"{path}: empty listing (no header line)")
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in header}, strings_can_be_null=False
                ),
            )
        else:
            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"{path}: unreadable listing ({exc})") from None
    return table


def resolve_columns(names: Sequence[str], listing: Path) -> dict[str, str]:
    """Map object-table column -> listing column, using :data:`COLUMN_ALIASES`."""
    lower = {n.strip().lower(): n for n in names}
    out: dict[str, str] = {}
    for target, aliases in COLUMN_ALIASES.items():
        hits = [lower[a] for a in aliases if a in lower]
        if len(hits) > 1:
            raise IngestError(f"{listing}: columns {hits} all look like {target!r}; keep one")
        if hits:
            out[target] = hits[0]
        elif target in REQUIRED_COLUMNS:
            raise IngestError(f"{listing}: no {target!r} column (accepted names: {', '.join(aliases)})")
    return out


def text_of(v: Any) -> str:
    """A listing cell as stripped text ("" for empty, None or NaN)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v).strip()


def parse_row(raw: dict[str, Any], cols: dict[str, str], cfg: Any) -> dict[str, Any]:
    """One listing row -> object row; raises ValueError with the reason."""
    row: dict[str, Any] = {"object_id": text_of(raw[cols["object_id"]])}
    if not row["object_id"]:
        raise ValueError("missing object id")
    for axis in ("x_mm", "y_mm", "z_mm"):
        text = text_of(raw[cols[axis]])
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"stage {axis} {text!r} is not a number (mm)") from None
        if not math.isfinite(value):
            raise ValueError(f"stage {axis} {text!r} is not a finite number (mm)")
        row[axis] = value
    if "label" in cols:
        text = text_of(raw[cols["label"]]).lower()
        text = text.removesuffix(".0")
        if text not in LABEL_WORDS:
            raise ValueError(f"label {text!r} is not 1/alpha, 0/other or -1/unknown")
        row["label"] = LABEL_WORDS[text]
    for name, default in (("sheet", cfg.sheet), ("experiment", cfg.experiment), ("category", None)):
        text = text_of(raw[cols[name]]) if name in cols else ""
        row[name] = text or default
    if row.get("sheet"):
        check_sheet_name(row["sheet"])
    for name, default in (("plate", cfg.plate), ("module", cfg.module), ("multiplicity", None)):
        text = text_of(raw[cols[name]]) if name in cols else ""
        if text:
            try:
                row[name] = int(float(text))
            except ValueError:
                raise ValueError(f"{name} {text!r} is not an integer") from None
            if row[name] != float(text):
                raise ValueError(f"{name} {text!r} is not an integer")
        else:
            row[name] = default
    if row.get("multiplicity") is not None and row["multiplicity"] < 0:
        raise ValueError(f"multiplicity {row['multiplicity']} is negative")
    for name in PRONG_RANGES:
        if name in cols:
            row[name] = prong_values(raw[cols[name]], name)
    check_prongs(row, lengths_given="track_lengths_um" in cols)
    if row.get("multiplicity") == 0 and "track_lengths_um" in cols and row.get("track_lengths_um") is None:
        row["track_lengths_um"] = []  # known to have no prongs, not unknown
    return {k: v for k, v in row.items() if v is not None}


def prong_values(cell: Any, name: str) -> list[float] | None:
    """One object's per-prong values from a listing cell: a list (Parquet) or ``;``-separated text (CSV).

    None for an empty cell (not given); ValueError for a value that is no number or out of
    :data:`PRONG_RANGES`.
    """
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    items = list(cell) if isinstance(cell, list | tuple) else str(cell).split(LIST_SEPARATOR)
    if not isinstance(cell, list | tuple) and not str(cell).strip():
        return None
    lo, hi = PRONG_RANGES[name]
    out = []
    for item in items:
        try:
            value = float(str(item).strip())
        except ValueError:
            raise ValueError(f"{name} {cell!r}: {item!r} is not a number") from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ValueError(f"{name} {cell!r}: {value} is out of range [{lo}, {hi}]")
        out.append(value)
    return out


def check_prongs(row: dict[str, Any], *, lengths_given: bool) -> None:
    """ValueError unless multiplicity, lengths and dips agree: one length per prong, one dip per length.

    With ``lengths_given`` (the listing has a lengths column) an object with prongs must list them.
    """
    lengths, dips, mult = row.get("track_lengths_um"), row.get("track_dips_deg"), row.get("multiplicity")
    if lengths is not None and mult is not None and len(lengths) != mult:
        raise ValueError(f"multiplicity {mult} but {len(lengths)} prong length(s)")
    if mult and lengths is None and lengths_given:
        raise ValueError(f"multiplicity {mult} but no prong lengths")
    if dips is not None and len(dips) != len(lengths or []):
        raise ValueError(f"{len(dips)} prong dip(s) but {len(lengths or [])} prong length(s)")
