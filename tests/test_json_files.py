"""The files and folders mmsr keeps beside its outputs, read back: a damaged JSON file is named,
with where it breaks and what remakes it (a JSONDecodeError or KeyError traceback before), and so
is a file where a folder of mmsr's should be."""

import pytest

from mmsr.errors import MMSRError
from mmsr.json_files import read_json_object
from mmsr.study.layout import read_origin, read_result


@pytest.mark.parametrize("text,expected", [
    ('{"a": 1', "damaged: not JSON at line 1, column 8"),
    ("", "damaged: empty"),
    ("[1, 2]", "damaged: holds a JSON list, not an object"),
    ('{"b": 2}', "damaged: no 'a'"),
])
def test_a_damaged_file_is_named_with_where_it_breaks(tmp_path, text, expected):
    path = tmp_path / "x.json"
    path.write_text(text)
    with pytest.raises(MMSRError) as error:
        read_json_object(path, remake="make it again", keys=("a",))
    assert str(error.value).startswith(f"{path}: {expected}") and "make it again" in str(error.value)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(MMSRError, match="not UTF-8 text"):
        read_json_object(path, remake="make it again")


def test_a_studys_files_say_what_remakes_them(tmp_path):
    (tmp_path / "study.json").write_text("{}")
    with pytest.raises(MMSRError, match="no 'variant', 'dataset', 'seed', 'evaluations'.*evaluated from its checkpoints"):
        read_result(tmp_path)
    assert read_origin(tmp_path) == {}  # none: the report uses the folder's name
    (tmp_path / "origin.json").write_text('{"name": "s", "fi')
    with pytest.raises(MMSRError, match="origin.json: damaged.*delete it"):
        read_origin(tmp_path)


def test_a_home_or_models_folder_that_is_a_file_is_named(tmp_path, monkeypatch):
    """A NotADirectoryError or FileExistsError traceback from whatever wrote there first, before."""
    from mmsr import paths

    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MMSR_HOME", str(tmp_path / "file"))
    with pytest.raises(MMSRError, match="MMSR_HOME is a file, not a folder"):
        paths.dataset_dir("demo")
    monkeypatch.setenv("MMSR_HOME", str(tmp_path))
    (tmp_path / "models").write_text("")
    with pytest.raises(MMSRError, match="a file where mmsr keeps its prepared models"):
        paths.models_dir()
