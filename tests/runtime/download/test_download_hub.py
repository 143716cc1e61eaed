"""`infernetes download hf://...` against a fake Hub on 127.0.0.1 (see fake_hub.py)."""
from __future__ import annotations

import json

from .fake_hub import COMMIT

from infernetes.runtime.download import (
    EXIT_CODES, DownloadError, DownloadFailure, DownloadOptions, cached_hub_model,
    download_model, parse_model_source)

WEIGHTS = bytes(range(256)) * 4096  # 1 MiB
FILES = {
    "config.json": b'{"model_type": "llama"}',
    "model.safetensors": WEIGHTS,
    "tokenizer.json": b'{"version": "1.0"}',
    "pytorch_model.bin": b"\x00" * 5000,  # unneeded next to the safetensors
}
KEPT = ["config.json", "model.safetensors", "tokenizer.json"]
KEPT_BYTES = sum(len(FILES[name]) for name in KEPT)
PROGRESS_FIELDS = {"event", "bytes", "totalBytes", "bytesPerSecond", "etaSeconds"}


def _visible_files(dest) -> list[str]:
    return sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                  if p.is_file() and not p.relative_to(dest).as_posix().startswith("."))


def test_download_fetches_the_model_files_reports_progress_and_marks_dest(
        fake_hub, run_cli, tmp_path):
    fake_hub.add_repo("org/model", FILES)
    dest = tmp_path / "cache"
    code, events, _ = run_cli("hf://org/model", str(dest))

    assert code == 0
    assert _visible_files(dest) == KEPT
    assert all((dest / name).read_bytes() == FILES[name] for name in KEPT)
    assert fake_hub.file_gets("pytorch_model.bin") == []
    marker = json.loads((dest / ".infernetes-download.json").read_text())
    assert marker["source"] == "hf://org/model@main"
    assert marker["commit"] == COMMIT
    assert marker["totalBytes"] == KEPT_BYTES
    assert [f["path"] for f in marker["files"]] == KEPT
    assert marker["completedAt"]
    assert not (dest / ".cache" / "infernetes").exists()  # partial files are gone

    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(set(e) == PROGRESS_FIELDS for e in progress)
    assert all(e["totalBytes"] == KEPT_BYTES for e in progress)
    assert progress[-1]["bytes"] == KEPT_BYTES
    done = events[-1]
    assert done["event"] == "done"
    assert done["bytes"] == done["totalBytes"] == done["bytesTransferred"] == KEPT_BYTES
    assert done["commit"] == COMMIT and done["reused"] is False


def test_an_interrupted_download_resumes_on_the_next_run(fake_hub, run_cli, tmp_path):
    fake_hub.add_repo("org/model", FILES)
    fake_hub.cut_once("org/model", "model.safetensors")
    dest = tmp_path / "cache"

    code, events, _ = run_cli("hf://org/model", str(dest), "--retries", "0")
    assert code == EXIT_CODES[DownloadFailure.NetworkError]
    assert events[-1]["event"] == "failed" and events[-1]["reason"] == "NetworkError"
    assert not (dest / "model.safetensors").exists()

    code, events, _ = run_cli("hf://org/model", str(dest))
    assert code == 0
    first, second = fake_hub.file_gets("model.safetensors")
    assert "range" not in first.headers
    assert second.headers["range"] == f"bytes={len(WEIGHTS) // 2}-"
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS
    assert len(fake_hub.file_gets("config.json")) == 1  # complete files are not fetched again
    # The second run counts the resumed half as present, and moved only the rest.
    assert events[0]["bytes"] == len(FILES["config.json"]) + len(WEIGHTS) // 2
    assert events[-1]["bytesTransferred"] == KEPT_BYTES - events[0]["bytes"]


def test_a_server_that_ignores_range_restarts_the_file_cleanly(fake_hub, run_cli, tmp_path):
    fake_hub.add_repo("org/model", FILES)
    fake_hub.cut_once("org/model", "model.safetensors")
    fake_hub.honor_range = False
    dest = tmp_path / "cache"
    assert run_cli("hf://org/model", str(dest), "--retries", "0")[0] == 13
    code, events, _ = run_cli("hf://org/model", str(dest))
    assert code == 0
    assert fake_hub.file_gets("model.safetensors")[1].headers["range"] == (
        f"bytes={len(WEIGHTS) // 2}-")
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS  # not half + whole
    # Progress went back by the discarded half, and ended at the total.
    assert [e["bytes"] for e in events if e["event"] == "progress"][-1] == KEPT_BYTES


def test_a_cut_connection_is_retried_in_process_from_where_it_stopped(
        fake_hub, run_cli, tmp_path):
    fake_hub.add_repo("org/model", FILES)
    fake_hub.cut_once("org/model", "model.safetensors")
    code, _, _ = run_cli("hf://org/model", str(tmp_path / "cache"), "--retries", "1")
    assert code == 0
    assert [r.headers.get("range") for r in fake_hub.file_gets("model.safetensors")] == [
        None, f"bytes={len(WEIGHTS) // 2}-"]
    assert (tmp_path / "cache" / "model.safetensors").read_bytes() == WEIGHTS


def test_a_rerun_with_a_complete_marker_sends_no_request(fake_hub, run_cli, tmp_path):
    fake_hub.add_repo("org/model", FILES)
    dest = tmp_path / "cache"
    assert run_cli("hf://org/model@main", str(dest))[0] == 0
    fake_hub.requests.clear()

    code, events, _ = run_cli("hf://org/model", str(dest))
    assert code == 0
    assert fake_hub.requests == []
    assert events == [{"event": "done", "bytes": KEPT_BYTES, "totalBytes": KEPT_BYTES,
                       "bytesPerSecond": 0.0, "etaSeconds": 0, "source": "hf://org/model@main",
                       "dest": str(dest), "commit": COMMIT, "files": 3,
                       "bytesTransferred": 0, "reused": True}]


def test_a_marker_for_another_source_is_replaced_with_no_leftovers(fake_hub, run_cli, tmp_path):
    fake_hub.add_repo("org/model", FILES)
    fake_hub.add_repo("org/other", {"config.json": b'{"model_type": "qwen2"}',
                                    "weights.safetensors": b"\x01" * 100})
    dest = tmp_path / "cache"
    assert run_cli("hf://org/model", str(dest))[0] == 0
    assert run_cli("hf://org/other", str(dest))[0] == 0
    assert _visible_files(dest) == ["config.json", "weights.safetensors"]
    assert (dest / "config.json").read_bytes() == b'{"model_type": "qwen2"}'
    marker = json.loads((dest / ".infernetes-download.json").read_text())
    assert marker["source"] == "hf://org/other@main"


def test_missing_or_wrong_token_is_auth_failed_with_a_termination_log(
        fake_hub, run_cli, tmp_path, monkeypatch):
    fake_hub.add_repo("org/gated", FILES, token="hf_right")
    log = tmp_path / "termination-log"
    code, events, _ = run_cli("hf://org/gated", str(tmp_path / "a"), "--termination-log", str(log))
    assert code == EXIT_CODES[DownloadFailure.AuthFailed] == 10
    assert events[-1]["event"] == "failed" and events[-1]["reason"] == "AuthFailed"
    assert json.loads(log.read_text()) == {"reason": "AuthFailed",
                                           "message": events[-1]["message"]}
    assert "gated" in events[-1]["message"]

    token_file = tmp_path / "token"
    token_file.write_text("hf_wrong\n")
    code, events, _ = run_cli("hf://org/gated", str(tmp_path / "b"),
                              "--token-file", str(token_file))
    assert code == 10
    assert "Invalid credentials" in events[-1]["message"]

    monkeypatch.setenv("HF_TOKEN", "hf_right")
    assert run_cli("hf://org/gated", str(tmp_path / "c"))[0] == 0
    assert fake_hub.requests[-1].headers["authorization"] == "Bearer hf_right"


def test_unknown_repo_revision_or_include_pattern_is_not_found(fake_hub, run_cli, tmp_path):
    fake_hub.add_repo("org/model", FILES)
    log = tmp_path / "termination-log"
    for source, extra in [("hf://org/missing", ()), ("hf://org/model@v9", ()),
                          ("hf://org/model", ("--include", "*.gguf"))]:
        code, events, _ = run_cli(source, str(tmp_path / "cache"), "--termination-log", str(log),
                                  *extra)
        assert code == EXIT_CODES[DownloadFailure.NotFound] == 11, source
        assert events[-1]["reason"] == "NotFound"
        assert json.loads(log.read_text())["reason"] == "NotFound"
    assert fake_hub.file_gets("config.json") == []


def test_too_little_free_space_fails_before_any_file_is_fetched(
        fake_hub, run_cli, tmp_path, monkeypatch):
    from infernetes.runtime.download import space

    fake_hub.add_repo("org/model", FILES)
    monkeypatch.setattr(space, "free_bytes", lambda path: KEPT_BYTES - 1)
    log = tmp_path / "termination-log"
    code, events, _ = run_cli("hf://org/model", str(tmp_path / "cache"), "--termination-log",
                              str(log))
    assert code == EXIT_CODES[DownloadFailure.DiskFull] == 12
    assert events[-1]["reason"] == "DiskFull" and str(KEPT_BYTES) in events[-1]["message"]
    assert json.loads(log.read_text())["reason"] == "DiskFull"
    assert not any("/resolve/" in r.path for r in fake_hub.requests)


def test_an_unreachable_hub_is_a_network_error_after_the_retries(
        closed_endpoint, run_cli, tmp_path, caplog):
    code, events, _ = run_cli("hf://org/model", str(tmp_path / "cache"), "--retries", "2")
    assert code == EXIT_CODES[DownloadFailure.NetworkError] == 13
    assert events[-1]["reason"] == "NetworkError"
    assert "Connection refused" in events[-1]["message"]
    assert "retry 2 of 2" in caplog.text and "retry 3" not in caplog.text


def test_network_errors_back_off_exponentially(closed_endpoint, tmp_path):
    delays = []
    options = DownloadOptions(retries=3, retry_delay_seconds=1.5, sleep=delays.append)
    try:
        download_model(parse_model_source("hf://org/model"), tmp_path / "cache", options)
    except DownloadError as e:
        assert e.reason is DownloadFailure.NetworkError
    assert delays == [1.5, 3.0, 6.0]


def test_cached_hub_model_fetches_once_into_the_infernetes_cache(
        fake_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("INFERNETES_CACHE", str(tmp_path / "infernetes"))
    fake_hub.add_repo("org/model", FILES, revisions=("main", "v1"))
    folder = cached_hub_model("hf://org/model@v1")
    assert folder == tmp_path / "infernetes" / "hub" / "org--model--v1"
    assert (folder / "config.json").read_bytes() == FILES["config.json"]
    fake_hub.requests.clear()
    assert cached_hub_model("hf://org/model@v1") == folder
    assert fake_hub.requests == []


def test_the_fake_hub_serves_huggingface_hubs_own_download(fake_hub, tmp_path):
    """Keeps the fake honest: huggingface_hub's HEAD-then-GET path accepts its answers."""
    from huggingface_hub import hf_hub_download

    fake_hub.add_repo("org/model", FILES)
    path = hf_hub_download("org/model", "model.safetensors", local_dir=tmp_path / "hf")
    assert open(path, "rb").read() == WEIGHTS
    assert [r.method for r in fake_hub.requests if "/resolve/" in r.path] == ["HEAD", "GET"]
