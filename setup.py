"""The repository root is the `infernetes` package; its code folders are its sub-packages.

`runtime/` imports as `infernetes.runtime`, `kernels/` as `infernetes.kernels`, and so on, so no
top-level module shadows the standard library's `operator` or another project's `runtime`.
"""
from setuptools import find_packages, setup

CODE_FOLDERS = ("runtime", "kernels", "operator")

packages = ["infernetes"] + [
    f"infernetes.{name}"
    for name in find_packages(include=[f"{folder}*" for folder in CODE_FOLDERS])
]
# The CPU kernels' C sources, compiled on first use (kernels/cpu/library.py).
setup(packages=packages, package_dir={"infernetes": "."},
      package_data={"infernetes.kernels.cpu": ["csrc/*.c", "csrc/*.h"]})
