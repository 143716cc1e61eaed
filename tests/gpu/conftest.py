"""GPU-only tests: collected only where CUDA is available (run_all.sh on a lent GPU), so a
CPU run has nothing here to skip."""
import torch

collect_ignore_glob = [] if torch.cuda.is_available() else ["test_*.py"]
