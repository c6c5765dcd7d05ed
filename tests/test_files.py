"""common.files: a killed or failed write never leaves half a file, or a temporary one, behind."""
import pytest

from common.files import atomic_path, atomic_write_text


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.ipynb"
    with atomic_path(target, ".ipynb") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".ipynb") and tmp != target
        tmp.write_text("whole")
        assert not target.exists()                      # nothing at the final name until the end
    assert target.read_text() == "whole"

    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer died")
    assert target.read_text() == "whole"                # the old file stays
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.ipynb"]   # no temporary left


def test_atomic_write_text_replaces_whole(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_text(target, "1")
    atomic_write_text(target, "22")
    assert target.read_text() == "22" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
