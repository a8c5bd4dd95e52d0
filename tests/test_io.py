"""Atomic output, permissions of what memlens writes, and the checks made before any work."""

from __future__ import annotations

import os
import stat

import pytest

from memlens import InputError
from memlens.core.io import (
    atomic_path, check_output_file, check_output_folder, parse_json, read_json, remove_stray_temporaries,
    share_permissions, write_text_atomic,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_share_permissions_opens_private_files_and_folders(tmp_path):
    import tempfile

    folder = tempfile.mkdtemp(dir=tmp_path)  # 0700, like the build and conversion folders
    f = os.path.join(folder, "model.safetensors")
    fd = os.open(f, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    assert mode(folder) == 0o700 and mode(f) == 0o600
    share_permissions(folder)
    umask = os.umask(0)
    os.umask(umask)
    assert mode(f) == 0o666 & ~umask and mode(folder) == 0o777 & ~umask
    assert mode(f) & stat.S_IRGRP  # another user of a shared cache can read it


def test_a_killed_atomic_write_leaves_a_temporary_that_is_cleaned(tmp_path):
    class Killed(BaseException):
        pass

    write_text_atomic(tmp_path / "run.json", "{}")
    with pytest.raises(Killed):
        with atomic_path(tmp_path / "big.json") as tmp:
            tmp.write_text("half")
            raise Killed
    assert not (tmp_path / "big.json").exists() and not list(tmp_path.glob(".*.tmp"))  # an exception cleans up
    stray = tmp_path / ".run.json.abc123.tmp"  # what SIGKILL leaves: no finally runs
    stray.write_text('{"model": ')
    assert remove_stray_temporaries(tmp_path) == [stray]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_output_paths_are_checked_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(InputError, match="is a folder; give a file path"):
        check_output_file(tmp_path / "adir")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "out.safetensors")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "afile")
    deep = tmp_path / "new" / "deeper" / "out.safetensors"
    assert check_output_file(deep) == deep and not (tmp_path / "new").exists()  # checked, nothing created
    if os.geteuid() != 0:  # root may write anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(InputError, match="not writable"):
            check_output_file(ro / "x.safetensors")


def test_json_errors_name_the_place_and_survive_deep_nesting(tmp_path):
    with pytest.raises(InputError, match=r"^f.jsonl:7: not valid JSON"):
        parse_json('{"id": ', "f.jsonl:7")
    with pytest.raises(InputError, match=r"^x.json:3: not valid JSON .*; delete it"):
        parse_json('{\n"a": 1,\n"b": }', "x.json", "delete it")
    deep = "[" * 200_000 + "]" * 200_000
    with pytest.raises(InputError, match="nested too deeply"):
        parse_json(deep, "deep.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match="not UTF-8"):
        read_json(tmp_path / "bin.json")
    with pytest.raises(InputError, match="no such file"):
        read_json(tmp_path / "none.json")
