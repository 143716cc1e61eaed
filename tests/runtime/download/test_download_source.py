"""Parsing `infernetes download SOURCE`: each accepted form, and errors that name the source."""
from __future__ import annotations

from pathlib import Path

import pytest

from infernetes.runtime.download.source import (
    HubSource, LocalSource, PVCSource, parse_model_source)


@pytest.mark.parametrize("text, expected", [
    ("hf://HuggingFaceTB/SmolLM2-135M-Instruct",
     HubSource("HuggingFaceTB/SmolLM2-135M-Instruct", "main")),
    ("hf://org/name@v1.0", HubSource("org/name", "v1.0")),
    ("hf://org/name@refs/pr/7", HubSource("org/name", "refs/pr/7")),
    ("hf://meta-llama/Llama-3.1-8B@0123456789abcdef0123456789abcdef01234567",
     HubSource("meta-llama/Llama-3.1-8B", "0123456789abcdef0123456789abcdef01234567")),
    ("pvc://model-store/llama/v1", PVCSource("model-store", "llama/v1")),
    ("pvc://model-store", PVCSource("model-store", "")),
    ("pvc://model-store/./a//b/", PVCSource("model-store", "a/b")),
    ("/models/llama", LocalSource(Path("/models/llama"))),
    ("/models/tiny.Q4_K_M.gguf", LocalSource(Path("/models/tiny.Q4_K_M.gguf"))),
    ("file:///models/my%20model", LocalSource(Path("/models/my model"))),
])
def test_valid_sources(text, expected):
    assert parse_model_source(text) == expected


@pytest.mark.parametrize("text, why", [
    ("s3://bucket/model", "unknown scheme"),
    ("models/llama", "not a URI or an absolute path"),
    ("", "not a URI or an absolute path"),
    ("hf://name-only", "org/name"),
    ("hf://org/name/extra", "org/name"),
    ("hf://org/na me", "org/name"),
    ("hf://org/-name", "org/name"),
    ("hf://org/na--me", "org/name"),
    ("hf://org/name@", "empty revision"),
    ("hf://org/name@a b", "whitespace"),
    ("pvc://Model_Store/x", "PersistentVolumeClaim name"),
    ("pvc:///x", "PersistentVolumeClaim name"),
    ("pvc://store/../etc", "'..'"),
    ("file://host/models", "absolute path and no host"),
])
def test_invalid_sources_name_the_source_and_the_accepted_forms(text, why):
    with pytest.raises(ValueError) as error:
        parse_model_source(text)
    message = str(error.value)
    assert repr(text) in message
    assert why in message
    assert "hf://ORG/NAME[@REVISION]" in message and "pvc://CLAIM[/PATH]" in message


def test_uri_is_canonical():
    assert parse_model_source("hf://org/name").uri == parse_model_source("hf://org/name@main").uri
    assert parse_model_source("pvc://store/a/b/").uri == "pvc://store/a/b"
    source = parse_model_source("pvc://store/a/b")
    assert source.local_path(Path("/sources")) == Path("/sources/store/a/b")
