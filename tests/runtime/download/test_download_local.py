"""`infernetes download` from a local folder, a `.gguf` file and a pvc:// claim mount."""
from __future__ import annotations

import errno
import json

from infernetes.runtime.download import EXIT_CODES, DownloadFailure

MODEL = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": b"\x07" * 300_000,
    "pytorch_model.bin": b"\x00" * 1000,
    "tokenizer/tokenizer.json": b'{"version": "1.0"}',
    ".git/objects/ab/cdef": b"git object",
}
COPIED = ["config.json", "model.safetensors", "tokenizer/tokenizer.json"]


def _write_model(folder) -> None:
    for name, data in MODEL.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _visible_files(dest) -> list[str]:
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                  if p.is_file() and not p.relative_to(dest).as_posix().startswith("."))


def test_a_local_folder_is_copied_without_unneeded_or_hidden_files(run_cli, tmp_path):
    source, dest = tmp_path / "model", tmp_path / "cache"
    _write_model(source)
    code, events, _ = run_cli(str(source), str(dest))
    assert code == 0
    assert _visible_files(dest) == COPIED
    assert all((dest / name).read_bytes() == MODEL[name] for name in COPIED)
    assert not (dest / ".git").exists()
    marker = json.loads((dest / ".infernetes-download.json").read_text())
    assert marker["source"] == f"file://{source}" and marker["commit"] is None
    total = sum(len(MODEL[name]) for name in COPIED)
    assert events[0] == {"event": "progress", "bytes": 0, "totalBytes": total,
                         "bytesPerSecond": 0.0, "etaSeconds": None}
    assert events[-1]["event"] == "done" and events[-1]["bytesTransferred"] == total


def test_a_gguf_file_is_copied_as_is(run_cli, tmp_path):
    gguf = tmp_path / "models" / "tiny.Q4_K_M.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    dest = tmp_path / "cache"
    code, _, _ = run_cli(f"file://{gguf}", str(dest))
    assert code == 0
    assert _visible_files(dest) == ["tiny.Q4_K_M.gguf"]
    assert (dest / "tiny.Q4_K_M.gguf").read_bytes() == gguf.read_bytes()


def test_pvc_sources_are_read_under_the_pvc_root(run_cli, tmp_path):
    pvc_root, dest = tmp_path / "sources", tmp_path / "cache"
    _write_model(pvc_root / "model-store" / "llama" / "v1")
    code, events, _ = run_cli("pvc://model-store/llama/v1", str(dest),
                              "--pvc-root", str(pvc_root))
    assert code == 0
    assert _visible_files(dest) == COPIED
    assert events[-1]["source"] == "pvc://model-store/llama/v1"

    code, events, _ = run_cli("pvc://model-store/llama/v2", str(tmp_path / "other"),
                              "--pvc-root", str(pvc_root))
    assert code == EXIT_CODES[DownloadFailure.NotFound]
    assert str(pvc_root / "model-store" / "llama" / "v2") in events[-1]["message"]


def test_link_hard_links_files_on_the_same_filesystem(run_cli, tmp_path):
    source, dest = tmp_path / "model", tmp_path / "cache"
    _write_model(source)
    assert run_cli(str(source), str(dest), "--link")[0] == 0
    for name in COPIED:
        assert (dest / name).stat().st_ino == (source / name).stat().st_ino


def test_running_out_of_space_while_copying_is_disk_full(run_cli, tmp_path, monkeypatch):
    from infernetes.runtime.download import transfer

    def full_disk_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if "+" in mode:  # the partial file being written
            def write(data):
                raise OSError(errno.ENOSPC, "No space left on device")
            handle.write = write
        return handle

    source = tmp_path / "model"
    _write_model(source)
    monkeypatch.setattr(transfer, "open", full_disk_open, raising=False)
    log = tmp_path / "termination-log"
    code, events, _ = run_cli(str(source), str(tmp_path / "cache"), "--termination-log", str(log))
    assert code == EXIT_CODES[DownloadFailure.DiskFull]
    assert events[-1]["reason"] == "DiskFull" and "No space left" in events[-1]["message"]
    assert json.loads(log.read_text())["reason"] == "DiskFull"


def test_an_invalid_source_exits_2_naming_it(run_cli, tmp_path):
    log = tmp_path / "termination-log"
    code, events, err = run_cli("s3://bucket/model", str(tmp_path / "cache"),
                                "--termination-log", str(log))
    assert code == EXIT_CODES[DownloadFailure.InvalidSource] == 2
    assert "'s3://bucket/model'" in err and "hf://ORG/NAME[@REVISION]" in err
    assert events == [{"event": "failed", "reason": "InvalidSource",
                       "message": events[0]["message"]}]
    assert "'s3://bucket/model'" in events[0]["message"]
    assert json.loads(log.read_text())["reason"] == "InvalidSource"
    assert not (tmp_path / "cache").exists()
