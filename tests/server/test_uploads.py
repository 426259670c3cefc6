"""Packing a spec's directory on the laptop and unpacking the upload on the head:
a round trip keeps what a local submit ships, and a hostile archive is refused
with one line naming the entry, leaving nothing written anywhere."""

from __future__ import annotations

import copy
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from scheduler import packaging
from scheduler.errors import UserError
from scheduler.server import uploads
from scheduler.server.uploads import pack_directory, unpack


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]], compression: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return buffer.getvalue()


def _info(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """An empty private directory, as the server makes one, alone in its parent."""
    parent = tmp_path / "upload"
    parent.mkdir(mode=0o700)
    made = parent / "code"
    made.mkdir(mode=0o700)
    return made


def _refused(data: bytes, dest: Path, *words: str, **limits) -> str:
    """Unpacking ``data`` raises a one-line UserError holding ``words``, and
    leaves ``dest`` empty and its parent as it was."""
    before = sorted(os.listdir(dest.parent))
    with pytest.raises(UserError) as caught:
        unpack(data, dest, **limits)
    message = str(caught.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    assert dest.is_dir() and not os.listdir(dest)
    assert sorted(os.listdir(dest.parent)) == before, "something was left beside dest"
    return message


# ---------------------------------------------------------------- the round trip

def test_a_directory_round_trips_as_a_local_submit_would_ship_it(tmp_path: Path, dest: Path):
    project = tmp_path / "project"
    (project / "lib" / "deep").mkdir(parents=True)
    (project / ".git").mkdir()
    (project / "__pycache__").mkdir()
    (project / "spec.yaml").write_text("experiment: x\n")
    (project / "lib" / "model.py").write_text("W = 1\n")
    (project / "lib" / "deep" / "data.bin").write_bytes(bytes(range(256)) * 40)
    (project / "lib" / "model.pyc").write_bytes(b"compiled")
    (project / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (project / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"compiled")
    (project / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (project / "run.sh").chmod(0o755)
    (project / "inside-link.py").symlink_to(project / "lib" / "model.py")  # inside: shipped as the file

    archive = pack_directory(project, "spec.yaml")
    written = unpack(archive, dest)

    expected = {"spec.yaml", "lib/model.py", "lib/deep/data.bin", "run.sh", "inside-link.py"}
    assert set(written) == expected
    assert _tree(dest) == {name: (project / name).read_bytes() for name in expected}
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "spec.yaml").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "lib").stat().st_mode) == 0o700
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert not (dest / "inside-link.py").is_symlink()
    assert sorted(os.listdir(dest.parent)) == ["code"], "the staging directory was left behind"


def test_packing_is_deterministic_and_deflated(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "a.py").write_text("x = 1\n" * 1000)
    first = pack_directory(project, "s.yaml")
    os.utime(project / "a.py", (1_700_000_000, 1_700_000_000))
    assert pack_directory(project, "s.yaml") == first
    with zipfile.ZipFile(io.BytesIO(first)) as zf:
        (info,) = zf.infolist()
    assert info.compress_type == zipfile.ZIP_DEFLATED and info.date_time == (1980, 1, 1, 0, 0, 0)


def test_a_plain_zip_with_directory_entries_and_no_unix_modes_unpacks(dest: Path):
    plain = zipfile.ZipInfo("pkg/mod.py")
    plain.external_attr = 0  # as zips made elsewhere may be
    data = _zip([(_info("pkg/", stat.S_IFDIR | 0o755), b""), (plain, b"y = 2\n"), ("top.txt", b"t")],
                compression=zipfile.ZIP_DEFLATED)
    assert sorted(unpack(data, dest)) == ["pkg/mod.py", "top.txt"]
    assert (dest / "pkg" / "mod.py").read_bytes() == b"y = 2\n"
    assert stat.S_IMODE((dest / "pkg" / "mod.py").stat().st_mode) == 0o600


def test_modes_are_exact_whatever_the_umask(dest: Path):
    data = _zip([(_info("bin/run.sh", stat.S_IFREG | 0o755), b"#!/bin/sh\n"), ("a.txt", b"a")])
    previous = os.umask(0o177)  # would strip the owner's exec bit from files and directories
    try:
        unpack(data, dest)
    finally:
        os.umask(previous)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in (dest, dest / "bin", dest / "bin" / "run.sh", dest / "a.txt")}
    assert list(modes.values()) == [0o700, 0o700, 0o700, 0o600], modes


# ---------------------------------------------------------------- pack_directory refusals

def test_packing_refuses_a_directory_over_the_size_limit(tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "s.yaml").write_text("experiment: x\n")
    (project / "weights.bin").write_bytes(b"\0" * 5000)
    monkeypatch.setattr(packaging, "MAX_PACKAGE_BYTES", 4096)
    with pytest.raises(UserError, match=r"^s\.yaml: .*holds more than"):
        pack_directory(project, "s.yaml")
    monkeypatch.setattr(packaging, "MAX_PACKAGE_BYTES", 10_000)
    assert pack_directory(project, "s.yaml")


def test_packing_refuses_an_archive_over_the_limit_even_when_the_files_fit(tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    for i in range(40):  # tiny files: the zip's own headers outweigh their content
        (project / f"f{i:02}.txt").write_text("x")
    monkeypatch.setattr(packaging, "MAX_PACKAGE_BYTES", 1000)
    with pytest.raises(UserError, match=r"^s\.yaml: .*packs to"):
        pack_directory(project, "s.yaml")


def test_packing_refuses_more_files_than_the_server_takes(tmp_path: Path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    for i in range(4):
        (project / f"f{i}.txt").write_text("x")
    monkeypatch.setattr(uploads, "MAX_ENTRIES", 3)
    with pytest.raises(UserError, match=r"^s\.yaml: .*holds 4 files, more than the 3"):
        pack_directory(project, "s.yaml")
    monkeypatch.setattr(uploads, "MAX_ENTRIES", 4)
    assert pack_directory(project, "s.yaml")


def test_packing_refuses_a_link_out_of_the_directory(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (project / "s.yaml").write_text("experiment: x\n")
    (project / "creds").symlink_to(secret)
    with pytest.raises(UserError, match=r"^s\.yaml: .*creds links to .*outside the spec's directory"):
        pack_directory(project, "s.yaml")


def test_packing_refuses_a_name_the_server_would_refuse(tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "a\\b.py").write_text("")
    with pytest.raises(UserError, match=r"^s\.yaml: .*backslash"):
        pack_directory(project, "s.yaml")


# ---------------------------------------------------------------- unpack refusals

def test_not_a_zip_is_refused(dest: Path):
    _refused(b"this is not a zip", dest, "not a readable zip")


def test_an_upload_over_max_bytes_is_refused(dest: Path):
    data = _zip([("a.bin", os.urandom(3000))])
    _refused(data, dest, "3,", "at most 2,000", max_bytes=2000)
    assert unpack(data, dest, max_bytes=4000) == ["a.bin"]


def test_declared_sizes_over_max_bytes_are_refused(dest: Path):
    # zeros deflate to a few bytes: the upload is small, what it unpacks to is not
    data = _zip([("a.bin", b"\0" * 600), ("b.bin", b"\0" * 600)], compression=zipfile.ZIP_DEFLATED)
    assert len(data) < 1000
    _refused(data, dest, "more than 1,000 bytes", "'b.bin'", max_bytes=1000)


def _lying_zip(real: bytes, declared: int) -> bytes:
    """A deflated entry whose central directory declares ``declared`` bytes
    but whose content inflates to ``real`` (zipfile reads sizes from there)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr("bomb.bin", real)
        zf.filelist[-1].file_size = declared  # written into the central directory at close
    return buffer.getvalue()


def test_an_entry_that_inflates_past_its_declared_size_is_refused(dest: Path):
    data = _lying_zip(b"\0" * 2**20, declared=10)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.getinfo("bomb.bin").file_size == 10  # the lie is in place
    _refused(data, dest, "'bomb.bin'")


def test_the_decompressed_bytes_are_counted_not_taken_from_the_header(dest: Path, monkeypatch):
    """zipfile itself stops at the declared size; a reader that did not (as one
    that trusts the header would) must still be caught by unpack's own count."""
    data = _lying_zip(b"\0" * 2**20, declared=10)
    trusting_open = zipfile.ZipFile.open

    def open_past_the_declared_size(self, member, *args, **kwargs):
        info = self.getinfo(member.filename if isinstance(member, zipfile.ZipInfo) else member)
        if info.filename == "bomb.bin":
            member = copy.copy(info)
            member.file_size = 2**20  # the reader goes on to the real end
        return trusting_open(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_past_the_declared_size)
    _refused(data, dest, "'bomb.bin'", "more than the 10 bytes it declares")


def test_an_entry_shorter_than_its_declared_size_is_refused(dest: Path):
    _refused(_lying_zip(b"abc", declared=100), dest, "'bomb.bin'", "holds 3 bytes, not the 100")


def test_too_many_entries_are_refused(dest: Path):
    data = _zip([(f"f{i}.txt", b"") for i in range(6)])
    _refused(data, dest, "6 entries", "at most 5", max_entries=5)
    assert len(unpack(data, dest, max_entries=6)) == 6


@pytest.mark.parametrize(("name", "why"), [
    ("/", "is empty"),
    ("/etc/cron.d/evil", "absolute"),
    ("C:/Windows/evil.txt", "drive letter"),
    ("c:evil.txt", "drive letter"),
    ("..\\..\\evil.txt", "backslash"),
    ("sub\\..\\..\\evil.txt", "backslash"),
    ("../evil.txt", "'..'"),
    ("sub/../../evil.txt", "'..'"),
    ("sub/..", "'..'"),
    ("sub//evil.txt", "empty path component"),
    ("sub/./evil.txt", "'.'"),
])
def test_unsafe_names_are_refused(dest: Path, name: str, why: str):
    data = _zip([("fine.txt", b"fine"), (name, b"x")])
    _refused(data, dest, why, repr(name)[1:-1][:20])
    assert not (dest.parent.parent / "evil.txt").exists()


def test_a_name_with_a_nul_is_refused(dest: Path):
    # zipfile cuts a name at a NUL when writing: put the NUL in the bytes
    data = _zip([("fine.txt", b"fine"), ("okX../../evil.txt", b"x")]).replace(b"okX", b"ok\0")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.infolist()[1].filename == "ok"  # what a reader that trusts zipfile's name would write
    _refused(data, dest, "NUL", "'ok\\x00../../evil.txt'")


def test_unsafe_directory_names_are_refused(dest: Path):
    _refused(_zip([(_info("../up/", stat.S_IFDIR | 0o755), b"")]), dest, "'..'", "'../up/'")


def test_a_symbolic_link_entry_is_refused(dest: Path):
    data = _zip([("fine.txt", b"fine"), (_info("passwd", stat.S_IFLNK | 0o777), b"/etc/passwd")])
    _refused(data, dest, "'passwd'", "symbolic link")


@pytest.mark.parametrize("kind", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_a_device_or_fifo_entry_is_refused(dest: Path, kind: int):
    data = _zip([("fine.txt", b"fine"), (_info("dev", kind | 0o600), b"")])
    _refused(data, dest, "'dev'", "not a regular file")


def test_an_encrypted_entry_is_refused(dest: Path):
    data = bytearray(_zip([("fine.txt", b"fine"), ("secret.txt", b"x")]))
    # set bit 0 of the general-purpose flags in the central directory record of secret.txt
    record = data.rindex(b"PK\x01\x02")
    data[record + 8] |= 0x1
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        assert zf.getinfo("secret.txt").flag_bits & 0x1
    _refused(bytes(data), dest, "'secret.txt'", "encrypted")


def test_duplicate_names_are_refused(dest: Path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("a.py", b"first")
        zf.writestr("a.py", b"second")
    _refused(buffer.getvalue(), dest, "'a.py'", "appears twice")


def test_a_name_both_file_and_directory_is_refused(dest: Path):
    _refused(_zip([("a", b"file"), ("a/b.txt", b"x")]), dest, "'a'", "both a file and a directory")
    _refused(_zip([("x/y/z.txt", b"x"), ("x/y", b"file")]), dest, "'x/y'", "both a file and a directory")
    _refused(_zip([("d", b"file"), (_info("d/", stat.S_IFDIR | 0o755), b"")]), dest, "both a file and a directory")


def test_a_non_empty_dest_is_a_caller_bug(dest: Path):
    (dest / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        unpack(_zip([("a.txt", b"a")]), dest)
    assert os.listdir(dest) == ["old.txt"]
