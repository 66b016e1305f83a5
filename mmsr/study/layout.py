"""Where a study's files live: `$MMSR_HOME/studies/NAME/` (see `mmsr.study.runner`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mmsr import paths
from mmsr.errors import MMSRError
from mmsr.json_files import read_json_object
from mmsr.study.spec import Study, load_study

RESULT_FILE = "study.json"  # in a run directory, written last: the run is trained and evaluated
STUDY_FILE = "study.toml"  # the study file as it was run
ORIGIN_FILE = "origin.json"  # the study's name, file and command line, for the report


def read_origin(out: Path) -> dict:
    """A study directory's origin.json ({} when absent)."""
    path = out / ORIGIN_FILE
    return read_json_object(path, remake="delete it: it only names the study and the command that made this folder, "
                                         "which the report then leaves out") if path.is_file() else {}


def read_result(run: Path) -> dict:
    """A finished run's study.json (its variant, dataset, seed and evaluations)."""
    return read_json_object(run / RESULT_FILE, keys=("variant", "dataset", "seed", "evaluations"),
                            remake="delete it and run `mmsr study run` again: the run is evaluated from its "
                                   "checkpoints, not trained anew")


def study_dir(name: str | Path) -> Path:
    return paths.resolve("studies", name)


def make_study_dir(out: Path) -> Path:
    """`out` made (`study run`, `study merge`), refused in one line where a file stands in its way."""
    return paths.make_folder(out, "study", hint="pass --out a folder: a new one, or a study's")


def ran_study_dir(name: str | Path) -> Path:
    """The study directory a command that reads finished runs is given (`study report`,
    `study merge`), refusing the study file itself, the easy slip, with the name to give."""
    out = study_dir(name)
    if not (out / STUDY_FILE).is_file() and Path(name).is_file():
        try:
            named = load_study(Path(name), check_configs=False).name
        except MMSRError:
            named = "NAME"
        raise MMSRError("a study file, not a study directory", where=name,
                        hint=f"give the directory its runs went to: `{named}` (after `mmsr study run {name}`)")
    return out


def typed_name(out: Path) -> str:
    """How a user names study directory `out` on the command line (`--out`, `mmsr study
    report`): its name when it lies under $MMSR_HOME/studies, else its path."""
    return out.name if out == study_dir(out.name) else str(out)


def load_run_study(out: Path) -> tuple[Study, str]:
    """The study a study directory was run from (its copied file) and the command that ran it."""
    if not (out / STUDY_FILE).is_file():
        raise MMSRError("not a study directory (no study.toml)", where=out,
                        hint="run it first with `mmsr study run FILE`")
    origin = read_origin(out)
    study = load_study(out / STUDY_FILE, check_configs=False)
    study = replace(study, name=origin.get("name", out.name), path=Path(origin.get("file", study.path)))
    return study, origin.get("command", "")


def study_command(study: Study, out: Path, datasets=None, seeds=None, sets=None) -> str:
    """The `mmsr study run` command that makes study directory `out` (its report's "Reproduce")."""
    try:
        shown = study.path.relative_to(Path.cwd())
    except ValueError:
        shown = study.path
    words = ["mmsr study run", str(shown)]
    words += [f"--dataset {','.join(datasets)}"] if datasets else []
    words += [f"--seeds {','.join(map(str, seeds))}"] if seeds else []
    words += [f"--set {item}" for item in sets or []]
    words += [f"--out {typed_name(out)}"] if out != study_dir(study.name) else []
    return " ".join(words)
