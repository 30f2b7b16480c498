import os

import pytest

from unnoise.files import write_atomic


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_atomic(target, lambda p: p.write_text("first"))
    assert target.read_text() == "first"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_current_umask())

    def fail(p):
        p.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert target.read_text() == "first"  # the old file survives a failed write
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temporary left behind


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
