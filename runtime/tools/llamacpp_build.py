"""llama.cpp for the benchmark: its own server, built once from a pinned, installable source into the cache.

No prebuilt llama.cpp installs here, but the llama-cpp-python sdist on PyPI vendors llama.cpp's whole source
tree, so pip fetches it (pinned by version and sha256) and the machine's CMake and g++ build the C++ tools a
llama.cpp user runs. Only `llama-server` is built: it runs a draft model (`--spec-type draft-simple`) and
prompt lookup (`ngram-simple`) in llama.cpp's own speculative loop, keeps the models loaded between prompts,
and returns token ids. The Python binding is not used because its speculative decoding is a prompt-lookup
drafter written in Python; it cannot run a draft model.

Every stage (download, unpack, configure, compile, install the binary) resumes: the download and the unpacked
source are renamed into place only when complete, CMake compiles incrementally, and the binary is copied last,
so its presence means a finished build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from specqd.models.cache import atomic_path, cache_root, say

VERSION = "0.3.36"  # llama-cpp-python; its sdist vendors llama.cpp at commit 0c1e570 (2026-10-01)
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# Native CPU code as llama.cpp's own default; no tests, examples, web UI or HTTPS: the server alone, offline.
# Static libraries make one self-contained binary, which is copied out of the build tree.
CMAKE_OPTIONS = ("-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                 "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
                 "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF")
SETUP_COMMAND = "specqd llamacpp OUT_DIR"


class LlamaCppError(RuntimeError):
    """Something the llama.cpp rows need is missing or failed; the message says what to do."""


@dataclass(frozen=True)
class LlamaCppBuild:
    root: Path  # everything of one pinned version: sdist, source, build tree, bin/

    @classmethod
    def cached(cls) -> "LlamaCppBuild":
        return cls(cache_root() / f"llamacpp-{VERSION}")

    @property
    def server(self) -> Path:
        return self.root / "bin" / "llama-server"

    def require_server(self) -> Path:
        """The server binary, or an error naming it and the command that builds it."""
        if not self.server.is_file():
            raise LlamaCppError(f"llama.cpp is not built: {self.server} is missing; run `{SETUP_COMMAND}` "
                                f"(builds llama.cpp from the llama-cpp-python {VERSION} sdist, a few minutes)")
        return self.server

    def build(self, jobs: int | None = None) -> Path:
        """Build llama-server unless it is there; each stage prints its progress and resumes if interrupted."""
        if self.server.is_file():
            return self.server
        for tool in ("cmake", "c++"):
            if shutil.which(tool) is None:
                raise LlamaCppError(f"building llama.cpp needs {tool} on PATH (e.g. apt-get install cmake g++)")
        started = time.perf_counter()
        source = self._unpacked(self._sdist())
        build_dir = self.root / "build"
        say(f"llama.cpp: configuring {build_dir}")
        self._run(["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS])
        say("llama.cpp: compiling llama-server (CMake prints [percent]; an interrupted build resumes)")
        self._run(["cmake", "--build", str(build_dir), "--target", "llama-server",
                   "-j", str(jobs or os.cpu_count() or 1)])
        with atomic_path(self.server) as scratch:
            shutil.copy2(build_dir / "bin" / "llama-server", scratch)
        say(f"llama.cpp: built {self.server} in {time.perf_counter() - started:.0f} s")
        return self.server

    def _sdist(self) -> Path:
        sdist = self.root / SDIST
        if sdist.is_file():
            return sdist
        say(f"llama.cpp: pip download llama-cpp-python=={VERSION} (sdist, 77 MB, sha256 pinned)")
        with tempfile.TemporaryDirectory() as scratch:
            requirements = Path(scratch) / "requirements.txt"
            requirements.write_text(f"llama-cpp-python=={VERSION} --hash=sha256:{SDIST_SHA256}\n")
            self._run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       "--require-hashes", "--disable-pip-version-check", "-r", str(requirements),
                       "-d", scratch])
            with atomic_path(sdist) as partial:
                shutil.move(Path(scratch) / SDIST, partial)
        return sdist

    def _unpacked(self, sdist: Path) -> Path:
        source = self.root / "src"
        if not source.is_dir():
            say(f"llama.cpp: unpacking {sdist.name}")
            with atomic_path(source) as partial, tarfile.open(sdist) as archive:
                archive.extractall(partial, filter="data")
        return source / SDIST.removesuffix(".tar.gz") / "vendor" / "llama.cpp"

    @staticmethod
    def _run(command: list[str]) -> None:
        """Output goes straight to the terminal: CMake's own progress is the progress shown."""
        result = subprocess.run(command, stdout=sys.stderr)
        if result.returncode != 0:
            raise LlamaCppError(f"`{' '.join(command)}` failed (exit {result.returncode}); its output is above")
