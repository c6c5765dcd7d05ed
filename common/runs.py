"""Runs keyed by the configuration they were made from.

A trained run (a paper's model, an exercise's answer, a pre-trained network's training folder)
is reused only when the configuration it was made from equals the one asked for now. Its folder
holds `run_key.json`: the key (the resolved params the run reads, the job's own settings, a
fingerprint of the data and of the code that trains it) and its hash. `prepare(folder, key)`
makes a folder ready for a run of `key`: a folder written under another key is cleared first,
with one line naming what differs, so neither its result.json nor its checkpoint is ever
returned or resumed for a different configuration. DVC clears a stage's outputs before it runs
the stage; this covers everything else: notebooks run by hand, exercises, a second profile.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
from pathlib import Path

from common.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
KEY_FILE = "run_key.json"
PAPERS = ("zhang2021", "jeong2022", "vu2021", "liu2023")
# The shared code every paper's training goes through; each paper's own folder is added to it.
TRAINING_CODE = ("common/train.py", "common/losses.py", "common/metrics.py", "common/data/sequences.py")


def plain(value):
    """A JSON-ready copy (frozen params, tuples and paths become dicts, lists and strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(plain(key), sort_keys=True).encode()).hexdigest()


def code_version(*paths: str) -> str:
    """sha256 over the bytes of the given files, and of every .py file under the given folders
    (paths relative to the repository root), in name order."""
    digest = hashlib.sha256()
    for rel in paths:
        path = ROOT / rel
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            digest.update(str(f.relative_to(ROOT)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]


def data_fingerprint(params) -> str:
    """What identifies the corpus: the generated corpus is fixed by params.corpus (same seed, same
    bytes), which the key holds already; the real corpus by its annotation files' fingerprint
    (common.data.corpus.annotation_fingerprint, memoised per process: one read of the label files)."""
    if params["data"]["source"] != "real":
        return "generated from params.corpus"
    return _real_fingerprint(str(Path(params["data"]["root"]).resolve()))


@functools.lru_cache(maxsize=None)
def _real_fingerprint(root: str) -> str:
    from common.data.corpus import annotation_fingerprint     # the corpus reader, only for the real corpus
    return annotation_fingerprint(root)


def config_key(params, paper: str, **job) -> dict:
    """The key of one run of `paper`: every params section but the other papers' (a paper's run reads
    its own section and the shared ones: data, corpus, train, the features), the job's own settings
    (seed, fold, window, exercise changes...), the data fingerprint and the training code's version."""
    sections = {k: v for k, v in dict(params).items() if k not in PAPERS or k == paper}
    return {"paper": paper, "params": plain(sections), "job": plain(job), "data": data_fingerprint(params),
            "code": code_version(f"papers/{paper}", *TRAINING_CODE)}


def feature_key(params) -> dict:
    """The key of a network's pre-training in a feature stage: every params section but the papers'
    (the corpus, the data, the face crops and the network's own section all shape it)."""
    return {"params": plain({k: v for k, v in dict(params).items() if k not in PAPERS}),
            "data": data_fingerprint(params)}


def stored_key(folder) -> dict | None:
    path = Path(folder) / KEY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None                     # a key file cut short: the folder is not trusted


def matches(folder, key: dict) -> bool:
    stored = stored_key(folder)
    return stored is not None and stored.get("hash") == key_hash(key)


def differences(old, new, prefix: str = "") -> list[str]:
    """'a.b: old -> new' for every leaf that differs between two keys (at most a few)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def prepare(folder, key: dict) -> Path:
    """Make `folder` the folder of a run of `key`: when it holds anything written under another (or
    no) key, that is removed first, keeping only sub-folders that are runs of their own (they carry
    their own key file); then the key is written. Returns the folder."""
    folder = Path(folder)
    if folder.is_dir() and not matches(folder, key):
        stale = [p for p in folder.iterdir() if not (p.is_dir() and (p / KEY_FILE).is_file())]
        if stale:
            old = stored_key(folder)
            what = differences(old.get("key", {}), plain(key))[:4] if old else ["no key recorded"]
            print(f"{folder}: made with another configuration ({'; '.join(what)}); training it again")
        for p in stale:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    if not matches(folder, key):
        atomic_write_json(folder / KEY_FILE, {"hash": key_hash(key), "key": plain(key)})
    return folder
