"""Open report pages in headless Chromium and read back what the browser saw.

`open_page(path)` copies the page beside itself with a probe script at the top of <head>, loads
it in headless Chromium with the network blocked (`--host-resolver-rules`), and returns what the
probe saw after the load event:
  images     every <img>: its src (data: URIs shortened), whether it loaded (complete, naturalWidth > 0)
  resources  every resource the page fetched (performance entries; data: URIs are not listed)
  errors     script errors, failed loads (error events in the capture phase), console.error calls,
             unhandled promise rejections
  math       <math> elements, and how many of them the browser made MathMLElements with a size
  claims     `table.claims` tables and their claim rows
  figures    a notebook's figures on a paper page (`img.figure`, common/report_figures.py), and in a
             notebook's HTML the code cells that draw one (plt.show, savefig, a *_chart call) but
             show no image: the figure the reader was promised is missing
plus the console lines Chromium logged and, if asked, a screenshot. `problems(seen)` lists what
is wrong (missing images, requests that left the file system, errors, unrendered MathML).

Chromium: Debian's `chromium` (`apt-get install -y chromium`; .ci/run installs it), or the path
in $CHROMIUM. `python -m common.browser [reports]` checks reports/index.html and every paper page
and writes screenshots under reports/screenshots/.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = ("headless Chromium is needed to open the report pages: install Debian's package "
                "(`apt-get install -y chromium`; .ci/run does this before `make test`) or set $CHROMIUM "
                "to a Chromium/Chrome binary")

PROBE = r"""<script>(function(){
var errs=[];
window.addEventListener('error',function(e){var t=e.target;
  if(t&&t!==window&&(t.src||t.href)){errs.push('failed to load '+String(t.src||t.href).slice(0,120));}
  else{errs.push('script error: '+e.message+' ('+(e.filename||'')+':'+(e.lineno||'')+')');}},true);
window.addEventListener('unhandledrejection',function(e){errs.push('unhandled rejection: '+e.reason);});
var ce=console.error;console.error=function(){errs.push('console.error: '+Array.prototype.join.call(arguments,' '));
  return ce.apply(console,arguments);};
window.addEventListener('load',function(){setTimeout(function(){
  var imgs=Array.prototype.map.call(document.images,function(i){var s=i.getAttribute('src')||'';
    return {src:s.slice(0,60),ok:i.complete&&i.naturalWidth>0,width:i.naturalWidth,height:i.naturalHeight};});
  var res=performance.getEntriesByType('resource').map(function(r){return r.name;});
  var maths=document.getElementsByTagName('math');
  var rendered=Array.prototype.filter.call(maths,function(m){return typeof MathMLElement!=='undefined'&&
    m instanceof MathMLElement&&m.getBoundingClientRect().width>0;}).length;
  var seen={images:imgs,resources:res,errors:errs,math:maths.length,math_rendered:rendered,
    claims_tables:document.querySelectorAll('table.claims').length,
    claim_rows:document.querySelectorAll('table.claims tr[data-kind]').length,title:document.title,
    figures:document.querySelectorAll('img.figure').length,figure_cells:0,empty_figure_cells:[]};
  Array.prototype.forEach.call(document.querySelectorAll('.jp-CodeCell'),function(c,i){
    var src=(c.querySelector('.jp-InputArea')||{}).textContent||'';
    if(!/plt\.show\(|savefig\(|_chart\(/.test(src)){return;}
    seen.figure_cells++;
    if(!c.querySelector('.jp-OutputArea img')){seen.empty_figure_cells.push(i);}});
  document.documentElement.setAttribute('data-browser-check',JSON.stringify(seen));},0);});
})();</script>"""
_SEEN = re.compile(r'data-browser-check="([^"]*)"')


class BrowserMissing(RuntimeError):
    pass


def find_chromium() -> str | None:
    """$CHROMIUM if set (None when it names no executable), else the first of CANDIDATES on PATH."""
    if os.environ.get("CHROMIUM"):
        return shutil.which(os.environ["CHROMIUM"])
    return next((p for p in (shutil.which(c) for c in CANDIDATES) if p), None)


def _with_probe(text: str) -> str:
    m = re.search(r"<head[^>]*>", text, re.I)
    if m:
        return text[:m.end()] + PROBE + text[m.end():]
    m = re.search(r"<html[^>]*>", text, re.I)
    at = m.end() if m else 0
    return text[:at] + PROBE + text[at:]


def open_page(path: str | Path, screenshot: str | Path | None = None, width: int = 1200, height: int = 2400,
              timeout: float = 90.0) -> dict:
    """Load `path` in headless Chromium (network blocked) and return what the probe saw, the
    console lines, the seconds it took and the screenshot written (if asked)."""
    chromium = find_chromium()
    if not chromium:
        raise BrowserMissing(INSTALL_HINT)
    path = Path(path).resolve()
    probe_copy = path.with_name(f".browser-check-{path.name}")   # beside it: relative links still resolve
    probe_copy.write_text(_with_probe(path.read_text(encoding="utf-8")), encoding="utf-8")
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                   "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
                   "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
                   "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                   f"--window-size={width},{height}"]
            if screenshot:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                cmd.append(f"--screenshot={Path(screenshot).resolve()}")
            cmd += ["--dump-dom", probe_copy.as_uri()]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    finally:
        probe_copy.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    m = _SEEN.search(proc.stdout)
    if not m:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise RuntimeError(f"Chromium (exit {proc.returncode}) did not run the page's load handler for {path}; "
                           f"its last log lines:\n{tail}")
    seen = json.loads(html.unescape(m.group(1)))
    seen["console"] = [line.split("] ", 1)[-1] for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    seen.update(page=str(path), seconds=round(seconds, 2), chromium=chromium,
                screenshot=str(screenshot) if screenshot and Path(screenshot).exists() else None)
    return seen


def problems(seen: dict, expect_math: bool = False, expect_claims: bool = False,
             expect_figures: bool = False) -> list[str]:
    """What a reader would see broken: images that did not load, requests that left the file
    system, script or console errors, MathML the browser did not render, notebook cells that draw
    a figure but show none; and, when expected, no equations, no claims table or no notebook figure."""
    out = [f"image not loaded: {i['src']}" for i in seen["images"] if not i["ok"]]
    out += [f"external request: {r}" for r in seen["resources"] if not r.startswith(("file:", "data:"))]
    out += [f"error: {e}" for e in seen["errors"]]
    if seen["math_rendered"] < seen["math"]:
        out.append(f"{seen['math'] - seen['math_rendered']} of {seen['math']} <math> elements not rendered as MathML")
    if expect_math and not seen["math"]:
        out.append("no <math> element: equations are not MathML")
    if expect_claims and not (seen["claims_tables"] and seen["claim_rows"]):
        out.append("no claims table with claim rows")
    if seen.get("empty_figure_cells"):
        out.append(f"code cells that draw a figure but show none (cells {seen['empty_figure_cells']} of the page)")
    if expect_figures and not seen.get("figures"):
        out.append("no figure of the notebooks on the page")
    return out


def check_reports(reports: str | Path, screenshots: str | Path | None = None) -> dict[str, list[str]]:
    """index.html, every <paper>/index.html (claims and the notebooks' figures expected) and every
    executed notebook's page under `reports`; screenshots under reports/screenshots/."""
    reports = Path(reports)
    shots = Path(screenshots) if screenshots else reports / "screenshots"
    pages = [reports / "index.html", *sorted(reports.glob("*/index.html"))]
    notebooks = sorted(p for p in reports.glob("*/*.html") if p.name != "index.html" and not p.name.startswith("."))
    found = {}
    for page in pages:
        name = "index" if page.parent == reports else page.parent.name
        seen = open_page(page, shots / f"{name}.png")
        paper = page.parent != reports
        found[str(page.relative_to(reports))] = problems(seen, expect_claims=paper, expect_figures=paper)
    for page in notebooks:
        seen = open_page(page, shots / f"{page.parent.name}-{page.stem}.png")
        found[str(page.relative_to(reports))] = problems(seen)
    return found


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reports = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "reports"
    try:
        found = check_reports(reports)
    except BrowserMissing as e:
        print(e, file=sys.stderr)
        return 2
    for page, issues in found.items():
        print(f"{page}: " + ("ok" if not issues else "; ".join(issues)))
    print(f"screenshots: {reports / 'screenshots'}")
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
