"""Smoke test of bench/scale.py: every phase of the main job runs as its `mmsr` command and reports.

The encoders are the tiny random-initialised ones (plumbing); the benchmark's own runs use the
real offline models. No timing is asserted: the figures belong to the benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_scale_small_runs_every_phase(tmp_path, tiny_models):
    overrides = [f"encoders.text_model={tiny_models['text']}", f"encoders.vision_model={tiny_models['vision']}",
                 "encoders.max_text_len=16", "model.dim=32", "optim.batch_size=64"]
    # eval-cold is eval-test's command on another split: one of them is enough here.
    phases = "data,info,cache,train-ram,train-mmap,eval-test"
    command = [sys.executable, str(REPO / "bench" / "scale.py"), "--shape", "small", "--home", str(tmp_path),
               "--phases", phases, "--users", "200", "--items", "150", "--image-size", "32"]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert list(result["phases"]) == phases.split(",")
    for name, phase in result["phases"].items():
        assert phase["peak_rss_mb"] > 0 and phase["wall_s"] > 0, name
    assert result["phases"]["info"]["raw"]["users"] == 200
    assert result["phases"]["cache"]["items_per_s"] > 0
    ram, mmap = result["phases"]["train-ram"], result["phases"]["train-mmap"]
    assert ram["steps"] == mmap["steps"] > 0
    # The same data, seed and states through the two feeds train the same model.
    assert ram["valid"] == mmap["valid"]
    assert result["phases"]["eval-test"]["items"] == 150 and "HR@10" in result["phases"]["eval-test"]["metrics"]
    assert result["mmap_over_ram_steps"] > 0
    assert (tmp_path / "runs" / "scale-small-mmap" / "metrics.jsonl").is_file()
