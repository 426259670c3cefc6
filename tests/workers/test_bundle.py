"""Run dirs carried between nodes without a shared filesystem."""

from __future__ import annotations

import io
import zipfile

import pytest

from workers import bundle
from workers.attempt import run_attempt


def test_pack_and_unpack_round_trip(tmp_path):
    src = tmp_path / "src"
    (src / "artifacts" / "sub").mkdir(parents=True)
    (src / "artifacts" / "sub" / "model.bin").write_bytes(b"\x00\x01" * 1000)
    (src / "stdout.log").write_text("hello\n")
    dst = tmp_path / "dst"
    assert bundle.unpack(bundle.pack(src), dst) == 2
    assert (dst / "artifacts" / "sub" / "model.bin").read_bytes() == b"\x00\x01" * 1000
    assert (dst / "stdout.log").read_text() == "hello\n"


def test_pack_only_a_subdirectory(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "a.txt").write_text("a")
    (tmp_path / "stderr.log").write_text("not shipped")
    names = zipfile.ZipFile(io.BytesIO(bundle.pack(tmp_path, only="artifacts"))).namelist()
    assert names == ["artifacts/a.txt"]


def test_unpack_refuses_entries_that_escape(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(ValueError, match="escapes"):
        bundle.unpack(buf.getvalue(), tmp_path / "root")
    assert not (tmp_path / "evil.txt").exists()


def test_pack_refuses_more_than_the_limit(tmp_path):
    (tmp_path / "big").write_bytes(b"x" * 2000)
    with pytest.raises(bundle.BundleTooLarge):
        bundle.pack(tmp_path, limit=1000)


def test_worker_unpacks_upstream_artifacts_it_cannot_see(tmp_path):
    # Given an upstream run dir that exists only "on the head" (here: packed, then removed)
    up = tmp_path / "head" / "runs" / "1" / "attempt-1"
    (up / "artifacts").mkdir(parents=True)
    (up / "artifacts" / "note.txt").write_text("from upstream")
    data = bundle.pack(up, only="artifacts")
    import shutil

    shutil.rmtree(tmp_path / "head")
    code = tmp_path / "code"
    code.mkdir()
    (code / "reader.py").write_text("def main(ctx):\n    return {'text': ctx.input().artifact('note.txt').read_text()}\n")
    # When a downstream attempt on "another node" receives it with its task
    result = run_attempt({
        "job_id": 2, "attempt": 1, "experiment": "e", "stage": "r", "params": {},
        "run_dir": str(tmp_path / "node" / "runs" / "2" / "attempt-1"), "target_kind": "callable",
        "target": "reader:main", "code_dir": str(code),
        "inputs": [{"job_id": 1, "stage": "w", "params": {}, "run_dir": str(up), "metrics": {}, "bundle": data}],
    })
    # Then the job reads the upstream artifact at its usual path
    assert result["outcome"] == "succeeded", result["error"]
    assert result["metrics"]["text"] == "from upstream"


def test_a_run_dir_left_by_a_start_the_store_lost_is_moved_aside(tmp_path):
    from workers.paths import RunPaths

    paths = RunPaths(tmp_path / "runs" / "7" / "attempt-1")
    paths.create()
    paths.write_result({"outcome": "succeeded"})  # an earlier try whose start an OS crash took back
    paths.create()
    assert paths.read_result() is None and not any(paths.root.iterdir())
    (stale,) = (tmp_path / "runs" / "7").glob("attempt-1.stale-*")
    assert (stale / "result.json").exists()
    paths.create()  # an empty one is simply used
    assert set((tmp_path / "runs" / "7").glob("attempt-1*")) == {paths.root, stale}
