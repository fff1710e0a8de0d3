"""The wheel an app would ship: built with its MXFP4 kernel inside, installed without the export extra into a
clean virtualenv, it loads an export and generates there with no compiler and none of the exporter's libraries.

About a minute: building the wheel compiles the kernel, and the virtualenv installs openvino from pip's cache.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specqd.runtime.mxfp4_kernel import OPENVINO_KERNEL, SPECQD_KERNEL, Kernel

pytestmark = pytest.mark.wheel

REPO = Path(__file__).parents[1]


def run(*command: str | Path, env: dict | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, env=env, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A virtualenv holding only the wheel of this checkout and the runtime's own dependencies."""
    root = tmp_path_factory.mktemp("wheel")
    pip = ("-m", "pip", "--disable-pip-version-check", "--quiet")
    run(sys.executable, *pip, "wheel", REPO, "--no-deps", "--wheel-dir", root / "dist")
    [wheel] = (root / "dist").glob("specqd-*.whl")
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", *pip, "install", wheel)
    return venv


def test_the_wheel_generates_with_its_own_kernel_and_without_the_exporters_libraries(runtime_venv, tiny_export,
                                                                                     tmp_path):
    # Only the virtualenv on PATH: no cmake or c++ to call, and nothing from the test's own environment.
    env = {"PATH": str(runtime_venv / "bin"), "HOME": os.environ["HOME"], "SPECQD_CACHE": str(tmp_path)}
    python = runtime_venv / "bin" / "python"
    probe = ("import importlib.util, json; from specqd.runtime.mxfp4_kernel import library_path; "
             "print(json.dumps({'library': str(library_path()), 'importable': "
             "[name for name in ('torch', 'transformers', 'nncf') if importlib.util.find_spec(name)]}))")
    found = json.loads(run(python, "-c", probe, env=env, cwd=tmp_path))
    assert found["importable"] == []
    assert Path(found["library"]).is_relative_to(runtime_venv) and Path(found["library"]).is_file()

    out = run(runtime_venv / "bin" / "specqd", "generate", tiny_export, "--prompt", "def fibonacci(n):",
              "--chain", "target,target-mxfp4", "--max-new-tokens", "16", "--json", env=env, cwd=tmp_path)
    result = json.loads(out)
    kernels = {level["level"]: level["kernel"] for level in result["stats"]["levels"]}
    expected = SPECQD_KERNEL if Kernel.find().library is not None else OPENVINO_KERNEL  # as this CPU allows
    print(f"wheel install: target-mxfp4 ran on {kernels['target-mxfp4']}")
    assert kernels == {"target": OPENVINO_KERNEL, "target-mxfp4": expected}
    assert len(result["tokens"]) == 16
