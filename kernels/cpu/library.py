"""The CPU kernels' shared library: compiled from `csrc/` with the system C compiler on first
use, cached by a key of the sources, the compiler and this CPU's features, loaded with ctypes.

Compiled on the machine that runs it, for that machine's CPU (`-march=native`), as Triton and
torch.compile's CPU backend compile theirs. The cache key includes the CPU's feature flags, so
a cache directory shared between machines (a volume mounted on several nodes) never hands one
machine a library built for instructions it lacks. OpenMP comes from the runtime torch already
loaded (the same `libgomp.so.1`), so the kernels and torch share one pool of threads.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

CSRC = Path(__file__).parent / "csrc"
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared",
         "-std=c11")
LIBRARY_NAME = "libinfernetes_cpu.so"

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
# name -> (argument types, result type)
SIGNATURES = {
    "ifn_simd_width": ((), _I32),
    "ifn_linear": ((_P, _I64, _P, _P, _P, _I64, _I32, _I64, _I64, _I64, _I32, _I32), _I32),
    "ifn_kv_store": ((_P, _I64, _P, _I64, _P, _P, _P, _I64, _I64, _I64, _I64, _I32), None),
    "ifn_decode_attention": ((_P, _I64, _P, _P, _P, _I64, _P, _P, _I64, _I64, _I64, _I64, _I64,
                              _I64, _F32, _I32, _I32), _I32),
    "ifn_decoder_layers": ((_P, _I64, _P, _P, _P, _P, _I32, _P, _F32, _I32, _I32), _I32),
    "ifn_lora_apply": ((_P, _I64, _P, _I64, _P, _I32, _P, _I64, _I64, _I32, _I32), _I32),
}

DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


class CpuKernelsUnavailable(RuntimeError):
    """The library could not be built or loaded here (no C compiler, no OpenMP, ...)."""


_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def load(cache_dir: Path) -> ctypes.CDLL:
    """The library, built into `cache_dir` if no build for these sources and this CPU is there
    yet. Raises CpuKernelsUnavailable with the reason when it cannot be built or loaded."""
    global _library
    with _lock:
        if _library is None:
            try:
                path = _build(Path(cache_dir))
            except OSError as error:  # an unwritable cache, a full disk, ...
                raise CpuKernelsUnavailable(f"cannot build into {cache_dir}: {error}") from None
            try:
                library = ctypes.CDLL(str(path))
            except OSError as error:
                raise CpuKernelsUnavailable(f"cannot load {path}: {error}") from None
            for name, (argtypes, restype) in SIGNATURES.items():
                function = getattr(library, name)
                function.argtypes, function.restype = argtypes, restype
            _library = library
        return _library


def library() -> ctypes.CDLL:
    """The loaded library (kernels call this); `load` must have succeeded before."""
    if _library is None:
        raise CpuKernelsUnavailable("the CPU kernels are not loaded: call "
                                    "infernetes.kernels.cpu.library.load(cache_dir) first")
    return _library


def simd_width() -> int:
    """8 when the library uses AVX2 + FMA + F16C; 1 on its portable scalar fallback."""
    return library().ifn_simd_width()


def _compiler() -> str:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return candidate
    raise CpuKernelsUnavailable("no C compiler found (set CC, or install gcc)")


def _build(cache_dir: Path) -> Path:
    compiler = _compiler()
    sources = sorted(CSRC.glob("*.c"))
    key = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        key.update(path.name.encode() + b"\0" + path.read_bytes())
    key.update(" ".join((compiler, *FLAGS)).encode())
    key.update(_compiler_version(compiler).encode())
    key.update(_cpu_features().encode())
    target = cache_dir / f"cpu-{key.hexdigest()[:20]}" / LIBRARY_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: processes building at once (tensor-
    # parallel workers) each finish with a whole library and the last rename wins.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        # One compiler per source, all at once (a start-up cost: 2x faster on 2 cores), then
        # one link.
        objects = [Path(scratch) / f"{source.stem}.o" for source in sources]
        compiles = [[compiler, *FLAGS, "-I", str(CSRC), "-c", str(source), "-o", str(obj)]
                    for source, obj in zip(sources, objects)]
        running = [(command, subprocess.Popen(command, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
                   for command in compiles]
        for command, process in running:
            _check_compiler(command, *process.communicate(), process.returncode)
        built = Path(scratch) / LIBRARY_NAME
        link = [compiler, *FLAGS, *map(str, objects), "-o", str(built), "-lm"]
        result = subprocess.run(link, capture_output=True, text=True)
        _check_compiler(link, result.stdout, result.stderr, result.returncode)
        os.replace(built, target)
    return target


def _check_compiler(command: list[str], stdout: str, stderr: str, returncode: int) -> None:
    if returncode != 0:
        raise CpuKernelsUnavailable(f"compiling the CPU kernels failed ({' '.join(command)}):"
                                    f"\n{(stderr or stdout).strip()[-2000:]}")


def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return result.stdout.splitlines()[0] if result.stdout else ""


def _cpu_features() -> str:
    """This CPU's feature flags (what -march=native compiles for), or the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()
