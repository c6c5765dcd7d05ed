"""Setup with no manual step: `make test` and `make reproduce` get headless Chromium first
(scripts/chromium.sh), installing Debian's package when this user may, or stopping at once with the
one-line fix; `reports/` is in the repository with a README, while what the pipeline writes there
stays out of git."""
import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "chromium.sh"


def _bin(tmp_path, **programs) -> Path:
    """A folder of stub programs (name -> shell body), the only thing on PATH for the script."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in programs.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def _run(folder: Path):
    env = {k: v for k, v in os.environ.items() if k != "CHROMIUM"} | {"PATH": str(folder)}
    started = time.perf_counter()
    proc = subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    return proc, time.perf_counter() - started


def test_make_test_and_reproduce_get_chromium_before_anything_else():
    make = (ROOT / "Makefile").read_text()
    for target in ("test", "reproduce"):
        prerequisites = re.search(rf"^{target}:(.*)$", make, re.M).group(1).split()
        assert prerequisites[0] == "chromium", (target, prerequisites)
    assert re.search(r"^chromium:\n\t@?scripts/chromium\.sh$", make, re.M)


def test_a_browser_on_the_path_is_enough(tmp_path):
    folder = _bin(tmp_path, chromium="echo started >&2; exit 3", id="echo 1000")
    proc, _ = _run(folder)
    assert proc.returncode == 0 and proc.stdout == proc.stderr == "", proc


def test_a_user_who_may_not_install_gets_the_fix_at_once(tmp_path):
    """Not root, no sudo: exit 1 within seconds, one line naming the command."""
    folder = _bin(tmp_path, id="echo 1000", **{"apt-get": "echo apt-get ran >&2; exit 0"})
    proc, seconds = _run(folder)
    assert proc.returncode == 1 and seconds < 10
    assert proc.stderr.count("\n") == 1 and "sudo apt-get install -y chromium" in proc.stderr, proc.stderr
    assert "apt-get ran" not in proc.stderr


def test_root_installs_debians_chromium(tmp_path):
    """As root the script runs apt-get (a stub here that 'installs' a chromium stub) and succeeds."""
    folder = tmp_path / "bin"
    calls = tmp_path / "calls"
    _bin(tmp_path, id="echo 0", env='shift; "$@"',       # env DEBIAN_FRONTEND=... apt-get ...: run the command
         **{"apt-get": f'echo "$@" >> {calls}; case "$*" in *install*) printf "#!/bin/sh\\n" > {folder}/chromium; '
                       f'/bin/chmod +x {folder}/chromium;; esac'})
    proc, _ = _run(folder)
    assert proc.returncode == 0, proc
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq chromium"]


def test_reports_folder_is_tracked_with_its_readme_and_nothing_else():
    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked == ["reports/README.md"], tracked
    readme = (ROOT / "reports" / "README.md").read_text()
    assert "index.html" in readme and "make reproduce" in readme
    for generated in ("reports/index.html", "reports/zhang2021/table1.json", "reports/smoke",
                      "reports/screenshots/index.png"):
        ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", generated], cwd=ROOT)
        assert ignored.returncode == 0, f"{generated} would be committed"


def test_progress_bars_draw_only_on_a_terminal():
    """The `make reproduce` log is a file or a pipe: every tqdm bar of the pipeline's code passes
    disable=None when it is to show (tqdm then draws only when its stream is a terminal), never
    False, which glued the bars' carriage returns into one long line of the log."""
    import ast
    calls = []
    for path in sorted([*(ROOT / "common").rglob("*.py"), *(ROOT / "papers").rglob("*.py"),
                        *(ROOT / "scripts").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "tqdm":
                disable = next((k.value for k in node.keywords if k.arg == "disable"), None)
                shown = disable.body if isinstance(disable, ast.IfExp) else disable
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", ast.dump(shown) if shown else "absent"))
    assert len(calls) >= 8
    none = ast.dump(ast.Constant(None))
    assert all(how == none for _, how in calls), [c for c in calls if c[1] != none]
