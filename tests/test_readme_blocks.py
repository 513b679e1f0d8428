"""Every shell block of README.md runs as written, on tiny data.

README's ```sh blocks are read from the file, so a command edited there is the command tested.
The data they name (labelled stores ``train.zarr`` / ``valid.zarr``, sheets ``S07.zarr`` /
``S08.zarr``, a store in ``inbox/``) is simulated small in a scratch folder that also links
``models/`` and ``pipelines/``; the commands run there unchanged, except for sizes
(:data:`SIZES`: ``simulate-volume --fields 20`` becomes 2). ``review`` serves until stopped: it
runs until it prints its address and answers on it. ``make demo`` / ``make test`` are checked by
``make -n`` (``make test`` is this suite; ``make demo`` is what tests/test_watch.py's demo
tests and ``pipelines/overnight.py --demo`` run).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: size substitutions (pattern, replacement) applied to commands before they run
SIZES = ((re.compile(r"--fields \d+"), "--fields 2"),)


def shell_blocks(text: str) -> list[str]:
    """The bodies of the ```sh fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """The commands of a block: continuation lines joined, comments dropped, sizes substituted."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            cmd = shlex.join(words)
            for pattern, repl in SIZES:
                cmd = pattern.sub(repl, cmd)
            out.append(cmd)
    return out


def readme_commands() -> list[list[str]]:
    return [commands(b) for b in shell_blocks((ROOT / "README.md").read_text(encoding="utf-8"))]


def test_commands_join_lines_drop_comments_and_shrink_sizes():
    block = "# a comment\nscanstream a b \\\n    --c d   # trailing\n\nscanstream simulate-volume sim/ --fields 20\n"
    assert commands(block) == ["scanstream a b --c d", "scanstream simulate-volume sim/ --fields 2"]
    assert shell_blocks("x\n```sh\nmake demo\n```\n```python\nno\n```\n") == ["make demo\n"]


def test_readme_blocks_are_the_two_setup_commands_and_scanstream_verbs():
    blocks = readme_commands()
    assert blocks[0] == ["make demo", "make test"], "the set-up block: exactly the two commands"
    rest = [c for b in blocks[1:] for c in b]
    assert rest and all(c.startswith("scanstream ") for c in rest), rest


@pytest.mark.parametrize("target", ["demo", "test"])
def test_the_setup_commands_are_make_targets(target):
    run = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert ("pipelines/overnight.py --demo" if target == "demo" else "pytest") in run.stdout


def _tiny_data(work: Path) -> None:
    import scanstream as ss

    for name, n, alpha, sheet, seed in (("train.zarr", 48, 0.3, "T1", 1), ("valid.zarr", 48, 0.3, "V1", 2),
                                        ("S07.zarr", 24, 0.1, "S07", 3), ("S08.zarr", 24, 0.1, "S08", 4),
                                        ("inbox/S09.zarr", 24, 0.1, "S09", 5)):
        ss.simulate_store(work / name, objects=n, alpha_fraction=alpha, sheet=sheet, seed=seed)
    for link in ("models", "pipelines"):
        (work / link).symlink_to(ROOT / link)


def _serve_once(cmd: str, work: Path, env: dict) -> None:
    """Start a command that serves until stopped; fetch the address it prints, then stop it."""
    proc = subprocess.Popen(shlex.split(cmd), cwd=work, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and "http://" not in "".join(seen):
            time.sleep(0.2)
        url = re.search(r"http://\S+", "".join(seen))
        assert url and proc.poll() is None, f"{cmd}: {''.join(seen)[-2000:]}"
        with urllib.request.urlopen(url.group(0), timeout=60) as page:
            assert page.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _run_block(cmds: list[str], work: Path) -> None:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}", "MPLBACKEND": "Agg"}
    for cmd in cmds:
        if cmd.startswith("scanstream review "):
            _serve_once(cmd, work, env)
            continue
        run = subprocess.run(shlex.split(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=900,
                             check=False)
        assert run.returncode == 0, f"{cmd}\n{run.stdout[-1500:]}\n{run.stderr[-1500:]}"


@pytest.mark.slow
def test_a_nights_work_runs_as_written(tmp_path):
    blocks = readme_commands()
    night = next(b for b in blocks if any(c.startswith("scanstream train ") for c in b))
    _tiny_data(tmp_path)
    _run_block(night, tmp_path)
    assert (tmp_path / "candidates" / "_manifest.parquet").exists()
    assert (tmp_path / "overnight" / "_manifest.parquet").exists()
    assert (tmp_path / "ft" / "loss_curve.png").exists()


@pytest.mark.slow
def test_from_micrographs_runs_as_written(tmp_path):
    blocks = readme_commands()
    micro = next(b for b in blocks if any(c.startswith("scanstream simulate-volume ") for c in b))
    (tmp_path / "models").symlink_to(ROOT / "models")
    _run_block(micro, tmp_path)
    assert (tmp_path / "picked-candidates" / "_manifest.parquet").exists()
