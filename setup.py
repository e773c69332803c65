"""Compile the pure core to C extensions with Cython, when this machine can.

The modules in ``rca_common/compiled.py`` are plain Python and stay so: compiled,
they run the same code with less interpreter overhead per event (README,
Benchmarks). Compiling is optional. Without Cython or a C compiler, or with
``RCA_PURE_PYTHON=1``, the package installs as pure Python and says so on stderr;
``/status`` shows which modules are compiled.

After editing one of those modules in a checkout, ``make build`` (or any make
target that runs code) recompiles it: a stale extension would shadow the edit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from rca_common.compiled import COMPILED  # noqa: E402  (plain constants, no imports)


class OptionalBuildExt(build_ext):
    """A failed compile leaves the pure-Python module in place instead of failing."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            _fallback(f"cannot build extensions ({exc})")

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:
            _fallback(f"cannot compile {ext.name} ({exc})")


def _fallback(why: str) -> None:
    print(f"rca-graph: {why}; that module stays pure Python", file=sys.stderr)


def extensions() -> list:  # type: ignore[type-arg]
    if os.environ.get("RCA_PURE_PYTHON", "").lower() in ("1", "true", "yes"):
        _fallback("RCA_PURE_PYTHON is set")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _fallback("Cython is not installed")
        return []
    return cythonize(  # type: ignore[no-any-return]
        [f"{name.replace('.', '/')}.py" for name in COMPILED],
        compiler_directives={
            "language_level": 3,
            # Annotations document; they do not constrain: a str subclass (StrEnum)
            # must pass where ``str`` is written, as it does in Python.
            "annotation_typing": False,
            "binding": True,
        },
        quiet=True,
    )


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
)
