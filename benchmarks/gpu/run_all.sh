#!/usr/bin/env bash
# The GPU checks and benchmarks of issue 6 in one command, inside ~9 minutes:
#   bash benchmarks/gpu/run_all.sh [--quick] [--skip-tests] [--budget-s SECONDS]
# Prints nvidia-smi and the software stack, then runs benchmarks/gpu/run_all.py (tests,
# kernel benchmarks, engine benchmark, each under `timeout`). Installs nothing and needs no
# network: `infernetes` is imported from this checkout (run_all.py links it onto PYTHONPATH
# when it is not installed). JSON results go to benchmarks/results/ and to $OUT when set;
# the whole log to $OUT/gpu-run_all.log (else benchmarks/results/gpu-run_all.log).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 1
PYTHON="${PYTHON:-python3}"
LOG_DIR="${OUT:-$ROOT/benchmarks/results}"
mkdir -p "$LOG_DIR"
{
    echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n) ($(uname -srm))"
    nvidia-smi || echo "nvidia-smi: not available"
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch',
torch.__version__, '| CUDA', torch.version.cuda, '| GPU available:', torch.cuda.is_available())"
    "$PYTHON" -u benchmarks/gpu/run_all.py "$@"
    status=$?
    nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu,clocks.sm \
        --format=csv 2>/dev/null
    exit "$status"
} 2>&1 | tee "$LOG_DIR/gpu-run_all.log"
exit "${PIPESTATUS[0]}"
