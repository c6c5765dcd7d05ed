"""common.params: params.yaml + params/<profile>.yaml, and the frozen, typed object it returns."""
import copy
import json
import pickle
import shutil
from pathlib import Path

import pytest
import yaml

from common.params import FrozenList, Params, ParamsError, load_params, override, thaw, write_resolved

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke():
    return load_params(ROOT / "params.yaml", "smoke")


def test_sections_read_as_keys_only(smoke):
    z = smoke["zhang2021"]
    assert z["epochs"] == 2 and z["tcn"]["visual"] == [16, 16] and smoke["profile"] == "smoke"
    base_order = list(yaml.safe_load((ROOT / "params.yaml").read_text())["zhang2021"])
    assert "epochs" in z and z.get("nope", 3) == 3 and list(z) == base_order
    assert isinstance(z, dict) and isinstance(z["tcn"], Params) and isinstance(z["seeds"], FrozenList)
    assert not hasattr(z, "epochs")             # one way to read a value: by key


def test_it_equals_prints_and_serialises_as_the_plain_dict(smoke, tmp_path):
    plain = thaw(smoke)
    assert type(plain) is dict and type(plain["zhang2021"]["seeds"]) is list
    assert smoke == plain and plain == smoke and repr(smoke) == repr(plain)
    assert json.dumps(smoke) == json.dumps(plain)
    assert yaml.safe_dump(smoke) == yaml.safe_dump(plain) and yaml.dump(smoke) == yaml.dump(plain)
    a, b = write_resolved(smoke, tmp_path / "a"), write_resolved(plain, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_it_is_frozen_and_copies_are_plain(smoke):
    z = smoke["zhang2021"]
    for change in (lambda: z.__setitem__("epochs", 3), lambda: z.update(epochs=3), lambda: z.pop("epochs"),
                   lambda: setattr(z, "epochs", 3), lambda: z["seeds"].append(1),
                   lambda: z["tcn"]["visual"].__setitem__(0, 1)):
        with pytest.raises(TypeError, match="read-only.*override"):
            change()
    mine = copy.deepcopy(smoke)
    mine["zhang2021"]["seeds"].append(1)
    assert type(mine) is dict and smoke["zhang2021"]["seeds"] == [0]
    assert type(z.copy()) is dict and type(copy.copy(z)) is dict and type({**z}) is dict
    back = pickle.loads(pickle.dumps(smoke))                   # as a worker process receives it
    assert back == smoke and type(back["zhang2021"]["seeds"]) is FrozenList


def test_override_checks_types_and_gives_the_base_type(smoke):
    changed = override(smoke, {"zhang2021": {"epochs": 5, "tcn": {"visual": [4]}}, "liu2023": {"lr": 1}})
    z = changed["zhang2021"]
    assert z["epochs"] == 5 and z["tcn"]["visual"] == [4] and smoke["zhang2021"]["epochs"] == 2
    assert type(changed["liu2023"]["lr"]) is float            # an int where the base has a float
    assert type(changed) is Params and type(z["tcn"]["visual"]) is FrozenList
    for bad, where in [({"zhang2021": {"epochs": 5.0}}, r"'zhang2021\.epochs' = 5\.0 has the wrong type"),
                       ({"zhang2021": {"seeds": [0.5]}}, r"'zhang2021\.seeds\[0\]' = 0\.5"),
                       ({"ms_va": {"stages": [[1, 2.0]]}}, r"'ms_va\.stages\[0\]\[1\]'"),
                       ({"zhang2021": {"drop_invalid": 1}}, r"'zhang2021\.drop_invalid' = 1"),
                       ({"zhang2021": {"lr": None}}, r"'zhang2021\.lr' = None"),
                       ({"zhang2021": {"tcn": 3}}, r"'zhang2021\.tcn' must be a mapping")]:
        with pytest.raises(ParamsError, match=where):
            override(smoke, bad)


def test_every_value_has_its_base_type_in_every_profile():
    base = load_params(ROOT / "params.yaml", "default")
    for profile in ("smoke", "paper"):
        def same(a, b, where):
            assert type(a) is type(b), (profile, where, a, b)
            if isinstance(a, dict):
                for k in a:
                    same(a[k], b[k], f"{where}.{k}")
        same(base, load_params(ROOT / "params.yaml", profile), "")


def _copy_tree(tmp_path) -> Path:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "params", tmp_path / "params")
    return tmp_path / "params.yaml"


def test_profile_files_are_ordered_like_the_base_and_short():
    base = list(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for path in sorted((ROOT / "params").glob("*.yaml")):
        sections = list(yaml.safe_load(path.read_text()))
        assert sections == [s for s in base if s in sections], path
        assert max(map(len, path.read_text().splitlines())) <= 110, path


def test_a_missing_profile_file_or_an_old_profiles_section_is_named(tmp_path):
    path = _copy_tree(tmp_path)
    (tmp_path / "params" / "paper.yaml").unlink()
    with pytest.raises(ParamsError, match=r"params/paper\.yaml: not found"):
        load_params(path, "paper")
    assert load_params(path, "smoke")["profile"] == "smoke"
    path.write_text(path.read_text() + "profiles:\n  smoke: {}\n")
    with pytest.raises(ParamsError, match="profiles.*no longer read.*params/<profile>.yaml"):
        load_params(path, "smoke")


def test_resolved_files_are_sorted_even_after_oyaml(smoke, tmp_path):
    """openSMILE's dependencies import oyaml, which makes PyYAML dump dicts in insertion order: the
    resolved section files (what DVC hashes) and the Params dump must not depend on that."""
    before = [p.read_bytes() for p in write_resolved(smoke, tmp_path / "before")]
    import oyaml  # noqa: F401  (patches PyYAML's dict representers on import)
    after = [p.read_bytes() for p in write_resolved(smoke, tmp_path / "after")]
    assert before == after
    plain = thaw(smoke)
    assert yaml.dump(smoke) == yaml.dump(plain) and yaml.safe_dump(smoke) == yaml.safe_dump(plain)


# ---------------------------------------------------------------- the base's schema and the ranges

def _edited(tmp_path, key: str, value=None, file: str = "params.yaml", rename: str = "", raw: str = "") -> Path:
    """A copy of params.yaml and params/ where `file` has `key` (dotted) set to `value`, renamed to
    `rename`, deleted (value None), or written as the `raw` YAML text (e.g. 1e-3, which YAML 1.1 reads
    as a string). Returns the copied params.yaml."""
    path = _copy_tree(tmp_path)
    target = tmp_path / file
    data = yaml.safe_load(target.read_text())
    *parents, last = key.split(".")
    node = data
    for name in parents:
        node = node.setdefault(name, {})
    items = list(node.items()) + ([] if last in node else [(last, None)])
    node.clear()
    for k, v in items:
        if k != last:
            node[k] = v
        elif rename:
            node[rename] = v
        elif raw or value is not None:
            node[k] = "@raw@" if raw else value
    target.write_text(yaml.safe_dump(data, sort_keys=False).replace("'@raw@'", raw))
    return path


@pytest.mark.parametrize("edit, message", [
    (dict(key="data.source", rename="sorce"), r"unknown key 'data\.sorce' \(did you mean 'source'\?\)"),
    (dict(key="zhang2021.d_q", value=32), r"unknown key 'zhang2021\.d_q'.*params_schema\.yaml.*\(d_q: int\)"),
    (dict(key="zhang2021.epochs", value="six"), r"'zhang2021\.epochs' = 'six' has the wrong type.*declares int"),
    (dict(key="zhang2021.lr", raw="1e-3"), r"'zhang2021\.lr' = '1e-3' has the wrong type.*YAML 1\.1.*write 0\.001"),
    (dict(key="zhang2021.min_lr", raw="1e-6"), r"'zhang2021\.min_lr' = '1e-6'.*write 1\.0e-06"),
    (dict(key="zhang2021.seeds", value=[]), r"'zhang2021\.seeds' = \[\] must be a non-empty list"),
    (dict(key="zhang2021.batch_size", value=0), r"'zhang2021\.batch_size' = 0 is out of range: must be >= 1"),
    (dict(key="zhang2021.epochs", value=-1), r"'zhang2021\.epochs' = -1 is out of range: must be >= 1"),
    (dict(key="corpus.no_face_fraction", value=1.5),
     r"'corpus\.no_face_fraction' = 1\.5 is out of range: must be in \[0, 1\]"),
    (dict(key="corpus.split_fractions", value=[0.6, -0.2, 0.2]),
     r"'corpus\.split_fractions'.*each item must be in \[0, 1\]"),
    (dict(key="zhang2021.lr", value=0.0), r"'zhang2021\.lr' = 0\.0 is out of range: must be > 0"),
    (dict(key="data.source"), r"'data\.source' missing \(declared in .*params_schema\.yaml\)"),
    (dict(key="zhang2021.tcn", rename="tcm"), r"unknown key 'zhang2021\.tcm' \(did you mean 'tcn'\?\)"),
])
def test_the_base_is_checked_against_its_schema_and_ranges(tmp_path, edit, message):
    """Before the schema a typo in the base (`data.sorce`) loaded and failed as KeyError: 'source'
    inside a notebook, and batch_size 0, seeds [] or epochs -1 loaded and ran."""
    path = _edited(tmp_path, **edit)
    with pytest.raises(ParamsError, match=message) as err:
        load_params(path, "smoke")
    assert str(err.value).startswith(f"{path}:")               # the base is named, not params/smoke.yaml


def test_a_typo_in_the_base_is_not_blamed_on_the_profile(tmp_path):
    """smoke.yaml overrides zhang2021.epochs: a base that misspells it used to be reported as an
    unknown key of params/smoke.yaml."""
    path = _edited(tmp_path, "zhang2021.epochs", rename="epoch")
    with pytest.raises(ParamsError, match=r"unknown key 'zhang2021\.epoch' \(did you mean 'epochs'\?\)") as err:
        load_params(path, "smoke")
    assert str(err.value).startswith(f"{path}:") and "smoke.yaml" not in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (dict(key="zhang2021.epochs", value=-1), r"'zhang2021\.epochs' = -1 is out of range: must be >= 1"),
    (dict(key="zhang2021.seeds", value=[]), r"'zhang2021\.seeds' = \[\] must be a non-empty list"),
    (dict(key="fer.batch_size", value=0), r"'fer\.batch_size' = 0 is out of range"),
    (dict(key="liu2023.lr", raw="1e-3"), r"'liu2023\.lr' = '1e-3' has the wrong type.*YAML 1\.1.*write 0\.001"),
])
def test_profile_values_get_the_same_ranges_named_with_their_file(tmp_path, edit, message):
    path = _edited(tmp_path, file="params/smoke.yaml", **edit)
    with pytest.raises(ParamsError, match=message) as err:
        load_params(path, "smoke")
    assert str(err.value).startswith(str(tmp_path / "params" / "smoke.yaml") + ":")


def test_overrides_get_the_ranges_too(smoke):
    for bad, message in [({"zhang2021": {"batch_size": 0}}, r"overrides: 'zhang2021\.batch_size' = 0"),
                         ({"vu2021": {"seeds": []}}, r"'vu2021\.seeds' = \[\] must be a non-empty list"),
                         ({"vu2021": {"cnn": {"dropout": 1.0}}}, r"'vu2021\.cnn\.dropout' = 1\.0.*in \[0, 1\)")]:
        with pytest.raises(ParamsError, match=message):
            override(smoke, bad)
    with pytest.raises(ParamsError, match=r"\(overrides\): 'zhang2021\.epochs' = 0"):
        load_params(ROOT / "params.yaml", "smoke", overrides={"zhang2021": {"epochs": 0}})


def test_the_schema_declares_the_base_and_every_profile_fits_the_ranges():
    from common.params import read_schema
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw.pop("profile")
    assert list(read_schema()) == list(raw)                          # every section, in the base's order
    for profile in ("default", "smoke", "paper"):
        load_params(ROOT / "params.yaml", profile)                   # raises on any key, type or range
