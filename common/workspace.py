"""Profiles side by side: `python -m common.workspace smoke` (what `make smoke` and
`make reproduce PROFILE=smoke` run).

The default profile runs in the project itself: `dvc repro` writes data/ and reports/. Every other
profile runs the same pipeline in a workspace of its own, profiles/<profile>/: a copy of the
project's files (tracked, and untracked but not ignored, as they are now in the working tree)
whose params.yaml says `profile: <profile>`, with its own data/, reports/ and dvc.lock and the
project's DVC cache. A smoke run therefore never replaces the default corpus, caches or reports,
and picking a profile edits no file of yours. Its reports are reachable as reports/<profile>/
(a link into the workspace). Each run first brings the workspace's copy up to date (files changed
or gone since the last run), so DVC re-runs exactly the stages whose code or params changed.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKSPACES = "profiles"
PROFILE_LINE = re.compile(r"^profile:.*$", re.M)
SHARED = ("data/weights",)          # published weight files: fetched once (`make weights`), read-only
OWN = (".dvc/", ".git", "dvc.lock")   # a workspace is a DVC project of its own (no git): its .dvc/, its lock


def known_profiles(root: Path = ROOT) -> list[str]:
    return ["default"] + sorted(p.stem for p in (root / "params").glob("*.yaml"))


def project_files(root: Path = ROOT) -> list[str]:
    """The files a workspace copies: git's tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and (root / f).is_file() and not f.startswith(OWN))


def sync(workspace: Path, profile: str, root: Path = ROOT) -> int:
    """Bring `workspace` up to date with the project's files; its params.yaml picks `profile`.
    Returns how many files changed. Files the last sync copied and the project no longer has go."""
    manifest = workspace / ".workspace_files"
    before = set(manifest.read_text().split("\n")) - {""} if manifest.is_file() else set()
    files = project_files(root)
    changed = 0
    for rel in files:
        src, dst = root / rel, workspace / rel
        if rel == "params.yaml":
            text, n = PROFILE_LINE.subn(f"profile: {profile}", src.read_text(), count=1)
            if n != 1:
                raise SystemExit(f"{src}: no top-level `profile:` line to set to {profile}")
            if not dst.is_file() or dst.read_text() != text:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_text(text)
                changed += 1
        elif not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            changed += 1
    for rel in sorted(before - set(files)):
        (workspace / rel).unlink(missing_ok=True)
        changed += 1
    manifest.write_text("\n".join(files) + "\n")
    return changed


def prepare(profile: str, root: Path = ROOT) -> Path:
    """profiles/<profile>/, created on first use (a DVC project without git that uses this
    project's cache), synced, with the shared published weights linked in and reports/<profile>
    pointing at its reports."""
    if profile not in known_profiles(root):
        raise SystemExit(f"profile {profile!r}: unknown; the profiles are {', '.join(known_profiles(root))} "
                         f"(params/<profile>.yaml)")
    workspace = root / WORKSPACES / profile
    workspace.mkdir(parents=True, exist_ok=True)
    changed = sync(workspace, profile, root)
    if not (workspace / ".dvc").is_dir():
        dvc = [sys.executable, "-m", "dvc"]
        subprocess.run(dvc + ["init", "--no-scm", "-q"], cwd=workspace, check=True)
        subprocess.run(dvc + ["config", "--local", "cache.dir", str(root / ".dvc" / "cache")], cwd=workspace,
                       check=True)
    for rel in SHARED:
        link, target = workspace / rel, root / rel
        if target.exists() and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
    reports = root / "reports" / profile
    reports.parent.mkdir(exist_ok=True)
    if not reports.is_symlink():
        reports.symlink_to(Path("..") / WORKSPACES / profile / "reports")
    print(f"profile {profile}: workspace {workspace.relative_to(root)} ({changed} file(s) updated); "
          f"reports in reports/{profile}/")
    return workspace


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="run the pipeline for one profile in its own workspace")
    ap.add_argument("profile", help="smoke or paper (default runs in the project itself: `dvc repro`)")
    ap.add_argument("dvc_args", nargs="*", help="arguments for `dvc repro` (default: none, the whole pipeline)")
    args = ap.parse_args(argv)
    if args.profile == "default":
        raise SystemExit("the default profile runs in the project itself: `make reproduce` (dvc repro)")
    workspace = prepare(args.profile)
    # The workspace's own copy of the code comes first on the import path (the editable install
    # points at the project), for the stages and for the notebook kernels they start.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(workspace), os.environ.get("PYTHONPATH")])),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           # the project's Jupyter kernel (scripts/lab_kernel.py) starts in this root, not the project's
           "AFFECT_REPRO_ROOT": str(workspace)}
    return subprocess.run([sys.executable, "-m", "dvc", "repro", *args.dvc_args], cwd=workspace, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
