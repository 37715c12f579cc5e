"""The benchmark end to end at a few megabytes: every tool's copy is identical to the source.

Times are not asserted (they mean nothing at this size); only that each tool
ran and produced an identical copy, and that pgcopydb is either measured or
plainly reported absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support import ROOT


def test_every_tool_copies_the_schema_identically(tmp_path):
    results = tmp_path / "results.json"
    # Not under tmp_path: the servers' user must reach it, and pytest makes its own tree private.
    workdir = Path(tempfile.mkdtemp(prefix="hexa-bench-smoke-"))
    try:
        run = subprocess.run(
            [sys.executable, "-m", "bench", "--size-mb", "5", "--rounds", "1", "--workdir", str(workdir),
             "--json", str(results)],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            env=os.environ | {"PYTHONPATH": str(ROOT), "COLUMNS": "120"},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    tools = json.loads(results.read_text(encoding="utf-8"))["tools"]

    assert set(tools) == {"engine", "pg_dump", "pg_dump_z0", "pgcopydb", "reference"}
    for name in ("engine", "pg_dump", "pg_dump_z0", "reference"):
        assert tools[name]["available"], name
        assert tools[name]["runs"] == 1 and tools[name]["all_identical"], (name, tools[name]["attempts"])
    assert tools["engine"]["sequences_carried"] and tools["pg_dump"]["sequences_carried"]
    assert tools["engine"]["peak_mb"] > 0

    if shutil.which("pgcopydb"):
        assert tools["pgcopydb"]["available"] and tools["pgcopydb"]["all_identical"], tools["pgcopydb"]
    else:
        assert not tools["pgcopydb"]["available"]
        assert "pgcopydb: absent" in run.stdout
    assert "Copy of one service schema" in run.stdout
