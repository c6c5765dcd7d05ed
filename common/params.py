"""params.yaml and its profile files: a plain base and small overrides, as nanoGPT's config/*.py.

The sections of params.yaml are the `default` profile. Each other profile is a small file beside
it, `params/<profile>.yaml` (params/smoke.yaml, params/paper.yaml), that holds only the keys the
profile changes, in the base's order; `load_params` lays it over the base. Every key a profile
file or a command-line override names must already exist in the base with a value of the same
kind, so a typo stops the run with the file and the key's full path instead of being silently
ignored. params.yaml's own `profile:` key picks the profile (`dvc exp run -S profile=smoke`); a
command's `--profile` overrides it.

`python -m common.params` (the first DVC stage, which tracks params.yaml and depends on the
profile files) writes each section as the active profile sees it to data/params/<section>.yaml.
Every stage depends on the files of the sections it reads, so editing an override
(`liu2023.epochs` in params/paper.yaml) re-runs exactly the stages that read `liu2023` under that
profile, and editing another profile's file re-runs nothing. DVC's own `params:` lists can only
name fixed keys of params.yaml, which would miss the overrides.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

from common.files import atomic_write_text

PROFILES = ("smoke", "default", "paper")
PROFILE_DIR = "params"          # params/<profile>.yaml beside params.yaml; `default` is the base itself


class ParamsError(ValueError):
    """A params.yaml problem; the message names the file, the key and the fix."""


def _same_kind(base: Any, new: Any) -> bool:
    number = (int, float)
    if isinstance(base, bool) or isinstance(new, bool):
        return isinstance(base, bool) and isinstance(new, bool)
    if isinstance(base, number) and isinstance(new, number):
        return True
    if base is None or new is None:
        return True
    return isinstance(new, type(base))


def merge_checked(base: dict, override: dict, where: str, path: str = "") -> dict:
    """Return `base` with `override` laid over it; unknown keys or changed kinds raise."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in base:
            known = ", ".join(sorted(map(str, base))) or "(none)"
            raise ParamsError(
                f"{where}: unknown key '{full}'. Known keys here: {known}. "
                "Fix the spelling or add the key to the base section first."
            )
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ParamsError(f"{where}: '{full}' must be a mapping, got {value!r}.")
            merged[key] = merge_checked(base[key], value, where, full)
        elif not _same_kind(base[key], value):
            raise ParamsError(
                f"{where}: '{full}' = {value!r} has the wrong type; the base value is "
                f"{base[key]!r} ({type(base[key]).__name__})."
            )
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def profile_file(path: str | Path, profile: str) -> Path | None:
    """The file of `profile`'s overrides beside the params file `path`; None for `default` (the base)."""
    return None if profile == "default" else Path(path).parent / PROFILE_DIR / f"{profile}.yaml"


def _read_mapping(path: Path, what: str) -> dict:
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of {what}.")
    return raw


def load_params(path: str | Path = "params.yaml", profile: str | None = None,
                overrides: dict | None = None) -> dict:
    """Read params.yaml and return the merged parameters of one profile.

    `profile` defaults to the file's own `profile` key; its overrides come from
    `params/<profile>.yaml` beside `path`. `overrides` (same nesting) are applied last, with the
    same checks, e.g. from a notebook's papermill parameters.
    """
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found. Run from the project root, or pass the path.")
    raw = _read_mapping(path, "sections")
    if "profiles" in raw:
        raise ParamsError(f"{path}: a `profiles:` section is no longer read; each profile's overrides live in "
                          f"{path.parent / PROFILE_DIR}/<profile>.yaml (default = the base sections).")
    chosen = profile or raw.pop("profile", "default")
    raw.pop("profile", None)                    # the choice is not a section a profile could override
    if chosen not in PROFILES:
        raise ParamsError(f"{path}: profile '{chosen}' is not one of {', '.join(PROFILES)}.")
    params = raw
    overriding = profile_file(path, chosen)
    if overriding is not None:
        if not overriding.is_file():
            raise ParamsError(f"{overriding}: not found; the {chosen} profile's overrides of {path} live there "
                              f"(an empty file = the base unchanged).")
        params = merge_checked(raw, _read_mapping(overriding, "sections"), str(overriding))
    if overrides:
        params = merge_checked(params, overrides, f"{path} (overrides)")
    return {"profile": chosen, **params}


def write_resolved(params: dict, out_dir: str | Path = "data/params") -> list[Path]:
    """Write every section of the merged `params` to `<out_dir>/<section>.yaml`; return the paths.

    The text depends only on the section's values (keys sorted), so a section the edit did not
    touch keeps its bytes and DVC leaves the stages that read it alone.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for section, values in sorted(params.items()):
        if section == "profile":
            continue
        path = out_dir / f"{section}.yaml"
        atomic_write_text(path, yaml.safe_dump(values, sort_keys=True, default_flow_style=False))
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write each params.yaml section as the active profile "
                                             "sees it to data/params/<section>.yaml.")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/params")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_resolved(params, args.out)
    print(f"profile {params['profile']}: {len(paths)} sections -> {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
