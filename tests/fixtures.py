"""Shared test helpers: tiny labelled crop stores (``from fixtures import make_store``).

``make_store`` draws simple synthetic crops (not the physics simulator): positives are bright
4-5 prong stars from the centre, negatives are blobs and crossing lines. They are enough for a
small network to learn in seconds, which is what pipeline tests need.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import zarr
from PIL import Image

from scanstream.store import CROP_SIZE, create_store

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """A script of the project (``benchmarks/x.py``, ``pipelines/y.py``) imported as a module, for its functions."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def draw_crops(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """uint8 (n, 224, 224, 3): stars for label 1, blobs / lines for label 0."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    yy, xx = np.mgrid[0:CROP_SIZE, 0:CROP_SIZE].astype(np.float32)
    c = CROP_SIZE / 2
    out = np.empty((n, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i, lab in enumerate(labels):
        img = np.full((CROP_SIZE, CROP_SIZE), 200.0, np.float32) + rng.normal(0, 6, (CROP_SIZE, CROP_SIZE))
        if lab == 1:
            for _ in range(int(rng.integers(4, 6))):
                a = rng.uniform(0, 2 * np.pi)
                length = rng.uniform(50, 100)
                t = (xx - c) * np.cos(a) + (yy - c) * np.sin(a)
                d = np.abs(-(xx - c) * np.sin(a) + (yy - c) * np.cos(a))
                img -= 140 * ((d < 2.5) & (t > 0) & (t < length))
        else:
            for _ in range(int(rng.integers(1, 3))):
                bx, by = rng.uniform(40, 184, 2)
                img -= 120 * (((xx - bx) ** 2 + (yy - by) ** 2) < rng.uniform(30, 200))
            a = rng.uniform(0, np.pi)
            d = np.abs(-(xx - c) * np.sin(a) + (yy - c) * np.cos(a))
            img -= 60 * (d < 1.2)
        img = np.clip(img, 0, 255).astype(np.uint8)
        out[i] = img[..., None]
    return out


def make_store(path: Path, n: int = 64, *, alpha_fraction: float = 0.25, seed: int = 0, sheet: str = "S1", labelled: bool = True):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < alpha_fraction).astype(np.int8)
    labels[:2] = [1, 0]  # both classes always present
    crops = draw_crops(labels, seed=seed)
    rows = [
        {
            "object_id": f"{sheet}-{seed:03d}-{i:06d}",
            "experiment": "E07",
            "module": 99,
            "plate": 9,
            "sheet": sheet,
            "x_mm": float(rng.uniform(0, 50)),
            "y_mm": float(rng.uniform(0, 50)),
            "z_mm": float(rng.uniform(-0.5, 0)),
            "label": int(labels[i]) if labelled else -1,
            "category": ("alpha_th" if labels[i] else "dust") if labelled else None,
            "multiplicity": (5 if labels[i] else 3),
            "track_lengths_um": [30.0] * (5 if labels[i] else 3),
        }
        for i in range(n)
    ]
    return create_store(path, crops, rows, source={"stage": "test", "seed": seed})


def drop_table_digest(path: Path) -> None:
    """Forget the table digest of a complete store, as in stores written before it was recorded."""
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.items() if k != "table_digest"})


def make_checkpoint(path: Path, seed: int, crops: np.ndarray) -> Path:
    """A resnet18 at 32 px with BatchNorm statistics of ``crops`` and spread logits, saved at ``path``."""
    import torch

    from scanstream.network.checkpoint import save_checkpoint
    from scanstream.network.model import ModelConfig, build_model, preprocess

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="resnet18", input_size=32)
    model = build_model(cfg).train()
    with torch.no_grad():
        model(preprocess(torch.from_numpy(crops), 32))  # BatchNorm statistics of real crops
        model.head[-1].weight.mul_(50.0)  # spread the logits
    save_checkpoint(path, model.eval(), model_config=cfg, train_config={"seed": seed}, data_hash="test", metrics={})
    return path


#: Plane size of the small z-stacks below: fast tests (real E07 planes are 440 x 512).
STACK_H, STACK_W = 40, 56


def stack_info(images: list[dict], *, h: int = STACK_H, w: int = STACK_W, **over) -> dict:
    """A scanner info.json (docs/physics.md) for ``images``, with top-level keys replaced by ``over``."""
    info = {
        "DocumentType": {"ver": "20170810", "unit": "mm"},
        "Stage": {"Location": "RIKEN", "ID": 999, "Objective": 50},
        "EmulsionType": {"Experiment": "E07", "Module": 99, "Plate": 9, "Sh": 2.0},
        "ImageType": {"Height": h, "Width": w, "Depth": 8},
        "Interval": [0.000283, 0.000284, 0.003],
        "Images": images,
    }
    info.update(over)
    return info


def write_stack(folder: Path, *, n: int = 5, h: int = STACK_H, w: int = STACK_W, x: float = 1.0, y: float = -2.0,
                seed: int = 0, info_over: dict | None = None) -> tuple[np.ndarray, list[float]]:
    """A z-stack folder of random planes, listed from the top (highest z) down, 3 um apart.

    Returns the planes and their stage z (mm), both by z ascending.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    planes, images = [], []
    for k in range(n):
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"{k + 1}.png")
        images.append({"Path": f"{k + 1}.png", "x": x, "y": y, "z": round(-0.106 - 0.003 * k, 6)})
        planes.append(a)
    (folder / "info.json").write_text(json.dumps(stack_info(images, h=h, w=w, **(info_over or {}))))
    return np.stack(planes[::-1]), [im["z"] for im in images][::-1]
