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


def test_file_sha256_hashes_the_files_one_after_another(tmp_path):
    import hashlib

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (3 << 20) + b"tail")  # more than one chunk
    b.write_bytes(b"second")
    assert fs.file_sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert fs.file_sha256(a, b) == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    assert fs.file_sha256() == hashlib.sha256(b"").hexdigest()


def test_names_stay_inside_their_folder(tmp_path):
    root = tmp_path / "loras"
    root.mkdir()
    (root / "ok.safetensors").write_bytes(b"")
    (tmp_path / "secret").write_bytes(b"")
    (root / "escape.safetensors").symlink_to(tmp_path / "secret")
    assert fs.is_inside(root / "ok.safetensors", root) and not fs.is_inside(root / "escape.safetensors", root)
    fs.check_plain_name("ok", "LoRA", "--lora-dir")
    for bad in ("", ".", "..", "../ok", "sub/ok", "a\\b", "/etc/passwd"):
        with pytest.raises(ValueError, match="is not a plain name"):
            fs.check_plain_name(bad, "LoRA", "--lora-dir")
