"""Where a model comes from: a Hugging Face Hub repository, a path inside a PersistentVolumeClaim,
or a local path. `parse_model_source` turns the URI a user writes into one of these."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

DEFAULT_REVISION = "main"
# Where the download Job mounts each source claim: `pvc://CLAIM/PATH` is read from
# `<pvc_root>/CLAIM/PATH`.
DEFAULT_PVC_ROOT = Path("/sources")
ACCEPTED_FORMS = ("hf://ORG/NAME[@REVISION], pvc://CLAIM[/PATH], file:///ABSOLUTE/PATH "
                  "or /ABSOLUTE/PATH")

# The Hub's rules for a namespace or repository name: letters, digits, `-`, `_`, `.`, not
# starting or ending with `-` or `.`, no `--` or `..`, at most 96 characters for `org/name`.
_HUB_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
# A Kubernetes object name (RFC 1123 subdomain).
_CLAIM_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


@dataclass(frozen=True)
class HubSource:
    repo_id: str   # "org/name"
    revision: str  # branch, tag or commit hash; DEFAULT_REVISION when the URI names none

    @property
    def uri(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}"


@dataclass(frozen=True)
class PVCSource:
    claim: str  # PersistentVolumeClaim name
    path: str   # POSIX path inside the claim, "" for its root; never absolute, never `..`

    @property
    def uri(self) -> str:
        return f"pvc://{self.claim}/{self.path}".rstrip("/")

    def local_path(self, pvc_root: Path) -> Path:
        return pvc_root / self.claim / self.path


@dataclass(frozen=True)
class LocalSource:
    path: Path  # absolute

    @property
    def uri(self) -> str:
        return f"file://{self.path}"


ModelSource = HubSource | PVCSource | LocalSource


def parse_model_source(text: str) -> ModelSource:
    """The source a URI names; ValueError naming `text` and the accepted forms otherwise."""
    if text.startswith("hf://"):
        return _parse_hub(text, text[len("hf://"):])
    if text.startswith("pvc://"):
        return _parse_pvc(text, text[len("pvc://"):])
    if text.startswith("file://"):
        rest = text[len("file://"):]
        if not rest.startswith("/"):
            raise _invalid(text, "a file:// URI needs an absolute path and no host")
        return LocalSource(Path(unquote(rest)))
    if text.startswith("/"):
        return LocalSource(Path(text))
    raise _invalid(text, "unknown scheme" if "://" in text else "not a URI or an absolute path")


def _parse_hub(text: str, rest: str) -> HubSource:
    repo_id, at, revision = rest.partition("@")
    if at and not revision.strip():
        raise _invalid(text, "empty revision after '@'")
    if any(c.isspace() for c in revision):
        raise _invalid(text, "the revision contains whitespace")
    parts = repo_id.split("/")
    if (len(parts) != 2 or len(repo_id) > 96
            or not all(_HUB_NAME.fullmatch(p) and "--" not in p and ".." not in p
                       for p in parts)):
        raise _invalid(text, f"{repo_id!r} is not a Hub repository id of the form org/name")
    return HubSource(repo_id, revision or DEFAULT_REVISION)


def _parse_pvc(text: str, rest: str) -> PVCSource:
    claim, _, path = rest.partition("/")
    if not _CLAIM_NAME.fullmatch(claim):
        raise _invalid(text, f"{claim!r} is not a PersistentVolumeClaim name")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _invalid(text, "the path inside the claim may not contain '..'")
    return PVCSource(claim, "/".join(parts))


def _invalid(text: str, why: str) -> ValueError:
    return ValueError(f"invalid model source {text!r} ({why}); expected {ACCEPTED_FORMS}")
