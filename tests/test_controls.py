"""Negative controls at smoke size (common/controls.py): with the generator link a built-in claim
rests on cut, the claim never comes out reproduced."""
import json

import numpy as np

from common import controls
from common.params import load_params


def test_no_built_in_claim_is_reproduced_with_its_link_cut(tmp_path):
    params = load_params(controls.ROOT / "params.yaml", profile="smoke")
    out = tmp_path / "controls.json"
    assert controls.main(["--profile", "smoke", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    judged = {c["claim"]: c for c in result["claims"]}
    assert set(judged) == {claim for _, claim, *_ in controls.CLAIMS}
    runs = params["verdicts"]["controls"]["runs"]
    for c in result["claims"]:
        assert c["n"] == runs and c["link"] in controls.LINKS.values()
        assert c["verdict"] != "reproduced", c
        assert c["delta"] > 0 and c["intact"]["verdict"] in ("reproduced", "contradicted", "absent", "inconclusive")


def test_a_cut_link_changes_the_corpus_only_where_it_should():
    """The voice cut leaves the face and labels alone; the time-scale cut makes valence and arousal fast."""
    params = load_params(controls.ROOT / "params.yaml", profile="smoke")
    cfg = controls.corpus_config(params, None, 15)
    intact = controls.video(cfg, 7, 0, 6.0, 16, None)
    voice_cut = controls.video(cfg, 7, 0, 6.0, 16, "voice")
    assert (intact["va"] == voice_cut["va"]).all() and (intact["face"] == voice_cut["face"]).all()
    assert (intact["voice"] != voice_cut["voice"]).any()
    fast = controls.video(controls.corpus_config(params, "timescale", 15), 7, 0, 6.0, 16, "timescale")
    def second_lag(x, k=15):            # autocorrelation at 1 s (15 frames)
        return float(np.corrcoef(x[k:], x[:-k])[0, 1])
    assert second_lag(intact["va"][:, 1]) > 0.8 and abs(second_lag(fast["va"][:, 1])) < 0.3
    held = controls.video(controls.corpus_config(params, "hold", 15), 7, 0, 6.0, 16, "hold")
    changes = lambda e: int((e[1:] != e[:-1]).sum())  # noqa: E731
    assert changes(held["expression"]) > 5 * max(1, changes(intact["expression"]))
