"""The microscope's z-stack metadata: ``info.json`` and the later ``image.json``, validated.

``info.json`` (docs/physics.md, "Scanner z-stack metadata")::

    {"DocumentType": {"ver": "20170810", "unit": "mm"},
     "EmulsionType": {"Experiment": "E07", "Module": 99, "Plate": 9, "Sh": 2.0},
     "ImageType": {"Height": 440, "Width": 512, "Depth": 8},
     "Interval": [0.000283, 0.000284, 0.003],
     "Images": [{"Path": "1.png", "x": 1.000, "y": -2.000, "z": -0.1060}, ...]}

``Interval`` is mm per pixel in x and y and mm per step in z; x, y, z are stage positions in mm.
Rules: ``DocumentType.unit`` must be ``"mm"``, ``Interval`` three positive numbers small enough
to be mm (at most 0.01 mm per pixel and 0.1 mm per step, so micrometres given as mm are caught),
``ImageType`` the image size and ``Depth`` 8, and every ``Images`` entry a ``Path`` and numeric
``x``, ``y``, ``z``. ``EmulsionType`` and ``Stage`` are optional and kept.

``image.json``, written by newer stages, differs in four ways, all accepted:

* ``AffineP2S`` instead of ``Interval``: the pixel-to-stage matrix (mm per pixel), a flat list
  ``[a, b, c, d]`` or ``[a, b, c, d, e, f]`` (x_stage = a col + b row (+ e), y_stage = c col +
  d row (+ f)) or the nested 2 x 2 / 2 x 3 / 3 x 3 form. The pixel size is the length of each
  column, (hypot(a, c), hypot(b, d)); the linear part is kept (``affine_mm``) and used for
  pixel-to-stage positions about the image centre; e and f are kept but not added (the
  images' x, y already give the stage position). An identity matrix (1 mm per pixel: some
  stages write it and keep the scale elsewhere) fails the 0.01 mm per pixel rule. The z step is
  the median spacing of the images' z.
* ``DocumentType`` may be missing (its unit, when given, must still be mm).
* ``Stage`` and ``EmulsionType`` values may be strings, and empty: numbers in strings are
  read as numbers (``"Sh": "1.9"``), empty ones as missing.
* Images may carry ``stagez`` (used for z when ``z`` is missing) and ``extrastage``; both kept.

Every image path must resolve inside the stack's folder (``../x.png`` or an absolute path
elsewhere is refused, naming the field and the path). Planes must be evenly spaced in z: a
gap of more than 1.5 steps is a missing plane. A problem is one line naming the file and key.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scanstream.errors import StackError

INFO_FILE = "info.json"
IMAGE_FILE = "image.json"
META_FILES = (INFO_FILE, IMAGE_FILE)  # tried in this order
MAX_PIXEL_MM = 0.01  # 10 um per pixel: coarser is not an emulsion microscope (um given as mm?)
MAX_STEP_MM = 0.1
GAP_STEPS = 1.5  # a z gap larger than this many steps is a missing plane


def mm_to_um(mm: float) -> float:
    """mm -> micrometres, rounded to 1e-9 um so 0.000284 mm reads 0.284, not 0.28400000000000003."""
    return round(mm * 1000.0, 9)


@dataclass(frozen=True)
class StackImage:
    """One focal plane: its file (relative to the stack folder) and stage position (mm)."""

    path: str
    x_mm: float
    y_mm: float
    z_mm: float


@dataclass(frozen=True)
class StackInfo:
    """A validated info.json / image.json.

    Attributes
    ----------
    path : Path
        The metadata file.
    height, width : int
        Image size (px).
    pixel_mm : tuple of float
        (x, y) mm per pixel.
    step_mm : float
        mm per z step.
    images : tuple of StackImage
        As listed (not yet sorted by z).
    raw : dict
        The whole file.
    affine_mm : tuple of float or None
        image.json: (a, b, c, d, e, f) of ``AffineP2S`` (module docstring); None for info.json.
    """

    path: Path
    height: int
    width: int
    pixel_mm: tuple[float, float]
    step_mm: float
    images: tuple[StackImage, ...]
    raw: dict
    affine_mm: tuple[float, ...] | None = None

    @property
    def folder(self) -> Path:
        return self.path.parent

    def emulsion(self, key: str) -> Any:
        """``EmulsionType[key]`` (Experiment, Module, Plate, Sh) or None (empty strings too)."""
        return _value((self.raw.get("EmulsionType") or {}).get(key))


def _value(v: Any) -> Any:
    """A metadata value with strings read as numbers where they are, empty strings as None."""
    if isinstance(v, str):
        t = v.strip()
        if not t:
            return None
        try:
            return int(t)
        except ValueError:
            try:
                return float(t)
            except ValueError:
                return t
    return v


def _key(obj: Any, dotted: str, path: Path) -> Any:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise StackError(f"{path}: missing key {dotted}")
        cur = cur[part]
    return cur


def _number(value: Any, where: str, path: Path, *, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StackError(f"{path}: {where} is {value!r}, expected a number ({unit})")
    return float(value)


def _interval(raw: dict, path: Path) -> tuple[float, float, float]:
    interval = _key(raw, "Interval", path)
    if not isinstance(interval, list) or len(interval) != 3:
        raise StackError(f"{path}: Interval is {interval!r}, expected 3 numbers in mm (x, y per pixel, z per step)")
    iv = [_number(v, f"Interval[{i}]", path, unit="mm") for i, v in enumerate(interval)]
    for i, (v, limit, what) in enumerate(zip(iv, (MAX_PIXEL_MM, MAX_PIXEL_MM, MAX_STEP_MM),
                                             ("per pixel", "per pixel", "per step"), strict=True)):
        if not 0 < v <= limit:
            raise StackError(f"{path}: Interval[{i}] = {v} mm {what} is outside (0, {limit}] mm; micrometres given as mm?")
    return iv[0], iv[1], iv[2]


def _affine(raw: dict, path: Path) -> tuple[float, ...]:
    """AffineP2S as (a, b, c, d, e, f) (module docstring)."""
    m = _key(raw, "AffineP2S", path)
    bad = StackError(f"{path}: AffineP2S is {m!r}, expected [a, b, c, d(, e, f)] or a 2 x 2 / 2 x 3 / 3 x 3 matrix (mm per pixel)")
    if isinstance(m, list) and m and all(isinstance(r, list) for r in m):
        if len(m) not in (2, 3) or any(len(r) not in (2, 3) or len(r) != len(m[0]) for r in m):
            raise bad
        flat = [m[0][0], m[0][1], m[1][0], m[1][1]] + ([m[0][2], m[1][2]] if len(m[0]) == 3 else [0.0, 0.0])
    elif isinstance(m, list) and len(m) in (4, 6):
        flat = list(m) + ([0.0, 0.0] if len(m) == 4 else [])
    else:
        raise bad
    vals = tuple(_number(v, f"AffineP2S[{i}]", path, unit="mm per pixel") for i, v in enumerate(flat))
    a, b, c, d = vals[:4]
    if abs(a * d - b * c) == 0:
        raise StackError(f"{path}: AffineP2S {list(vals[:4])} is singular")
    return vals


def _pixel_and_step(raw: dict, path: Path, images: list[StackImage]) -> tuple[tuple[float, float], float, tuple | None]:
    if "Interval" in raw or "AffineP2S" not in raw:
        iv = _interval(raw, path)
        return (iv[0], iv[1]), iv[2], None
    aff = _affine(raw, path)
    px = (math.hypot(aff[0], aff[2]), math.hypot(aff[1], aff[3]))
    for i, v in enumerate(px):
        if not 0 < v <= MAX_PIXEL_MM:
            raise StackError(f"{path}: AffineP2S gives {v} mm per pixel in {'xy'[i]}, outside (0, {MAX_PIXEL_MM}] mm "
                             "(an identity matrix? the scale must be in the file)")
    z = np.unique(np.round([im.z_mm for im in images], 9))
    if len(z) < 2:
        raise StackError(f"{path}: one z position: the z step cannot be read from {path.name} without Interval")
    else:
        step = float(np.median(np.diff(z)))
        if not 0 < step <= MAX_STEP_MM:
            raise StackError(f"{path}: the images' z spacing is {step} mm, outside (0, {MAX_STEP_MM}] mm")
    return px, step, aff


def _image(e: Any, i: int, path: Path, seen: set[str]) -> StackImage:
    if not isinstance(e, dict):
        raise StackError(f"{path}: Images[{i}] is {e!r}, expected an object")
    zkey = "z" if "z" in e or "stagez" not in e else "stagez"
    for key in ("Path", "x", "y", zkey):
        if key not in e:
            raise StackError(f"{path}: missing key Images[{i}].{key}")
    if not isinstance(e["Path"], str) or not e["Path"]:
        raise StackError(f"{path}: Images[{i}].Path is {e['Path']!r}, expected a file name")
    if e["Path"] in seen:
        raise StackError(f"{path}: Images[{i}].Path {e['Path']!r} is listed twice")
    folder = path.parent.resolve()
    target = (path.parent / e["Path"]).resolve()
    if not target.is_relative_to(folder):
        raise StackError(f"{path}: field {path.parent.name!r}: Images[{i}].Path {e['Path']!r} is outside the stack folder")
    seen.add(e["Path"])
    xyz = [_number(e[k], f"Images[{i}].{k}", path, unit="mm") for k in ("x", "y", zkey)]
    return StackImage(e["Path"], *xyz)


def _check_spacing(images: list[StackImage], step: float, path: Path) -> None:
    z = sorted(im.z_mm for im in images)
    for lo, hi in itertools.pairwise(z):
        if step > 0 and hi - lo > GAP_STEPS * step:
            raise StackError(f"{path}: field {path.parent.name!r}: missing plane(s) between z = {lo} and {hi} mm "
                             f"(step {step} mm)")


def read_stack_info(path: str | os.PathLike) -> StackInfo:
    """Read and validate an info.json or image.json (see the module docstring for the rules).

    Raises
    ------
    StackError
        Unreadable JSON, a missing key, a wrong unit, an implausible value, an image path outside
        the folder or a missing plane; the message names the file and the key.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise StackError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise StackError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise StackError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if path.name != IMAGE_FILE or "DocumentType" in raw:
        unit = _key(raw, "DocumentType.unit", path)
        if unit != "mm":
            raise StackError(f"{path}: DocumentType.unit is {unit!r}, expected 'mm'")
    if path.name != IMAGE_FILE:
        _interval(raw, path)  # info.json: Interval first, as it always was
    dims = {}
    for key in ("Height", "Width", "Depth"):
        v = _value(_key(raw, f"ImageType.{key}", path))
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise StackError(f"{path}: ImageType.{key} is {v!r}, expected a positive integer")
        dims[key] = v
    if dims["Depth"] != 8:
        raise StackError(f"{path}: ImageType.Depth is {dims['Depth']}, only 8-bit images are supported")
    entries = _key(raw, "Images", path)
    if not isinstance(entries, list) or not entries:
        raise StackError(f"{path}: Images is {entries!r}, expected a non-empty list")
    seen: set[str] = set()
    images = [_image(e, i, path, seen) for i, e in enumerate(entries)]
    pixel, step, aff = _pixel_and_step(raw, path, images)
    sh = _value((raw.get("EmulsionType") or {}).get("Sh"))
    if sh is not None and (_number(sh, "EmulsionType.Sh", path, unit="shrinkage factor") <= 0):
        raise StackError(f"{path}: EmulsionType.Sh is {sh!r}, expected a positive number")
    _check_spacing(images, step, path)
    return StackInfo(path, dims["Height"], dims["Width"], pixel, step, tuple(images), raw, aff)


def stack_meta_file(folder: Path) -> Path | None:
    """The metadata file of a stack folder (info.json, else image.json), or None."""
    for name in META_FILES:
        if (folder / name).is_file():
            return folder / name
    return None
