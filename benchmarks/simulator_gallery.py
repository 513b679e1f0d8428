"""A gallery of simulated crops per category, for a person to judge realism.

Draws a few crops of every category with the picker's features under each (multiplicity,
prong lengths) and whether the former method selects it, so image and features can be
compared by eye (:func:`scanstream.simulate.gallery.make_gallery`).

Usage::

    python benchmarks/simulator_gallery.py docs/simulator/gallery.png
    python benchmarks/simulator_gallery.py docs/simulator/gallery_planes.png --channels
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scanstream.simulate.gallery import make_gallery


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--per-category", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", action="store_true", help="also show the three focal planes")
    a = p.parse_args(argv)
    make_gallery(a.out, per_category=a.per_category, seed=a.seed, channels=a.channels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
