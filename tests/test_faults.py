"""The fault battery (benchmarks/faults.py) at a reduced size: prepared data, train-gan, train-joint's joint
phase and the demo each killed with SIGKILL at a random moment, resumed, and compared with an uninterrupted run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # a dozen pfanet processes: about a minute on 2 idle cores


def test_every_kill_is_survived_with_identical_results(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks/faults.py"), "--kills", "4", "--seed", "1",
                             "--targets", "prepare,train-gan,train-joint-joint,demo", "--work", str(tmp_path / "work")],
                            capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == []
    assert (report["kills_tried"], report["kills_survived"], report["largest_difference"]) == (4, 4, 0.0)
    assert set(report["per_target"]) == {"prepare", "train-gan", "train-joint-joint", "demo"}
