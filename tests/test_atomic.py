"""scanstream.atomic: the one directory swap (with and without the kernel's exchange), its
recovery after a kill between renames, atomic_dir, and the one atomic PNG writer."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from scanstream import atomic
from scanstream.errors import InputError


def _dir(path, text):
    path.mkdir()
    (path / "f").write_text(text)
    return path


@pytest.fixture(params=["exchange", "renames"])
def swap(request, monkeypatch):
    """Run a test with the kernel's exchange, and again on a filesystem without one."""
    if request.param == "renames":
        monkeypatch.setattr(atomic, "try_exchange", lambda a, b: False)
    return request.param


def test_exchange_dirs_puts_new_in_place_and_old_at_new(tmp_path, swap):
    new, cur = _dir(tmp_path / "new", "new"), _dir(tmp_path / "cur", "old")
    atomic.exchange_dirs(new, cur, aside=tmp_path / "aside")
    assert (cur / "f").read_text() == "new" and (new / "f").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cur", "new"]


def test_exchange_dirs_to_a_missing_path_is_a_rename(tmp_path, swap):
    new = _dir(tmp_path / "new", "new")
    atomic.exchange_dirs(new, tmp_path / "absent")
    assert (tmp_path / "absent" / "f").read_text() == "new" and not new.exists()


def test_atomic_dir_replaces_a_directory_and_leaves_nothing_beside(tmp_path, swap):
    _dir(tmp_path / "out", "old")
    with atomic.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "g").write_text("new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["g"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_dir_failure_keeps_the_old_directory(tmp_path, swap):
    _dir(tmp_path / "out", "old")
    with pytest.raises(RuntimeError), atomic.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "g").write_text("half")
        raise RuntimeError("killed")
    assert (tmp_path / "out" / "f").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_recover_after_the_first_rename_finishes_the_swap(tmp_path):
    new, aside = _dir(tmp_path / "new", "new"), _dir(tmp_path / "aside", "old")  # old moved aside, new not yet in
    assert atomic.recover_exchange(new, tmp_path / "cur", aside=aside)
    assert (tmp_path / "cur" / "f").read_text() == "new" and (new / "f").read_text() == "old"
    assert not aside.exists()


def test_recover_undoes_the_swap_when_new_is_not_ready(tmp_path):
    new, aside = _dir(tmp_path / "new", "half"), _dir(tmp_path / "aside", "old")
    assert atomic.recover_exchange(new, tmp_path / "cur", aside=aside, ready=lambda p: False)
    assert (tmp_path / "cur" / "f").read_text() == "old" and (new / "f").read_text() == "half"


def test_recover_after_the_second_rename_moves_the_old_one_to_new(tmp_path):
    cur, aside = _dir(tmp_path / "cur", "new"), _dir(tmp_path / "aside", "old")
    assert atomic.recover_exchange(tmp_path / "new", cur, aside=aside)
    assert (cur / "f").read_text() == "new" and (tmp_path / "new" / "f").read_text() == "old"


def test_recover_without_an_interrupted_swap_changes_nothing(tmp_path):
    cur, new = _dir(tmp_path / "cur", "cur"), _dir(tmp_path / "new", "new")
    assert not atomic.recover_exchange(new, cur)
    assert (cur / "f").read_text() == "cur" and (new / "f").read_text() == "new"


def test_write_png_saves_a_figure_atomically_and_closes_it(tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1), dpi=50)
    ax.plot([0, 1], [0, 1])
    out = atomic.write_png(tmp_path / "f.png", fig, dpi=100)
    assert out == tmp_path / "f.png" and not plt.fignum_exists(fig.number)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (200, 100)  # dpi 100, not the figure's 50
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_write_png_closes_the_figure_and_leaves_nothing_when_saving_fails(tmp_path):
    fig, _ = plt.subplots(figsize=(2, 1))
    with pytest.raises(ValueError):
        atomic.write_png(tmp_path / "f.png", fig, dpi=-1)
    assert not plt.fignum_exists(fig.number) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4)])
def test_write_png_round_trips_an_array(tmp_path, shape):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = atomic.write_png(tmp_path / "a.png", arr)
    with Image.open(out) as im:
        assert np.array_equal(np.asarray(im), arr)


def test_write_png_takes_a_pil_image(tmp_path):
    img = Image.new("RGB", (3, 2), (10, 20, 30))
    with Image.open(atomic.write_png(tmp_path / "p.png", img)) as im:
        assert im.getpixel((2, 1)) == (10, 20, 30)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8)])
def test_write_png_refuses_what_is_not_an_image(tmp_path, bad):
    with pytest.raises(InputError, match=f"{tmp_path / 'b.png'}: a PNG is written from uint8"):
        atomic.write_png(tmp_path / "b.png", bad)
    assert list(tmp_path.iterdir()) == []
