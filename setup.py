"""Build hook: generate the gRPC stubs from proto/ before setuptools collects the packages.

Everything else about the build lives in pyproject.toml.
"""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    """``build_py`` that first writes ``featureserve/v1/*_pb2*.py`` (also in editable installs)."""

    def run(self) -> None:
        """Generate the stubs into the source tree, then build as usual."""
        runpy.run_path(str(ROOT / "proto" / "generate.py"))["generate"](ROOT)
        super().run()


setup(cmdclass={"build_py": BuildPyWithStubs})
