"""latentdiff.fs.atomic_write: the one writer behind configs, PNGs, cards, LoRAs and checkpoints."""

import os
import stat

import pytest
import torch

from latentdiff import fs


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("data, expected", [(b"\x00\x01bytes", b"\x00\x01bytes"),
                                            ("text é\n", "text é\n".encode("utf-8"))])
def test_writes_bytes_and_utf8_text_with_the_usual_permissions(tmp_path, data, expected):
    old = os.umask(0o027)
    try:
        path = fs.atomic_write(tmp_path / "sub" / "f.txt", data)
    finally:
        os.umask(old)
    assert path.read_bytes() == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0666 & ~umask, as open() makes it (mkstemp: 0600)
    assert _listing(path.parent) == ["f.txt"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def writer(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        fs.atomic_write(path, writer)
    assert path.read_bytes() == b"old" and _listing(tmp_path) == ["f.bin"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError):
        fs.atomic_write(path, "new")
    assert path.read_text() == "old" and _listing(tmp_path) == ["f.txt"]


def test_exclusive_never_replaces(tmp_path):
    path = tmp_path / "a.png"
    fs.atomic_write(path, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        fs.atomic_write(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first" and _listing(tmp_path) == ["a.png"]


def test_exclusive_without_hard_links_still_refuses_an_existing_name(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "a.png"
    fs.atomic_write(path, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        fs.atomic_write(path, b"second", exclusive=True)
    assert path.read_bytes() == b"first" and _listing(tmp_path) == ["a.png"]


def test_safetensors_round_trip_with_header(tmp_path):
    from safetensors import safe_open

    w = torch.arange(6.0).reshape(2, 3).t()  # not contiguous
    path = fs.save_safetensors_atomic({"w": w}, tmp_path / "x.safetensors", {"format": "pt", "k": "v"})
    with safe_open(str(path), framework="pt") as f:
        assert torch.equal(f.get_tensor("w"), w) and f.metadata() == {"format": "pt", "k": "v"}
    assert _listing(tmp_path) == ["x.safetensors"]
