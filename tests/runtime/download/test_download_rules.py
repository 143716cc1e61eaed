"""The pure rules: which files are fetched, which failure an error is, how retries back off."""
from __future__ import annotations

import errno

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from infernetes.runtime.download.failures import EXIT_CODES, DownloadFailure, classify
from infernetes.runtime.download.retry import backoff_delay
from infernetes.runtime.download.selection import select_model_files

REPO = ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json",
        "pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
        "flax_model.msgpack", "onnx/model.onnx", "original/consolidated.00.pth",
        "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "README.md",
        ".gitattributes"]


def test_safetensors_make_other_frameworks_weights_unneeded():
    assert select_model_files(REPO) == [
        "README.md", "config.json", "generation_config.json",
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "tokenizer.json", "tokenizer.model",
        "tokenizer_config.json"]


def test_without_safetensors_everything_visible_is_fetched():
    assert select_model_files(["config.json", "pytorch_model.bin", ".gitattributes"]) == [
        "config.json", "pytorch_model.bin"]


def test_include_patterns_fetch_exactly_the_matching_files():
    gguf_repo = ["README.md", "model.Q4_K_M.gguf", "model.Q8_0.gguf", "sub/model.Q4_K_M.gguf"]
    assert select_model_files(gguf_repo, ["*Q4_K_M.gguf"]) == [
        "model.Q4_K_M.gguf", "sub/model.Q4_K_M.gguf"]
    assert select_model_files(REPO, ["*.bin", "config.json"]) == [
        "config.json", "pytorch_model.bin"]


def _http_error(status: int) -> HfHubHTTPError:
    response = httpx2.Response(status, request=httpx2.Request("GET", "http://hub/x"))
    return HfHubHTTPError(f"{status} error", response=response)


@pytest.mark.parametrize("error, reason", [
    (OSError(errno.ENOSPC, "No space left on device"), DownloadFailure.DiskFull),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), DownloadFailure.DiskFull),
    (httpx2.ConnectError("refused"), DownloadFailure.NetworkError),
    (httpx2.ReadTimeout("slow"), DownloadFailure.NetworkError),
    (httpx2.RemoteProtocolError("cut"), DownloadFailure.NetworkError),
    (_http_error(503), DownloadFailure.NetworkError),
    (_http_error(429), DownloadFailure.NetworkError),
    (_http_error(401), DownloadFailure.AuthFailed),
    (_http_error(403), DownloadFailure.AuthFailed),
    (_http_error(404), DownloadFailure.NotFound),
])
def test_errors_map_to_failure_reasons(error, reason):
    assert classify(error).reason is reason


def test_other_errors_are_not_download_failures():
    assert classify(ValueError("a bug")) is None
    assert classify(OSError(errno.EACCES, "Permission denied")) is None


def test_every_reason_has_its_own_exit_code():
    assert set(EXIT_CODES) == set(DownloadFailure)
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)
    assert 0 not in EXIT_CODES.values() and 1 not in EXIT_CODES.values()


def test_backoff_doubles_up_to_a_cap():
    assert [backoff_delay(2.0, i) for i in range(4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_delay(2.0, 30) == 300.0
    assert backoff_delay(0.0, 3) == 0.0
