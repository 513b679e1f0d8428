"""The files of a training run's directory, and the writers of its text and figure outputs.

Every file is written atomically (:mod:`scanstream.atomic`): a reader, or a rerun after a kill,
sees the previous file or the complete new one. The checkpoint and the training state are
written by :mod:`scanstream.network.checkpoint`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from scanstream.atomic import write_text
from scanstream.evaluation.figures import plot_run_loss_curve

CHECKPOINT_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
HISTORY_FILE = "history.csv"
CURVE_FILE = "loss_curve.png"
CONFIG_FILE = "config.json"
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "smoothed_val_loss", "val_ap", "images_per_s", "seconds", "best")


def write_config(out_dir: Path, resolved: dict[str, Any]) -> Path:
    """config.json: the resolved configuration of the run."""
    return write_text(Path(out_dir) / CONFIG_FILE, json.dumps(resolved, indent=2, sort_keys=True))


def write_history(history: list[dict], out_dir: Path, *, keep: str = "best") -> None:
    """history.csv (one row per epoch) and loss_curve.png (train, val, smoothed val loss; the epoch ``keep`` kept)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k) for k in HISTORY_COLUMNS})
    write_text(Path(out_dir) / HISTORY_FILE, buf.getvalue())
    plot_run_loss_curve(history, Path(out_dir) / CURVE_FILE, keep=keep)  # atomic itself (atomic.write_png)
