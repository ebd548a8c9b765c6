"""Builds the optional CPU kernels (gemma_server/kernels/*.cc) during the install.

Everything else about the package lives in pyproject.toml. The kernels are compiled against
the XLA FFI headers that jaxlib ships (a build requirement). The extension is
optional: where it cannot be built (no compiler, not x86-64), the install still succeeds and
the server uses its pure-JAX path; `gemma-server info` says which one it runs.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _jaxlib_include() -> str:
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("jaxlib is needed to build the CPU kernels")
    return str(Path(next(iter(spec.submodule_search_locations))) / "include")


class BuildKernels(build_ext):
    def build_extensions(self) -> None:
        for ext in self.extensions:
            ext.include_dirs.append(_jaxlib_include())
        super().build_extensions()


KERNELS = Extension(
    "gemma_server.kernels._cpu_kernels",
    sources=["gemma_server/kernels/cpu_matmul.cc", "gemma_server/kernels/cpu_attention.cc",
             "gemma_server/kernels/cpu_sampling.cc"],
    depends=["gemma_server/kernels/parallel.h", "gemma_server/kernels/simd.h"],
    language="c++",
    extra_compile_args=["-std=c++17", "-O3"],
    optional=True,
)

setup(
    ext_modules=[KERNELS] if platform.machine() in ("x86_64", "AMD64") else [],
    cmdclass={"build_ext": BuildKernels},
)
