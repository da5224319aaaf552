"""Atomic export: `rewardrt export` killed midway (SIGTERM, SIGKILL) leaves the previous OUT.onnx
bit for bit and no partial file; SIGTERM removes the working folder, and the working folder a
SIGKILL leaves is removed by the next export to that folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rewardrt.export.errors import CheckpointError
from rewardrt.export.config import ExportConfig
from rewardrt.export.exporter import export
from rewardrt.export.workdir import PREFIX, export_workdir, remove_stale_workdirs
from rewardrt.runtime.integrity import check_artifact


def _start(checkpoint: Path, out: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rewardrt", "export", str(checkpoint), "-o", str(out), "--precision", "fp32",
           "--validation-size", "50", "--threads", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)


def _midway(folder: Path) -> bool:
    """True once the export has written a graph into its working folder."""
    return any((w / "traced.onnx").exists() or (w / "fused.onnx").exists() for w in folder.glob(PREFIX + "*"))


def test_killed_export_keeps_the_previous_file(tiny_checkpoint, tiny_fp32, tmp_path):
    previous = tiny_fp32[0].read_bytes()
    runs = {}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        folder = tmp_path / sig.name
        folder.mkdir()
        (folder / "OUT.onnx").write_bytes(previous)
        runs[sig] = (folder, _start(tiny_checkpoint, folder / "OUT.onnx", tmp_path / f"{sig.name}.log"))
    pending = dict(runs)
    deadline = time.monotonic() + 240
    while pending:
        assert time.monotonic() < deadline, "the exports never reached the middle"
        for sig, (folder, proc) in list(pending.items()):
            assert proc.poll() is None, (tmp_path / f"{sig.name}.log").read_text()
            if _midway(folder):
                proc.send_signal(sig)
                del pending[sig]
        time.sleep(0.005)
    for sig, (folder, proc) in runs.items():
        proc.wait(120)
        assert (folder / "OUT.onnx").read_bytes() == previous, sig.name
        left = sorted(p.name for p in folder.iterdir())
        if sig == signal.SIGTERM:
            assert proc.returncode == 128 + signal.SIGTERM
            assert left == ["OUT.onnx"]  # the working folder went with the SystemExit
        else:
            assert proc.returncode == -signal.SIGKILL
            stale = [name for name in left if name.startswith(PREFIX)]
            assert len(stale) == 1 and sorted(left) == sorted(["OUT.onnx", *stale])
            # the next export to this folder removes it, even one that then fails
            with pytest.raises(CheckpointError):
                export(folder / "no-checkpoint", folder / "OUT.onnx", ExportConfig())
            assert sorted(p.name for p in folder.iterdir()) == ["OUT.onnx"]
            assert check_artifact(folder / "OUT.onnx") == 2


def test_live_workdirs_are_left_alone(tmp_path):
    with export_workdir(tmp_path) as work:
        (work / "candidate.onnx").write_bytes(b"partial")
        assert remove_stale_workdirs(tmp_path) == []
        assert work.is_dir()
        fresh = tmp_path / (PREFIX + "unlocked")  # just created, lock not yet taken
        fresh.mkdir()
        assert remove_stale_workdirs(tmp_path) == []
    assert not work.exists()
    old = time.time() - 3600
    os.utime(fresh, (old, old))
    assert remove_stale_workdirs(tmp_path) == [fresh]
    assert list(tmp_path.iterdir()) == []
