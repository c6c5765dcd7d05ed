"""params.yaml and its profile files: a plain base and small overrides, as nanoGPT's config/*.py.

The sections of params.yaml are the `default` profile. Each other profile is a small file beside
it, `params/<profile>.yaml` (params/smoke.yaml, params/paper.yaml), that holds only the keys the
profile changes, in the base's order; `load_params` lays it over the base. Every key a profile
file or a command-line override names must already exist in the base with a value of the same
kind, so a typo stops the run with the file and the key's full path instead of being silently
ignored. The base itself is checked against common/params_schema.yaml, the declared key list
and types (a typo in the base has nothing else to be checked against), and every value, wherever
it is set, against the ranges of RANGES below (batch_size >= 1, fractions in [0, 1], lr > 0, ...).
params.yaml's own `profile:` key picks the profile (`dvc exp run -S profile=smoke`); a
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
import difflib
import fnmatch
import functools
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from common.files import atomic_write_text

PROFILES = ("smoke", "default", "paper")
PROFILE_DIR = "params"          # params/<profile>.yaml beside params.yaml; `default` is the base itself
SCHEMA = Path(__file__).with_name("params_schema.yaml")   # the base's declared keys and types


class ParamsError(ValueError):
    """A params.yaml problem; the message names the file, the key and the fix."""


def _read_only(self, *args, **kwargs):
    raise TypeError(f"{type(self).__name__} is read-only: lay changes over it with "
                    "common.params.override(params, {...}), or change a copy (copy.deepcopy gives plain "
                    "dicts and lists)")


class Params(dict):
    """One params section (or all of them), frozen, read as a dict.

    `z = params["zhang2021"]` then `z["epochs"]`, `z["tcn"]["visual"]`, `"epochs" in z`, `z.get(...)`,
    iteration, `dict(z)`, json.dumps / yaml.safe_dump: one way to read a value (keys, not attributes).
    It is a dict, so it equals (and prints as) the plain dict with the same content; nested mappings
    are Params and lists FrozenList. A value has its base value's type (load_params checks every
    override against the base), so code needs no int() / float() / bool() / str() around it. Copies
    are plain and mutable (`p.copy()`, `dict(p)`, `copy.copy`, `copy.deepcopy`); `override` gives a
    new, checked Params.
    """
    __slots__ = ()

    def __init__(self, values=()):
        dict.__init__(self, ((key, freeze(value)) for key, value in dict(values).items()))

    __setitem__ = __delitem__ = __setattr__ = __delattr__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __copy__(self):
        return dict(self)

    def __deepcopy__(self, memo):
        return thaw(self)

    def __reduce__(self):                       # pickled (e.g. to a worker process) as itself, frozen
        return type(self), (thaw(self),)


class FrozenList(list):
    """A params list, frozen: equals, prints and serialises as the plain list (a tuple would not
    equal the YAML's list, and torch APIs that want a tuple get `tuple(...)`)."""
    __slots__ = ()

    def __init__(self, values=()):
        list.__init__(self, (freeze(value) for value in values))

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = remove = pop = clear = sort = reverse = _read_only

    def __copy__(self):
        return list(self)

    def __deepcopy__(self, memo):
        return thaw(self)

    def __reduce__(self):
        return type(self), (thaw(self),)


def freeze(value: Any) -> Any:
    """`value` with every dict as a Params and every list as a FrozenList."""
    if isinstance(value, dict):
        return value if isinstance(value, Params) else Params(value)
    if isinstance(value, list):
        return value if isinstance(value, FrozenList) else FrozenList(value)
    return value


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy: every mapping a dict, every list a list."""
    if isinstance(value, dict):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list):
        return [thaw(item) for item in value]
    return value


def sorted_keys(value: Any) -> Any:
    """A plain copy with every mapping's keys in sorted order. YAML text written from it is sorted
    even where oyaml (which openSMILE's dependencies import) has made PyYAML keep insertion order."""
    if isinstance(value, dict):
        return {key: sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [sorted_keys(item) for item in value]
    return value


# Params and FrozenList dump exactly as the plain dict and list would, through whatever dict and
# list representers the dumper holds at the time (PyYAML's own, or oyaml's).
for _dumper in (yaml.SafeDumper, yaml.Dumper, getattr(yaml, "CSafeDumper", None), getattr(yaml, "CDumper", None)):
    if _dumper is not None:
        _dumper.add_representer(Params, lambda dumper, data: dumper.represent_data(dict(data)))
        _dumper.add_representer(FrozenList, lambda dumper, data: dumper.represent_data(list(data)))


def _typed(base: Any, new: Any, where: str, full: str) -> Any:
    """`new` as a value of `base`'s type: an int where the base is a float becomes that float, a
    list's items are checked against the base list's first item; any other change of type raises."""
    if base is None:
        return thaw(new)
    if isinstance(base, dict):
        if not isinstance(new, dict):
            raise ParamsError(f"{where}: '{full}' must be a mapping, got {new!r}.")
        return merge_checked(base, new, where, full)
    if isinstance(base, bool) or isinstance(new, bool):
        ok = isinstance(base, bool) and isinstance(new, bool)
    elif isinstance(base, float) and isinstance(new, int):
        return float(new)
    else:
        ok = isinstance(new, list if isinstance(base, list) else type(base))
    if not ok:
        raise ParamsError(
            f"{where}: '{full}' = {new!r} has the wrong type; the base value is "
            f"{base!r} ({type(base).__name__}).{_number_hint(new)}"
        )
    if isinstance(base, list):
        template = base[0] if base else None
        if isinstance(template, (bool, int, float, str, list)) and all(type(b) is type(template) for b in base):
            return [_typed(template, item, where, f"{full}[{i}]") for i, item in enumerate(new)]
        return thaw(new)
    return new


# ------------------------------------------------------------------ the base's schema and the ranges

TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _number_hint(value: Any) -> str:
    """The fix for a number that YAML read as text. PyYAML reads YAML 1.1, where a float needs a dot
    and a signed exponent: `1e-3` and `1.0e3` are strings, `1.0e-3` and `0.001` are numbers. DVC
    reads params.yaml as YAML 1.2 (a float there), so the text is refused rather than converted:
    both then read the same value."""
    if not isinstance(value, str):
        return ""
    try:
        number = float(value)
    except ValueError:
        return ""
    as_yaml = yaml.safe_dump(number).splitlines()[0]            # PyYAML writes floats it reads back
    return (f" YAML 1.1 (PyYAML) reads {value} as text, not a number: write {as_yaml} (a float needs a dot, "
            "and an exponent its sign).")


def declared(value: Any) -> str:
    """The schema's notation for `value`'s type (what to declare for a new key)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {declared(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return f"[{declared(value[0]) if value else 'int'}]"
    return next((name for name, kind in TYPES.items() if type(value) is kind), type(value).__name__)


def check_declared(value: Any, spec: Any, where: str, full: str = "") -> Any:
    """`value` (the base sections, or part of them) checked against the declared `spec` of
    params_schema.yaml: every declared key present, no other key, each leaf of its declared type
    (an int where a float is declared becomes that float). Returns the checked copy."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: '{full}' must be a mapping (declared in {SCHEMA}), got {value!r}.")
        for key in value:
            if key not in spec:
                path = f"{full}.{key}" if full else str(key)
                close = difflib.get_close_matches(str(key), map(str, spec), n=1)
                raise ParamsError(
                    f"{where}: unknown key '{path}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                    + f". Known keys here: {', '.join(map(str, spec))}. Fix the spelling, or declare a new key "
                    f"in {SCHEMA} under the same path ({key}: {declared(value[key])}).")
        missing = [key for key in spec if key not in value]
        if missing:
            paths = ", ".join(f"'{full}.{key}'" if full else f"'{key}'" for key in missing)
            raise ParamsError(f"{where}: {paths} missing (declared in {SCHEMA}); add it, or fix its spelling.")
        return {key: check_declared(value[key], spec[key], where, f"{full}.{key}" if full else key) for key in value}
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise ParamsError(f"{where}: '{full}' = {value!r} must be a list of {spec[0]} (declared in {SCHEMA}).")
        return [check_declared(item, spec[0], where, f"{full}[{i}]") for i, item in enumerate(value)]
    kind = TYPES[spec]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ParamsError(f"{where}: '{full}' = {value!r} has the wrong type; {SCHEMA.name} declares "
                          f"{spec}.{_number_hint(value)}")
    return value


class Range:
    """A numeric range, `low`/`high` None for unbounded, each end included unless `open_*`."""

    def __init__(self, low=None, high=None, open_low=False, open_high=False):
        self.low, self.high, self.open_low, self.open_high = low, high, open_low, open_high

    def ok(self, x) -> bool:
        return (math.isfinite(x) and (self.low is None or (x > self.low if self.open_low else x >= self.low))
                and (self.high is None or (x < self.high if self.open_high else x <= self.high)))

    def __str__(self):
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


NON_EMPTY = "a non-empty list"

# Ranges by key pattern (fnmatch over the dotted path, e.g. `vu2021.cnn.batch_size`), so a new knob
# with one of these names gets its rule. A list value is checked item by item. A value outside its
# range would train with something else than asked (batch_size 0 became 1), give an empty table
# (seeds: []) or fail far from the cause (epochs: -1, a bare StopIteration).
RANGES = [
    ("*batch_size", Range(1)), ("*.extract_batch", Range(1)), ("*.eval_batch", Range(1)),
    ("*.epochs", Range(1)), ("*.seeds", NON_EMPTY), ("*.folds", Range(1)),
    ("*.lr", Range(0, open_low=True)), ("*.min_lr", Range(0)), ("*weight_decay", Range(0)),
    ("*.early_stop", Range(0)), ("*.plateau_patience", Range(0)), ("*.step_lr_epochs", Range(0)),
    ("*.num_workers", Range(0)), ("*.steps_per_epoch", Range(0)),
    ("*.plateau_factor", Range(0, 1, open_low=True, open_high=True)), ("*.step_lr_gamma", Range(0, 1, open_low=True)),
    ("*.temperature", Range(0, open_low=True)), ("*.betas", Range(0, 1, open_high=True)),
    # probabilities and shares of something
    ("*_fraction", Range(0, 1)), ("*_fractions", Range(0, 1)), ("corpus.coverage.*", Range(0, 1)),
    ("*dropout", Range(0, 1, open_high=True)), ("*.mask_prob", Range(0, 1)),
          ("*.mask_ratio", Range(0, 1, open_high=True)),
    ("*.lam", Range(0, 1)), ("corpus.jpeg_quality", Range(1, 100)),
]


def check_ranges(values: dict, where: str, path: str = "") -> None:
    """Every value of `values` (a section tree, as set in the file `where`) inside its RANGES rule."""
    for key, value in values.items():
        full = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict):
            check_ranges(value, where, full)
            continue
        for pattern, rule in RANGES:
            if not fnmatch.fnmatchcase(full, pattern):
                continue
            if rule is NON_EMPTY:
                if not value:
                    raise ParamsError(f"{where}: '{full}' = {value!r} must be {NON_EMPTY}.")
                continue
            numbers = value if isinstance(value, list) else [value]
            bad = [x for x in numbers if isinstance(x, (int, float)) and not isinstance(x, bool) and not rule.ok(x)]
            if bad:
                each = "each item " if isinstance(value, list) else ""
                raise ParamsError(f"{where}: '{full}' = {value!r} is out of range: {each}must be {rule}.")


@functools.lru_cache(maxsize=1)
def read_schema() -> dict:
    """params_schema.yaml, read once per process (it is code, not a setting)."""
    return _read_mapping(SCHEMA, "declared sections")


def merge_checked(base: dict, override: dict, where: str, path: str = "") -> dict:
    """Return `base` with `override` laid over it (plain dicts); unknown keys or changed types raise."""
    merged = thaw(base)
    for key, value in override.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in base:
            known = ", ".join(sorted(map(str, base))) or "(none)"
            raise ParamsError(
                f"{where}: unknown key '{full}'. Known keys here: {known}. "
                f"Fix the spelling, or add the key to the base section (and declare it in {SCHEMA.name}) first."
            )
        merged[key] = _typed(base[key], value, where, full)
    return merged


def override(params: dict, overrides: dict, where: str = "overrides") -> Params:
    """`params` with `overrides` (same nesting) laid over it, checked as a profile file is."""
    merged = merge_checked(params, overrides, where)
    check_ranges(overrides, where)
    return freeze(merged)


def _shadowed_keys(section: dict, path: str = "") -> list[str]:
    """Keys that `p.<key>` could not read because a dict method has the name."""
    found = []
    for key, value in section.items():
        full = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and hasattr(dict, key):
            found.append(full)
        if isinstance(value, dict):
            found += _shadowed_keys(value, full)
    return found


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
                overrides: dict | None = None) -> Params:
    """Read params.yaml and return the merged parameters of one profile, frozen (see Params).

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
    shadowed = _shadowed_keys(raw)
    if shadowed:
        raise ParamsError(f"{path}: key(s) {', '.join(shadowed)} have the name of a dict method, so "
                          "params.<section>.<key> could not read them; rename them.")
    params = raw = check_declared(raw, read_schema(), str(path))
    check_ranges(raw, str(path))
    overriding = profile_file(path, chosen)
    if overriding is not None:
        if not overriding.is_file():
            raise ParamsError(f"{overriding}: not found; the {chosen} profile's overrides of {path} live there "
                              f"(an empty file = the base unchanged).")
        changes = _read_mapping(overriding, "sections")
        params = merge_checked(raw, changes, str(overriding))
        check_ranges(changes, str(overriding))
    if overrides:
        params = merge_checked(params, overrides, f"{path} (overrides)")
        check_ranges(overrides, f"{path} (overrides)")
    return Params({"profile": chosen, **params})


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
        atomic_write_text(path, yaml.safe_dump(sorted_keys(values), sort_keys=True, default_flow_style=False))
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
