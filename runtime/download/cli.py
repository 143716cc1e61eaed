"""`infernetes download SOURCE DEST`: what the operator's model-cache Job runs.

stdout carries only JSON lines, the last of which the operator reads into `status.download`:
`{"event": "progress", "bytes", "totalBytes", "bytesPerSecond", "etaSeconds"}` while it runs,
then `{"event": "done", ...}` or `{"event": "failed", "reason", "message"}`. The exit code says
the reason (failures.EXIT_CODES), and so does the termination log, for `kubectl describe`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from infernetes.runtime.download.failures import DownloadError, DownloadFailure
from infernetes.runtime.download.progress_report import print_event
from infernetes.runtime.download.source import ACCEPTED_FORMS, DEFAULT_PVC_ROOT

logger = logging.getLogger(__name__)

# Kubernetes mounts this file into every container (terminationMessagePath's default).
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
# Kubernetes keeps at most 4096 bytes of a termination message.
_MAX_TERMINATION_MESSAGE_CHARS = 3000


def add_download_command(subparsers) -> None:
    download = subparsers.add_parser(
        "download", help="fetch a model into a folder (fills a model cache)",
        description="Fetch the model SOURCE into the folder DEST, resuming an interrupted "
                    "download, and mark DEST complete so that a rerun returns at once.")
    download.add_argument("source", metavar="SOURCE", help=ACCEPTED_FORMS)
    download.add_argument("dest", metavar="DEST", type=Path,
                          help="folder to fill (created if missing)")
    download.add_argument("--pvc-root", type=Path, default=DEFAULT_PVC_ROOT, metavar="PATH",
                          help="where the claim of a pvc://CLAIM/PATH source is mounted, as "
                               "PATH/CLAIM (default: %(default)s)")
    download.add_argument("--token-file", type=Path, metavar="PATH",
                          help="file holding a Hugging Face token (default: the HF_TOKEN "
                               "environment variable, else huggingface_hub's stored login)")
    download.add_argument("--include", action="append", default=[], metavar="PATTERN",
                          help="fetch only the files whose path matches this fnmatch pattern "
                               "(repeatable); default: all files, less other frameworks' "
                               "weights (*.bin, *.pt, *.h5, *.onnx, ...) when *.safetensors exist")
    download.add_argument("--link", action="store_true",
                          help="hard-link local and pvc:// files instead of copying them when "
                               "DEST is on the same filesystem (shared inodes: no space used)")
    download.add_argument("--retries", type=_non_negative(int), default=5, metavar="N",
                          help="further attempts after a network error (default: %(default)s)")
    download.add_argument("--retry-delay", type=_non_negative(float), default=2.0,
                          metavar="SECONDS",
                          help="delay before the first retry, doubled for each next one "
                               "(default: %(default)s)")
    download.add_argument("--progress-interval", type=_non_negative(float), default=5.0,
                          metavar="SECONDS",
                          help="at most one progress line per this many seconds "
                               "(default: %(default)s)")
    download.add_argument("--termination-log", type=Path, metavar="PATH",
                          help="file to write the failure reason to (default: "
                               f"{DEFAULT_TERMINATION_LOG} when it exists and is writable, as "
                               "in a Kubernetes container)")


def run_download(args: argparse.Namespace) -> int:
    from infernetes.runtime.download.download import DownloadOptions, download_model
    from infernetes.runtime.download.progress_report import JsonProgressReporter
    from infernetes.runtime.download.source import parse_model_source

    termination_log = _termination_log_path(args.termination_log)
    reporter = JsonProgressReporter(args.progress_interval)
    try:
        try:
            source = parse_model_source(args.source)
        except ValueError as e:
            raise DownloadError(DownloadFailure.InvalidSource, str(e)) from e
        options = DownloadOptions(
            include=tuple(args.include), token=_read_token(args.token_file),
            pvc_root=args.pvc_root, link=args.link, retries=args.retries,
            retry_delay_seconds=args.retry_delay, progress=reporter)
        with reporter.heartbeat():
            result = download_model(source, args.dest, options)
    except DownloadError as e:
        _report_failure(e, termination_log)
        return e.exit_code
    print_event({"event": "done", "bytes": result.total_bytes, "totalBytes": result.total_bytes,
                 "bytesPerSecond": round(reporter.average_bytes_per_second(), 1),
                 "etaSeconds": 0, "source": result.source, "dest": str(result.dest),
                 "commit": result.commit, "files": len(result.files),
                 "bytesTransferred": result.bytes_transferred, "reused": result.reused})
    return 0


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise DownloadError(DownloadFailure.AuthFailed, f"cannot read --token-file: {e}") from e
    if not token:
        raise DownloadError(DownloadFailure.AuthFailed, f"--token-file {path} is empty")
    return token


def _report_failure(error: DownloadError, termination_log: Path | None) -> None:
    print(f"infernetes download: error: {error.message}", file=sys.stderr)
    print_event({"event": "failed", "reason": error.reason.value, "message": error.message})
    if termination_log is None:
        return
    line = json.dumps({"reason": error.reason.value,
                       "message": error.message[:_MAX_TERMINATION_MESSAGE_CHARS]})
    try:
        termination_log.write_text(line + "\n")
    except OSError as e:
        logger.warning("could not write the termination log %s: %s", termination_log, e)


def _termination_log_path(flag: Path | None) -> Path | None:
    """The flag's path; else the Kubernetes default when it exists and is writable. (A writable
    /dev alone is not enough: outside Kubernetes, writing there would create a stray file.)"""
    if flag is not None:
        return flag
    default = DEFAULT_TERMINATION_LOG
    return default if default.is_file() and os.access(default, os.W_OK) else None


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse
