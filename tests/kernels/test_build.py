"""The CPU kernels are an optional build (an install never fails for them), so a compiler
error would otherwise pass unnoticed: on x86-64 the compiled library must be there."""

from __future__ import annotations

import platform

import pytest

from gemma_server.kernels import library


def test_the_kernels_are_built_on_x86_64():
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the CPU kernels are built on x86-64 only")
    assert library.library_path() is not None, (
        "pip install did not build gemma_server/kernels/_cpu_kernels: see its compiler output "
        "with pip install -v")
