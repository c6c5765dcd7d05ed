"""The corpus stage: `python -m common.data.corpus` (DVC stage `corpus`, output data/affwild2).

`data.source: synthetic` generates the embedded corpus into `data.root` (common/data/synthetic.py).
`data.source: real` generates nothing: it reads every label file of the real Aff-Wild2 at
`data.root` once, so a malformed row stops the pipeline here with its file and line rather than
half-way through feature extraction, and writes `data/affwild2/real_corpus.json`: what was found
(videos, frames, labelled frames per task and split) and a fingerprint of the annotation files.
The feature stages depend on that folder, so new or edited label files re-run them; the JPEGs
themselves are not hashed (millions of files), so re-run `dvc repro --force` after replacing faces.

The real corpus must live outside data/affwild2: DVC would otherwise copy it into its cache.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from common.data import synthetic
from common.data.affwild2 import SPLITS, AffWild2Error, read_split
from common.files import atomic_write_json
from common.params import ParamsError, load_params

STAGE_OUT = Path("data/affwild2")


def annotation_fingerprint(root: Path) -> str:
    """sha256 over (relative path, size, mtime) of every label file under root."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.txt") if "cropped_aligned" not in p.parts):
        st = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def index_real_corpus(root: str | Path, stage_out: str | Path = STAGE_OUT) -> dict:
    """Read every split of the real corpus at root (raising AffWild2Error with file and line on bad
    input) and write the stage's summary into stage_out/real_corpus.json."""
    root, stage_out = Path(root), Path(stage_out)
    if not root.is_dir():
        raise AffWild2Error(f"{root}: no such folder; set data.root in params.yaml to the real Aff-Wild2 "
                            "(the folder holding cropped_aligned/ and the annotation folders)")
    if root.resolve() == stage_out.resolve() or stage_out.resolve() in root.resolve().parents:
        raise AffWild2Error(f"data.root {root} lies inside the corpus stage's output {stage_out}: DVC would copy "
                            "the whole corpus into its cache. Keep the real Aff-Wild2 outside data/ and point "
                            "data.root at it.")
    summary = {"source": "real", "root": str(root.resolve()), "splits": {}}
    for split in SPLITS:
        videos = read_split(root, split)
        summary["splits"][split] = {
            "tracks": len(videos), "frames": int(sum(v.n_frames for v in videos)),
            "labelled_frames": {"VA": int(sum(v.va_mask.sum() for v in videos)),
                                "EXPR": int(sum(v.expr_mask.sum() for v in videos)),
                                "AU": int(sum(v.au_mask.any(axis=1).sum() for v in videos))}}
    if not any(s["tracks"] for s in summary["splits"].values()):
        raise AffWild2Error(f"{root}: no annotated video in any split; expected the ABAW layout "
                            "(see README, 'Using the real Aff-Wild2')")
    summary["annotation_sha256"] = annotation_fingerprint(root)
    stage_out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stage_out / "real_corpus.json", summary)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="generate the embedded corpus, or check and index the real one")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", choices=("smoke", "default", "paper"))
    ap.add_argument("--stage-out", default=str(STAGE_OUT), help="the stage's output folder for a real corpus")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params, args.profile)
        if params["data"]["source"] == "real":
            summary = index_real_corpus(params["data"]["root"], args.stage_out)
            for split, s in summary["splits"].items():
                print(f"{split:>10}: {s['tracks']} tracks, {s['frames']} frames, labelled {s['labelled_frames']}")
            return 0
        if params["data"]["source"] != "synthetic":
            raise ParamsError(f"params.yaml: data.source is {params['data']['source']!r}; use synthetic or real")
    except (ParamsError, AffWild2Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return synthetic.main(["--params", args.params] + (["--profile", args.profile] if args.profile else []))


if __name__ == "__main__":
    sys.exit(main())
