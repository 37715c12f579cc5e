"""The online cutover's window at 1x and 10x rows, same write rate: printed, and the ratio of the medians of five cutovers asserted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import ROOT


def test_the_window_does_not_grow_with_the_data(tmp_path, capsys):
    results = tmp_path / "window.json"
    workdir = Path(tempfile.mkdtemp(prefix="hexa-bench-window-"))  # the servers' user must reach it
    try:
        run = subprocess.run(
            [sys.executable, "-m", "bench", "--window", "--size-mb", "3", "--rounds", "5", "--jobs", "2",
             "--workdir", str(workdir), "--json", str(results)],
            cwd=ROOT, capture_output=True, text=True, timeout=1200,
            env=os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "120"},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = json.loads(results.read_text(encoding="utf-8"))
    small, large = found["sizes"]["1x"], found["sizes"]["10x"]
    with capsys.disabled():
        print(
            f"\ncutover window: {small['window_median']:.3f} s at {small['rows']:,} rows,"
            f" {large['window_median']:.3f} s at {large['rows']:,} rows ({found['ratio']:.2f}x)"
        )
    assert large["rows"] >= 9.9 * small["rows"]
    assert small["writes_lost"] == large["writes_lost"] == 0
    assert found["ratio"] < 1.5 and large["window_median"] <= 2.0
    assert "target window at 10x" in run.stdout
