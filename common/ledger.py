"""The fidelity ledger: papers/<paper>/ledger.yaml, one row per result-changing detail.

Each row says what the paper says (section, equation, value), what the authors' released code
does (owner/repo@commit:path:line, value), what this project does under each method and profile
(the params key, the file:function that does it), which of the two `method: paper` follows and
why, whether it changes results (with a measured size where one was cheap), and the test that
holds it. Corpus substitutes (a smaller backbone, pre-training in the pipeline) are rows of kind
`substitute`. The report's "What differs from the paper" table is rendered from these rows:
`differences(paper, group, ...)` returns the rows of a notebook's group with their placeholders
filled, and each notebook writes them into its summary JSON.

Placeholders: {params.a.b} reads params["a"]["b"], {name} (or {name.key}) a value the notebook
passes. `when` keeps a row only if its condition holds: `name`, `not name`, or `name OP literal`
with OP one of == != > < >= <= (the literal read as YAML: 1, code, true).
"""
from __future__ import annotations

import operator
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {"id": str, "kind": str, "group": str, "item": str, "paper": str, "released": str, "released_at": str,
          "here": str, "key": str, "code": str, "follows": str, "released_method": str, "why": str,
          "changes_results": bool, "size": str, "test": str}
OPTIONAL = {"when": str}
KINDS = ("method", "substitute")
FOLLOWS = ("paper", "released", "both", "neither")
# owner/repo@<7-40 hex>:path:line or :line-line; several citations are separated by "; ".
CITATION = re.compile(r"^[\w.-]+/[\w.-]+@[0-9a-f]{7,40}:[^:\s]+:\d+(?:-\d+)?$")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][\w.]*)\}")
_CONDITION = re.compile(r"^\s*(not\s+)?([A-Za-z_][\w.]*)\s*(?:(==|!=|>=|<=|>|<)\s*(.+?))?\s*$")


def _lookup(context: dict, dotted: str):
    value = context
    for key in dotted.split("."):
        try:
            value = value[key]
        except (KeyError, TypeError, IndexError):
            if not hasattr(value, key):
                raise KeyError(f"{dotted!r}: no {key!r}") from None
            value = getattr(value, key)
    return value


def fill(template: str, context: dict) -> str:
    """`template` with each {name.key} replaced by str() of its value in `context`."""
    return _PLACEHOLDER.sub(lambda m: str(_lookup(context, m.group(1))), template)


def holds(condition, context: dict) -> bool:
    """Whether a row's `when` holds (None or "" always holds)."""
    if condition in (None, ""):
        return True
    m = _CONDITION.match(str(condition))
    if not m:
        raise ValueError(f"when: {condition!r} is not 'name', 'not name' or 'name OP literal'")
    negate, name, op, literal = m.groups()
    value = _lookup(context, name)
    if op is None:
        result = bool(value)
    else:
        other = yaml.safe_load(literal)
        result = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
                  ">=": operator.ge, "<=": operator.le}[op](value, other)
    return not result if negate else bool(result)


class LedgerError(ValueError):
    """A ledger row is malformed; the message names the file, the row and the field."""


def ledger_path(paper: str) -> Path:
    return ROOT / "papers" / paper / "ledger.yaml"


def citations(text: str) -> list[str]:
    return [c.strip() for c in text.split(";") if c.strip()]


def check_row(row: dict, where: str) -> list[str]:
    """What is wrong with one row (empty when nothing is)."""
    problems = [f"unknown field {k!r}" for k in row if k not in FIELDS and k not in OPTIONAL]
    problems += [f"missing {k!r}" for k in FIELDS if k not in row]
    problems += [f"{k!r} must be {t.__name__}, not {type(row[k]).__name__}" for k, t in {**FIELDS, **OPTIONAL}.items()
                 if k in row and not isinstance(row[k], t)]
    if problems:
        return problems
    if row["kind"] not in KINDS:
        problems.append(f"kind {row['kind']!r} is not one of {KINDS}")
    for k in ("follows", "released_method"):
        if row[k] not in FOLLOWS:
            problems.append(f"{k} {row[k]!r} is not one of {FOLLOWS}")
    cited = citations(row["released_at"])
    if not cited or not all(CITATION.match(c) for c in cited):
        problems.append(f"released_at {row['released_at']!r} is not owner/repo@commit:path:line")
    for k in ("item", "paper", "released", "here", "why", "code"):
        if not row[k].strip():
            problems.append(f"{k!r} is empty")
    if row["kind"] == "method" and row["changes_results"] and not row["test"]:
        problems.append("a method row that changes results needs the test that holds it")
    return problems


def read_ledger(paper: str) -> list[dict]:
    """Every row of papers/<paper>/ledger.yaml, checked (LedgerError names the file and row)."""
    path = ledger_path(paper)
    if not path.is_file():
        raise LedgerError(f"{path}: missing; every paper folder holds its fidelity ledger")
    rows = yaml.safe_load(path.read_text()) or []
    seen = set()
    for i, row in enumerate(rows):
        where = f"{path}, row {i + 1} ({row.get('id', '?') if isinstance(row, dict) else '?'})"
        if not isinstance(row, dict):
            raise LedgerError(f"{where}: a row is a mapping of the ledger fields")
        problems = check_row(row, where)
        if row.get("id") in seen:
            problems.append(f"id {row['id']!r} is used twice")
        seen.add(row.get("id"))
        if problems:
            raise LedgerError(f"{where}: " + "; ".join(problems))
    return rows


def differences(paper: str, *groups: str, params=None, **context) -> list[dict]:
    """The rows of `groups` (in the groups' order, each in file order) whose `when` holds, with
    placeholders filled from params (as `params`) and `context`: what a notebook's summary lists
    under "differences" and the report renders. The method this run used is params[paper].method."""
    context = {"params": params, **context}
    rows = read_ledger(paper)
    out = []
    for group in groups:
        mine = [r for r in rows if r["group"] == group]
        if not mine:
            raise LedgerError(f"{ledger_path(paper)}: no rows in group {group!r}")
        for r in mine:
            if holds(r.get("when"), context):
                out.append({"id": r["id"], "kind": r["kind"], "what": fill(r["item"], context),
                            "paper": fill(r["paper"], context), "released": fill(r["released"], context),
                            "released_at": r["released_at"], "here": fill(r["here"], context),
                            "follows": r["follows"], "why": fill(r["why"], context),
                            "changes_results": r["changes_results"]})
    return out
