"""Vertex-like objects in 3-D emulsion, one generator per category.

An object is a set of straight track segments (plus dust lobes and blobs) in *developed*
emulsion coordinates relative to the point the picker reports as the vertex: x, y in um in the
plate plane, z in um of developed depth (positive = deeper; undeveloped depth / shrinkage).
The same :class:`SimObject` feeds both the picker model (``picker.py``, features without any
image) and the microscope (``render.py``), so what an image shows and what the features say
always agree.

Categories (docs/physics.md, "Object classes" and "Look-alikes"):

========== ======================================================================
alpha_th   thorium-series star from Th-228: 5 black prongs (Po-212 or Bi-212 branch)
alpha_u    uranium-series star from Ra-226: 4 black prongs
1vtx       hadron-nucleus interaction: minimum-ionising shower tracks crossing the
           field, grey protons, short black evaporation prongs
2vtx       two nearby vertices (two small stars a few um apart)
track      a cross of unrelated tracks (a false vertex; often at different depths)
scratch    surface scratches: long, broad, faint, straight, at the surface depth
blur       an out-of-focus object: blurred in every focal plane of the crop
dust       black spots: blobs with stubby lobes, no prongs
evap       a low-energy evaporation star: 3-6 short heavily ionising prongs and no
           long track (protons, alphas, heavy fragments): the hard negatives
========== ======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from scanstream.physics import emulsion as ph
from scanstream.physics.emulsion import ALPHA, GREY, HEAVY, LOBE, MIP, PARTICLE, PROTON, SCRATCH
from scanstream.simulate.conditions import SheetConditions

ALPHA_CATEGORIES = ("alpha_th", "alpha_u")
BACKGROUND_CATEGORIES = ("1vtx", "2vtx", "track", "scratch", "blur", "dust", "evap")
CATEGORIES = ALPHA_CATEGORIES + BACKGROUND_CATEGORIES

#: Share of thorium-series stars among alpha decays (unverified; Th dominates in practice).
TH_FRACTION = 0.6

#: Mix of the backgrounds among "others" on a sheet (fractions of all non-alpha objects).
#: Tuned (docs/simulator.md, "Calibration") so the former method lands on the paper's TEST
#: figures; the evaporation stars are the ones whose prongs can all look like alpha ranges.
BACKGROUND_MIX: dict[str, float] = {
    "1vtx": 0.27,
    "2vtx": 0.08,
    "track": 0.18,
    "scratch": 0.06,
    "blur": 0.08,
    "dust": 0.12,
    "evap": 0.21,
}

EMULSION_THICKNESS_UM = ph.LAYER_UM  # one emulsion layer before development (unverified)
FAR_UM = 400.0  # "leaves the field": length given to escaping tracks
RN_DIFFUSION = {"Th": (0.10, 2.5), "U": (0.15, 3.0)}  # P(radon moved), mean displacement (um)
P_BEAM_CROSSING = 0.09  # an unrelated beam track passes through an alpha star
BEAM_SPREAD_DEG = 12.0  # beam tracks enter nearly perpendicular to the plate (unverified)


@dataclass(frozen=True)
class SimObject:
    """One vertex-like object in developed emulsion coordinates (um) around the picked vertex.

    Attributes
    ----------
    category : str
    label : int
        1 alpha decay, 0 other.
    starts, ends : ndarray (k, 3)
        Track segments, developed um (x, y, depth) relative to the picked vertex.
    kinds : ndarray (k,) int8
        MIP, GREY, PROTON, ALPHA, HEAVY, SCRATCH or LOBE.
    residual_end : ndarray (k,)
        Residual range (um, undeveloped) at each segment's end: 0 when the particle stops there.
    ionisation : ndarray (k,)
        Constant dE/dx / minimum for MIP, GREY, SCRATCH and LOBE segments; NaN for stopping
        particles (computed along the track from the residual range).
    widths : ndarray (k,)
        Extra Gaussian width (um) of broad segments (scratches, dust lobes); 0 for tracks.
    blobs : ndarray (m, 4)
        Dust blobs: x, y, depth (developed um), radius (um).
    defocus : float
        Offset (developed um) of the object from the crop's focal planes (blur category).
    depth : float
        Depth of the vertex below the emulsion surface (developed um).
    truth : dict
        Truth columns (without the ``truth_`` prefix).
    """

    category: str
    label: int
    starts: np.ndarray
    ends: np.ndarray
    kinds: np.ndarray
    residual_end: np.ndarray
    ionisation: np.ndarray
    widths: np.ndarray
    blobs: np.ndarray
    defocus: float
    depth: float
    truth: dict[str, Any] = field(default_factory=dict)


class _Builder:
    """Collects segments in undeveloped coordinates and converts them to developed ones."""

    def __init__(self, cond: SheetConditions, depth_dev: float) -> None:
        self.cond = cond
        self.depth = depth_dev  # developed depth of the reference vertex
        self.thick = EMULSION_THICKNESS_UM / cond.shrinkage
        self.segs: list[tuple[np.ndarray, np.ndarray, int, float, float, float]] = []
        self.blobs: list[tuple[float, float, float, float]] = []

    def _dev(self, p: np.ndarray) -> np.ndarray:
        return np.array([p[0], p[1], p[2] / self.cond.shrinkage])

    def add(self, start, direction, length, kind, *, residual_end=0.0, ionisation=np.nan, width=0.0, clip=True):
        """Add a segment from ``start`` (undeveloped um) along ``direction`` for ``length`` um."""
        start = np.asarray(start, float)
        a = self._dev(start)
        b = self._dev(start + np.asarray(direction, float) * length)
        t0, t1 = 0.0, 1.0
        if clip:  # the particle leaves the emulsion layer: the track is cut there
            za, dz = self.depth + a[2], b[2] - a[2]
            if dz == 0.0:
                if not 0.0 <= za <= self.thick:
                    return
            else:
                ta, tb = -za / dz, (self.thick - za) / dz
                t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
            if t1 <= t0:
                return
        s, e = a + (b - a) * t0, a + (b - a) * t1
        self.segs.append((s, e, kind, residual_end + (1.0 - t1) * length, ionisation, width))

    def blob(self, center, radius) -> None:
        c = self._dev(np.asarray(center, float))
        self.blobs.append((c[0], c[1], c[2], radius))

    def build(self, category: str, label: int, truth: dict, *, shift=(0.0, 0.0, 0.0), defocus=0.0) -> SimObject:
        shift_dev = self._dev(np.asarray(shift, float))
        k = len(self.segs)
        starts = np.array([s[0] for s in self.segs]).reshape(k, 3) - shift_dev
        ends = np.array([s[1] for s in self.segs]).reshape(k, 3) - shift_dev
        blobs = np.array(self.blobs, float).reshape(-1, 4)
        blobs[:, :3] -= shift_dev
        truth = dict(truth)
        truth["vertex_depth_um"] = float(self.depth + shift_dev[2])
        return SimObject(
            category=category,
            label=label,
            starts=starts,
            ends=ends,
            kinds=np.array([s[2] for s in self.segs], np.int8),
            residual_end=np.array([s[3] for s in self.segs], float),
            ionisation=np.array([s[4] for s in self.segs], float),
            widths=np.array([s[5] for s in self.segs], float),
            blobs=blobs,
            defocus=float(defocus),
            depth=float(self.depth + shift_dev[2]),
            truth=truth,
        )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def beam_direction(rng: np.random.Generator) -> np.ndarray:
    """A beam-like direction: nearly perpendicular to the plate, going deeper."""
    theta = np.radians(abs(rng.normal(0.0, BEAM_SPREAD_DEG)))
    phi = rng.uniform(0, 2 * np.pi)
    return np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)])


def _cone(rng: np.random.Generator, axis: np.ndarray, max_deg: float) -> np.ndarray:
    """A direction within ``max_deg`` of ``axis`` (uniform in solid angle)."""
    cos_t = rng.uniform(np.cos(np.radians(max_deg)), 1.0)
    phi = rng.uniform(0, 2 * np.pi)
    sin_t = np.sqrt(1 - cos_t**2)
    # an orthonormal pair (u, w) perpendicular to the axis
    ax, ay, az = axis
    if abs(ax) < 0.9:  # u = axis x (1, 0, 0)
        u = np.array([0.0, az, -ay])
    else:  # u = axis x (0, 1, 0)
        u = np.array([-az, 0.0, ax])
    u /= np.sqrt(u @ u)
    w = np.array([ay * u[2] - az * u[1], az * u[0] - ax * u[2], ax * u[1] - ay * u[0]])
    v = cos_t * axis + sin_t * (np.cos(phi) * u + np.sin(phi) * w)
    return v / np.sqrt(v @ v)


def _depth(rng: np.random.Generator, cond: SheetConditions) -> float:
    return float(rng.uniform(0.0, EMULSION_THICKNESS_UM / cond.shrinkage))


def _through_track(b: _Builder, rng: np.random.Generator, point, direction, kind, ionisation) -> None:
    """A track crossing the whole field through ``point`` (undeveloped um)."""
    point = np.asarray(point, float)
    b.add(point - direction * FAR_UM, direction, 2 * FAR_UM, kind, residual_end=1e4, ionisation=ionisation)


def _evaporation_prongs(rng, b: _Builder, n: int, origin, *, light: bool, p_alpha: float = 0.45, p_heavy: float = 0.07):
    """Add ``n`` evaporation prongs (protons, alphas, heavy fragments) from ``origin``.

    Kinetic energy = Coulomb barrier + Gamma(2, T), T drawn per star. A light nucleus (C, N, O)
    has low barriers (about 1 MeV for protons, 3 MeV for alphas), so its protons of 1-2.5 MeV
    and alphas of 3-9 MeV stop within 15-55 um: the range of the radioactive alphas. A heavy
    nucleus (Ag, Br) pushes protons above ~5 MeV and alphas above ~10 MeV: long black or grey
    tracks. Heavy fragments (Li .. O) stop within a few um.
    Returns (particles, energies (MeV), ranges (um)).
    """
    dens = b.cond.density
    u = rng.random(n)
    kinds = np.where(u < p_alpha, ALPHA, np.where(u < p_alpha + p_heavy, HEAVY, PROTON))
    dirs = ph.isotropic_directions(rng, n)
    gam = rng.gamma(2.0, 1.0, n)
    noise = rng.normal(0.0, 1.0, n)
    if light:
        e_p = 1.0 + gam * rng.uniform(0.25, 0.45)
        e_a = 3.0 + gam * rng.uniform(0.7, 1.1)
    else:
        e_p = 5.0 + gam * rng.uniform(1.0, 3.0)
        e_a = 10.0 + gam * rng.uniform(1.0, 3.0)
    e = np.where(kinds == PROTON, e_p, np.where(kinds == ALPHA, e_a, 1.0 + 9.0 * rng.random(n)))
    r = np.where(
        kinds == PROTON,
        ph.proton_range_um(e, dens) * (1.0 + 0.015 * noise),
        np.where(kinds == ALPHA, ph.alpha_range_um(e, dens) + ph.STRAGGLING_UM * noise, ph.heavy_range_um(e, dens)),
    )
    r = np.maximum(r, 0.5)
    for kind, d, length in zip(kinds, dirs, r, strict=True):
        b.add(origin, d, float(length), int(kind))
    return [PARTICLE[int(k)] for k in kinds], [float(x) for x in e], [float(x) for x in r]


def make_alpha(rng: np.random.Generator, cond: SheetConditions, series: str) -> SimObject:
    """A radioactive alpha star (``series`` "Th" or "U") at a random depth."""
    if series == "Th":
        chain, nuclides = ph.thorium_chain(rng)
    else:
        chain, nuclides = "U", ph.U_CHAIN
    energies, ranges = ph.chain_ranges_um(nuclides, rng, cond.density)
    dirs = ph.isotropic_directions(rng, len(nuclides))
    p_rn, mean_rn = RN_DIFFUSION[series]
    disp = np.zeros(3)
    if rng.random() < p_rn:  # the radon atom diffused before it decayed
        disp = ph.isotropic_directions(rng, 1)[0] * rng.exponential(mean_rn)
    b = _Builder(cond, _depth(rng, cond))
    for nuc, d, r in zip(nuclides, dirs, ranges, strict=True):
        origin = disp if nuc in ph.AFTER_RADON else np.zeros(3)
        b.add(origin, d, float(r), ALPHA)
    crossing = rng.random() < P_BEAM_CROSSING
    if crossing:  # an unrelated beam track passes (almost) through the star
        off = ph.isotropic_directions(rng, 1)[0] * rng.uniform(0.0, 2.0)
        grey = rng.random() < 0.3
        _through_track(b, rng, off, beam_direction(rng), GREY if grey else MIP, rng.uniform(1.5, 4) if grey else 1.0)
    # The picker reports the vertex with the most prongs: the radon's when it moved far enough.
    moved = float(np.linalg.norm(disp))
    shift = disp if moved > 1.0 else np.zeros(3)
    truth = {
        "chain": chain,
        "n_prongs": len(nuclides),
        "nuclides": list(nuclides),
        "particles": ["alpha"] * len(nuclides),
        "energies_mev": [float(e) for e in energies],
        "ranges_um": [float(r) for r in ranges],
        "rn_displacement_um": moved,
        "rn_vector_um": [float(x) for x in disp],  # undeveloped um, x, y, depth (deeper positive)
        "crossing_track": bool(crossing),
    }
    return b.build(f"alpha_{series.lower()}", 1, truth, shift=shift)


def make_evap(rng: np.random.Generator, cond: SheetConditions, *, n: int | None = None) -> SimObject:
    """A low-energy evaporation star: 3-6 short black prongs, no long track (hard negative)."""
    b = _Builder(cond, _depth(rng, cond))
    n = int(rng.choice([3, 4, 5, 6], p=[0.25, 0.35, 0.27, 0.13])) if n is None else n
    parts, energies, ranges = _evaporation_prongs(rng, b, n, np.zeros(3), light=True)
    truth = {"chain": "", "n_prongs": n, "particles": parts, "energies_mev": energies, "ranges_um": ranges}
    return b.build("evap", 0, truth)


def make_1vtx(rng: np.random.Generator, cond: SheetConditions) -> SimObject:
    """A hadron-nucleus interaction: beam in, shower and grey tracks out, black evaporation prongs."""
    b = _Builder(cond, _depth(rng, cond))
    beam = beam_direction(rng)
    parts: list[str] = []
    energies: list[float] = []
    ranges: list[float] = []
    if rng.random() < 0.75:  # charged beam particle (else a neutral one: no incoming track)
        b.add(-beam * FAR_UM, beam, FAR_UM, MIP, residual_end=0.0, ionisation=1.0)
        parts.append("beam")
        energies.append(float("nan"))
        ranges.append(float("nan"))
    n_shower = int(rng.poisson(1.3))
    for _ in range(n_shower):
        b.add(np.zeros(3), _cone(rng, beam, 60.0), FAR_UM, MIP, residual_end=1e4, ionisation=1.0)
        parts.append("pion")
        energies.append(float("nan"))
        ranges.append(float("nan"))
    n_grey = int(rng.poisson(0.9))
    for _ in range(n_grey):
        b.add(np.zeros(3), _cone(rng, beam, 90.0), FAR_UM, GREY, residual_end=1e4, ionisation=rng.uniform(1.5, 5.0))
        parts.append("proton")
        energies.append(float(rng.uniform(30, 250)))
        ranges.append(float("nan"))
    n_black = max(int(rng.poisson(2.2)), 3 - n_shower - n_grey)
    heavy = rng.random() < 0.7
    p2, e2, r2 = _evaporation_prongs(rng, b, n_black, np.zeros(3), light=not heavy)
    truth = {
        "chain": "",
        "n_prongs": n_shower + n_grey + n_black,
        "particles": parts + p2,
        "energies_mev": energies + e2,
        "ranges_um": ranges + r2,
        "heavy_target": bool(heavy),
    }
    return b.build("1vtx", 0, truth)


def make_2vtx(rng: np.random.Generator, cond: SheetConditions) -> SimObject:
    """Two small stars a few um apart; the crop is centred on the first."""
    b = _Builder(cond, _depth(rng, cond))
    sep = ph.isotropic_directions(rng, 1)[0] * rng.uniform(2.0, 15.0)
    n1, n2 = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    p1, e1, r1 = _evaporation_prongs(rng, b, n1, np.zeros(3), light=True)
    p2, e2, r2 = _evaporation_prongs(rng, b, n2, sep, light=True)
    if rng.random() < 0.4:  # one of them is a beam interaction
        beam = beam_direction(rng)
        b.add(sep - beam * FAR_UM, beam, FAR_UM, MIP, residual_end=0.0, ionisation=1.0)
    truth = {
        "chain": "",
        "n_prongs": n1,
        "particles": p1 + p2,
        "energies_mev": e1 + e2,
        "ranges_um": r1 + r2,
        "second_vertex_um": float(np.linalg.norm(sep)),
    }
    return b.build("2vtx", 0, truth)


def make_track(rng: np.random.Generator, cond: SheetConditions) -> SimObject:
    """A false vertex: two or three unrelated tracks crossing near one point."""
    thick = EMULSION_THICKNESS_UM / cond.shrinkage
    b = _Builder(cond, float(rng.uniform(5.0, thick - 5.0)))  # the crossing lies inside the emulsion
    n = int(rng.choice([2, 3], p=[0.7, 0.3]))
    parts: list[str] = []
    for _ in range(n):
        # tracks pass within ~1 um in the plane, often at different depths (undeveloped um)
        off = np.array([rng.normal(0, 0.8), rng.normal(0, 0.8), np.clip(rng.normal(0, 5.0), -8.0, 8.0)])
        u = rng.random()
        if u < 0.45:
            _through_track(b, rng, off, beam_direction(rng) if rng.random() < 0.6 else ph.isotropic_directions(rng, 1)[0], MIP, 1.0)
            parts.append("mip")
        elif u < 0.75:
            _through_track(b, rng, off, ph.isotropic_directions(rng, 1)[0], GREY, rng.uniform(1.5, 5.0))
            parts.append("grey")
        else:  # a stopping particle whose last um pass the point
            d = ph.isotropic_directions(rng, 1)[0]
            after = rng.uniform(3.0, 60.0)
            kind = ALPHA if rng.random() < 0.3 else PROTON
            b.add(off - d * FAR_UM, d, FAR_UM + after, kind)
            parts.append(PARTICLE[kind])
    truth = {"chain": "", "n_prongs": 0, "particles": parts, "energies_mev": [], "ranges_um": []}
    return b.build("track", 0, truth)


def make_scratch(rng: np.random.Generator, cond: SheetConditions) -> SimObject:
    """Surface scratches: long broad straight faint lines at the surface, crossing near the centre."""
    b = _Builder(cond, 0.0)
    n = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    for _ in range(n):
        phi = rng.uniform(0, np.pi)
        d = np.array([np.cos(phi), np.sin(phi), 0.0])
        off = np.array([rng.normal(0, 1.0), rng.normal(0, 1.0), 0.3])
        b.add(off - d * FAR_UM, d, 2 * FAR_UM, SCRATCH, residual_end=1e4, ionisation=1.0, width=rng.uniform(0.4, 1.2), clip=False)
    for _ in range(int(rng.poisson(0.7))):  # surface dirt
        b.blob([rng.uniform(-30, 30), rng.uniform(-30, 30), 0.2], rng.uniform(0.6, 2.0))
    truth = {"chain": "", "n_prongs": 0, "particles": [], "energies_mev": [], "ranges_um": [], "scratches": n}
    return b.build("scratch", 0, truth)


def make_dust(rng: np.random.Generator, cond: SheetConditions) -> SimObject:
    """Black spots: one or two blobs with short stubby lobes (the picker's pseudo-prongs)."""
    b = _Builder(cond, _depth(rng, cond))
    n_blobs = int(rng.choice([1, 2], p=[0.75, 0.25]))
    for i in range(n_blobs):
        c = np.zeros(3) if i == 0 else np.array([*rng.normal(0, 4.0, 2), rng.normal(0, 2.0)])
        radius = rng.uniform(0.8, 3.0)
        b.blob(c, radius)
        for d in ph.isotropic_directions(rng, int(rng.integers(2, 6))):
            b.add(c, d, radius + rng.exponential(2.5), LOBE, residual_end=1e4, ionisation=1.0, width=rng.uniform(0.3, 0.9))
    truth = {"chain": "", "n_prongs": 0, "particles": [], "energies_mev": [], "ranges_um": [], "blobs": n_blobs}
    return b.build("dust", 0, truth)


def make_blur(rng: np.random.Generator, cond: SheetConditions) -> SimObject:
    """A compact object (a small star, dust, two close vertices) lying beyond the crop's focal planes.

    The picker found it, but the crop's planes missed it: every part of it is at least 4-7 um
    from the nearest plane, so it is blurred in all three channels.
    """
    inner = str(rng.choice(["evap", "dust", "2vtx"], p=[0.45, 0.30, 0.25]))
    obj = GENERATORS[inner](rng, cond)
    z = np.concatenate([obj.starts[:, 2], obj.ends[:, 2], obj.blobs[:, 2] + obj.blobs[:, 3] / cond.shrinkage, [0.0]])
    gap = rng.uniform(4.0, 7.0)
    half = 3.0  # the outer planes are one z-step from the middle one
    if rng.random() < 0.5:  # planes above the object
        defocus = gap + half - float(z.min())
    else:  # planes below it
        defocus = -(gap + half + float(z.max()))
    truth = dict(obj.truth, underlying=inner)
    return replace(obj, category="blur", label=0, defocus=float(defocus), truth=truth)


GENERATORS = {
    "alpha_th": lambda rng, cond: make_alpha(rng, cond, "Th"),
    "alpha_u": lambda rng, cond: make_alpha(rng, cond, "U"),
    "1vtx": make_1vtx,
    "2vtx": make_2vtx,
    "track": make_track,
    "scratch": make_scratch,
    "blur": make_blur,
    "dust": make_dust,
    "evap": make_evap,
}


def make_object(category: str, rng: np.random.Generator, cond: SheetConditions) -> SimObject:
    """Draw one object of ``category`` under the sheet's conditions."""
    try:
        gen = GENERATORS[category]
    except KeyError:
        raise ValueError(f"unknown object category {category!r} (known: {', '.join(CATEGORIES)})") from None
    return gen(rng, cond)
