"""The pipeline end to end on a tiny corpus: features, the Zhang notebooks, the report.

Also checks the DVC graph's promise that a paper's training parameters never touch the data or
feature stages (so changing one re-runs only that paper).
"""
import json
import math
from pathlib import Path

import pytest
import yaml

from common import params as params_module
from common import report
from common.notebooks import NotebookError, run_notebook

ROOT = Path(__file__).resolve().parents[1]
PAPER_SECTIONS = {"zhang2021", "jeong2022", "liu2023", "vu2021"}


def _stages():
    """dvc.yaml's stages as DVC resolves them: a `foreach` stage is one stage per item (`name@key`),
    its ${key} / ${item.field} filled in."""
    from dvc.dvcfile import load_file
    from dvc.repo import Repo
    with Repo(str(ROOT)) as repo:
        return load_file(repo, "dvc.yaml").resolver.resolve()["stages"]


def _sections(stage) -> set:
    return {d[len("data/params/"):-len(".yaml")] for d in stage.get("deps", []) if str(d).startswith("data/params/")}


def test_data_and_feature_stages_ignore_paper_parameters():
    for name, stage in _stages().items():
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        if any(str(o).startswith("data/") for o in outs):
            assert not PAPER_SECTIONS & _sections(stage), name
            assert not any(str(d).startswith("papers/") for d in stage.get("deps", [])), name


def test_stages_track_resolved_sections_and_only_the_params_stage_reads_params_yaml():
    """Per-stage `params:` lists would miss profile overrides (and cost a params.yaml parse each)."""
    base = set(yaml.safe_load((ROOT / "params.yaml").read_text())) - {"profile", "profiles"}
    stages = _stages()
    assert stages["params"]["params"] == [{"params.yaml": None}]
    assert {"params/smoke.yaml", "params/paper.yaml"} <= set(stages["params"]["deps"])   # the profile files
    for name, stage in stages.items():
        if name == "params":
            continue
        assert "params" not in stage, name
        assert _sections(stage) <= base, name
        if name != "report":                                 # the report reads only what stages wrote
            assert _sections(stage), name


def test_both_liu_stages_depend_on_every_bank_feature_and_network():
    """DVC 3 cannot splice a list variable into `deps`, so both Liu stages spell out the feature
    bank: each must name every output of each bank feature's stage (common/features/bank.py)."""
    from common.features import bank
    stages = _stages()
    wanted = set()
    for feature in bank.FEATURES.values():
        if feature.cache is not None:
            outs = stages[feature.stage]["outs"]                 # a KeyError: bank.py names no such stage
            wanted |= {o for o in outs if isinstance(o, str) and not o.endswith("_posteriors")}
    assert {f"data/features/{name}" for name in ("frame_encoder", "fbank", "ms_va")} <= wanted
    for name in ("liu2023_validation", "liu2023_submissions"):
        assert wanted <= set(stages[name]["deps"]), (name, sorted(wanted - set(stages[name]["deps"])))


def _paper_imports(path: Path) -> set:
    """The modules of the same paper that papers/<paper>/<module>.py imports, as paths."""
    import ast
    paper = path.parent.name
    found = set()
    if path.suffix == ".ipynb":
        source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                           if c["cell_type"] == "code")
    else:
        source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == f"papers.{paper}":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(f"papers.{paper}."):
            found.add(node.module.split(".")[2])
    return {f"papers/{paper}/{m}.py" for m in found if (ROOT / "papers" / paper / f"{m}.py").is_file()}


def test_paper_stages_depend_on_every_paper_module_their_code_imports():
    """A stage that names a paper's notebook or module (e.g. train.py) names the modules of that
    paper they import in turn (e.g. losses.py, data.py), so moving code between a paper's files
    never leaves a stage stale."""
    missing = {}
    for name, stage in _stages().items():
        deps = {str(d) for d in stage.get("deps", [])}
        todo = [d for d in deps if d.startswith("papers/") and d.endswith((".py", ".ipynb"))]
        needed = set()
        while todo:
            for module in _paper_imports(ROOT / todo.pop()) - needed:
                needed.add(module)
                todo.append(module)
        if needed - deps:
            missing[name] = sorted(needed - deps)
    assert not missing, missing

def test_resolved_sections_carry_the_profile_and_keep_untouched_bytes(tmp_path):
    default = params_module.write_resolved(params_module.load_params(ROOT / "params.yaml", "default"),
                                           tmp_path / "default")
    smoke = params_module.write_resolved(params_module.load_params(ROOT / "params.yaml", "smoke"),
                                         tmp_path / "smoke")
    assert [p.name for p in default] == [p.name for p in smoke]
    text = {p.parent.name + "/" + p.stem: p.read_text() for p in default + smoke}
    smoke_raw = yaml.safe_load((ROOT / "params" / "smoke.yaml").read_text())
    assert yaml.safe_load(text["smoke/liu2023"])["seeds"] == smoke_raw["liu2023"]["seeds"]
    assert text["smoke/liu2023"] != text["default/liu2023"]
    for section in ("data", "features"):      # sections the smoke profile leaves alone
        assert section not in smoke_raw
        assert text[f"smoke/{section}"] == text[f"default/{section}"]


def test_params_stage_names_a_bad_override_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text().replace("profile: default", "profile: smoke", 1))
    (tmp_path / "params").mkdir()
    smoke = (ROOT / "params" / "smoke.yaml").read_text()
    smoke = smoke.replace("  epochs: 2\n  step_lr_epochs", "  epoch: 2\n  step_lr_epochs")    # in liu2023
    (tmp_path / "params" / "smoke.yaml").write_text(smoke)
    out = tmp_path / "resolved"
    assert params_module.main(["--params", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "params" / "smoke.yaml") in err and "'liu2023.epoch'" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_features):
    """The Zhang notebooks run on the tiny corpus's features."""
    params, path = tiny_features
    reports = path.parent / "reports"
    for notebook in ("table1", "table2", "window"):
        run_notebook("zhang2021", notebook, {"params_path": str(path)}, reports)
    return params, reports


def test_notebooks_write_well_formed_results(tiny_pipeline):
    _, reports = tiny_pipeline
    published = report.read_published(ROOT / "papers" / "zhang2021")
    for notebook in ("table1", "table2", "window"):
        data = json.loads((reports / "zhang2021" / f"{notebook}.json").read_text())
        assert data["paper"] == "zhang2021" and data["profile"] == "smoke" and data["seconds"] > 0
        assert data["results"] and all(math.isfinite(r["value"]) and -1 <= r["value"] <= 1 for r in data["results"])
        assert data["claims"] and all(c["verdict"] in report.VERDICTS for c in data["claims"])
        assert (reports / "zhang2021" / f"{notebook}.ipynb").exists()
    # Every "Ours" number of Tables 1 and 2 that the folds of this profile can produce has a reproduced twin.
    table1 = json.loads((reports / "zhang2021" / "table1.json").read_text())
    got = {(r["row"], r["column"]) for r in table1["results"]}
    wanted = {(p["row"], p["column"]) for p in published if p["table"] == "1" and "Ours" in p["row"]
              and p["column"] in ("Fold 0", "Fold 1", "Mean")}
    assert wanted <= got, wanted - got
    networks = {d["what"]: d["here"] for d in table1["differences"]}    # read from the stages' records
    assert "pre-trained in the pipeline on the AffectNet-like" in networks["frame encoder"]
    assert "pre-trained in the pipeline on the corpus's speech" in networks["VGGish"]
    table2 = json.loads((reports / "zhang2021" / "table2.json").read_text())
    rows2 = {r["row"] for r in table2["results"]}
    assert {"UM", "MM", "UM-CV-EC", "UM-CV-LC", "MM-CV-EC", "MM-CV-LC"} <= rows2
    assert (reports / "zhang2021" / "table2_attention.png").stat().st_size > 0
    assert table2["leaderboard"][0]["split"] == "test" and -1 <= table2["leaderboard"][0]["p_va"] <= 1


def test_table2_writes_test_predictions_in_the_annotation_format(tiny_pipeline):
    """One VA file per test video (common.data.submission), each read back by the label reader with
    one row per frame of the video."""
    from common.data import affwild2
    params, reports = tiny_pipeline
    folder = reports / "zhang2021" / "test_predictions" / affwild2.TASK_DIRS["VA"]
    test = affwild2.read_split(params["data"]["root"], "test", tasks=("VA",))
    assert test and sorted(p.stem for p in folder.glob("*.txt")) == [v.video for v in test]
    for video in test:
        values, valid = affwild2.read_va_labels(folder / f"{video.video}.txt")
        assert values.shape == (video.n_frames, 2) and valid.all()


def test_window_exercises_answer_from_smoke_runs(tiny_pipeline):
    """window.ipynb, the chapter's last notebook, ran its three exercises under the smoke profile in the
    fixture: each answer cell checked the answer against the run's numbers (a shallower TCN, no
    overlap, the plain-mean merge) and said that smoke checks the mechanics only."""
    from tests.helpers.notebooks import exercise_answers
    _, reports = tiny_pipeline
    answers = exercise_answers(reports / "zhang2021" / "window.ipynb")
    assert len(answers) == 3 and all("needs the default profile" in a for a in answers)
    assert "arousal CCC" in answers[0] and "blocks" in answers[0] and "hop" in answers[1]
    assert "weighted -> mean (2 fold models)" in answers[2]
    # two fold models weigh each other equally: the merges are identical, as the exercise says
    merge = json.loads((reports / "zhang2021" / "exercises" / "fold_merge" / "answer.json").read_text())
    assert "did not move (" in answers[2] and all(abs(m["change"]) < 1e-6 for m in merge["metrics"].values())
    assert (reports / "zhang2021" / "runs_exercise_hop").is_dir()


def test_window_student_copy_runs(tiny_pipeline, tmp_path):
    """The student's copy of window.ipynb (python -m common.exercises: no solution cells) runs top to
    bottom under smoke; each kept exercise cell trains its change and prints the comparison."""
    from tests.helpers.notebooks import run_student_copy
    params, reports = tiny_pipeline
    printed = run_student_copy("zhang2021", "window", {"params_path": str(reports.parent / "params.yaml"),
                                                       "out_dir": str(reports / "zhang2021")}, tmp_path)
    assert len(printed) == 3 and "tcn_layers" in printed[0] and "fold_merge" in printed[2]


def test_report_renders_offline(tiny_pipeline, monkeypatch):
    params, reports = tiny_pipeline
    index = report.build(reports)
    for page in [index, reports / "zhang2021" / "index.html", *sorted((reports / "zhang2021").glob("*.html"))]:
        text = page.read_text()
        assert report.external_references(text) == [], page
    paper = (reports / "zhang2021" / "index.html").read_text()
    assert "Table 1" in paper and "MM-CV-LC" in paper and "not comparable" in paper
    assert "<math" in (reports / "zhang2021" / "table1.html").read_text()      # Eq. 1 rendered as MathML


def test_report_opens_in_chromium(tiny_pipeline):
    """The smoke report in headless Chromium (tests/test_report_browser.py has the four-paper one):
    charts load, nothing is fetched, no script errors, every claim is in a claims table with its
    kind, Eq. 1 renders as MathML; screenshots land in reports/screenshots/."""
    from common import browser
    if not browser.find_chromium():
        pytest.fail(browser.INSTALL_HINT, pytrace=False)
    _, reports = tiny_pipeline
    report.build(reports)
    claims = [c for nb in ("table1", "table2", "window")
              for c in json.loads((reports / "zhang2021" / f"{nb}.json").read_text())["claims"]]
    pages = {"index": (reports / "index.html", {}),
             "zhang2021": (reports / "zhang2021" / "index.html", {"expect_claims": True, "expect_figures": True}),
             "zhang2021-table1": (reports / "zhang2021" / "table1.html", {"expect_math": True}),
             "zhang2021-window": (reports / "zhang2021" / "window.html", {})}
    for name, (page, expect) in pages.items():
        seen = browser.open_page(page, reports / "screenshots" / f"{name}.png")
        assert browser.problems(seen, **expect) == [], (name, seen["console"])
        assert (reports / "screenshots" / f"{name}.png").stat().st_size > 0
        if name == "index":
            # leaderboard, stage times (smoke counts no verdicts: no verdict chart)
            assert len(seen["images"]) >= 2
        if name == "zhang2021":       # the claims chart and the notebooks' figures (table1_folds, table2 x2, window)
            assert seen["claim_rows"] == len(claims) and seen["figures"] >= 4
        if name.startswith("zhang2021-"):  # every cell that draws a figure shows it (problems() lists those that don't)
            assert seen["figure_cells"] >= 1
    paper = (reports / "zhang2021" / "index.html").read_text()
    assert "Not yet classified" not in paper
    assert "built into the data" in paper and "not judgeable on this corpus" in paper


def test_unknown_notebook_parameter_is_refused(tiny_pipeline):
    with pytest.raises(NotebookError, match="unknown parameter.*windw"):
        run_notebook("zhang2021", "table1", {"windw": 3})


def test_dvc_plots_point_at_curves_the_notebooks_write(tiny_pipeline):
    """Every file a top-level `plots:` entry of dvc.yaml names is written by a run, with its x and y columns."""
    import csv
    _, reports = tiny_pipeline
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    assert plots
    for entry in plots:
        (name, spec), = entry.items()
        for path, column in spec["y"].items():
            written = reports / Path(path).relative_to("reports")
            with open(written, newline="") as f:
                rows = list(csv.DictReader(f))
            assert rows and {spec["x"], column} <= set(rows[0]), (name, path)
            assert all(math.isfinite(float(r[column])) for r in rows), (name, path)


def test_the_kernel_runs_with_the_asked_thread_count(tmp_path, monkeypatch):
    """run_notebook hands OMP_NUM_THREADS to the kernel and restores the caller's environment."""
    import nbformat
    import os
    from common import notebooks
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('out_dir = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell('import torch, pathlib\n'
                                          'pathlib.Path(out_dir, '
                                          '"threads.txt").write_text(str(torch.get_num_threads()))')]
    paper = tmp_path / "papers" / "toy"
    paper.mkdir(parents=True)
    nbformat.write(nb, paper / "probe.ipynb")
    monkeypatch.setattr(notebooks, "ROOT", tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    notebooks.run_notebook("toy", "probe", reports_dir=tmp_path / "reports", threads=1)
    assert (tmp_path / "reports" / "toy" / "threads.txt").read_text() == "1"
    assert "OMP_NUM_THREADS" not in os.environ
