"""The main job end to end with the real offline models (MiniLM, converted DINOv2-S), tiny sizes."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def _mmsr(*args, home):
    env = dict(os.environ, MMSR_HOME=str(home), MMSR_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "mmsr_cli.app", *args], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_data_cache_train_eval_recommend_with_real_models(mmsr_home, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        'dataset = "demo"\n'
        '[encoders]\ntext_model = "minilm"\nvision_model = "dinov2-s"\ntext_top_blocks = 1\nvision_top_blocks = 1\n'
        'max_text_len = 16\nimage_size = 56\n'
        '[model]\nfusion = "merge-attn"\ndim = 32\nfusion_heads = 2\n'
        '[optim]\nepochs = 2\nbatch_size = 32\nlr = 1e-3\n'
    )
    _mmsr("data", "demo", "--items", "60", "--users", "40", home=mmsr_home)
    _mmsr("cache", "build", "--dataset", "demo", "--config", str(config), "--num-workers", "0", home=mmsr_home)
    _mmsr("train", "--from-cache", "--config", str(config), "--run", "tiny", home=mmsr_home)
    metrics = [json.loads(line) for line in (mmsr_home / "runs/tiny/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    # Both splits from one process: the real encoders' start-up (~15 s here) is paid once.
    reports = json.loads(_mmsr("eval", "--run", "tiny", "--faiss", "--split", "test,cold", "--json",
                               home=mmsr_home))["splits"]
    assert list(reports) == ["test", "cold"]
    assert reports["cold"]["seconds"]["items"] == 0  # the item tower ran once, for test
    for split, report in reports.items():
        assert report["split"] == split and report["items"] == 60 and report["users"] > 0
        assert set(report["metrics"]) == {"HR@10", "NDCG@10", "HR@20", "NDCG@20", "HR@50", "NDCG@50"}
        assert all(0.0 <= value <= 1.0 for value in report["metrics"].values())
        assert report["metrics"]["HR@50"] >= report["metrics"]["HR@10"]
        assert (mmsr_home / f"runs/tiny/eval_{split}.json").is_file()
    top = json.loads(_mmsr("recommend", "--run", "tiny", "--history", "i00001,i00002", "-k", "5", "--json",
                           home=mmsr_home))
    ids = [row["item"] for row in top["items"]]
    assert len(ids) == 5 and len(set(ids)) == 5 and not {"i00001", "i00002"} & set(ids)
