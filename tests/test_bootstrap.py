"""scripts/bootstrap.sh (what `make install` runs) picks the torch build for the machine: the small CPU
build without a GPU, also on a real Linux box whose pip index would hand it the CUDA build, and the
CUDA build with one; the rest goes in through uv, or pip where uv cannot. Run with a stand-in python,
uv and nvidia-smi that log what would be installed."""
from __future__ import annotations

import os
import platform
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

FAKE_PYTHON = f"""#!/bin/bash
echo "$@" >> "$FAKE_LOG"
if [ "$1" = -c ]; then
  [ "$2" = "import torch" ] && exit 1      # a fresh venv: no torch yet
  exec {sys.executable} "$@"
fi
if [[ "$*" == *"--index-url {CPU_INDEX}"* ]] && [ -n "$FAKE_CPU_INDEX_DOWN" ]; then exit 1; fi
exit 0
"""


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def bootstrap(tmp_path):
    if platform.system() != "Linux":
        pytest.skip("the CPU-index rule is for Linux")
    venv, bin_dir, log = tmp_path / "venv", tmp_path / "bin", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    _executable(venv / "bin" / "python", FAKE_PYTHON)

    def run(gpu: bool, cpu_index_down: bool = False, uv: int | None = None, **env) -> list[str]:
        """uv: None, no uv to be had (pip installs it, but no binary appears); else uv's exit code."""
        _executable(bin_dir / "nvidia-smi", "#!/bin/sh\nexit 0\n" if gpu else "#!/bin/sh\nexit 9\n")
        (venv / "bin" / "uv").unlink(missing_ok=True)
        if uv is not None:
            _executable(venv / "bin" / "uv", f'#!/bin/bash\necho "uv $*" >> "$FAKE_LOG"\nexit {uv}\n')
        log.write_text("")
        (venv / ".semray-installed").unlink(missing_ok=True)
        full = {k: v for k, v in os.environ.items() if not k.startswith("SEMRAY_TORCH")}
        full.update({"VENV": str(venv), "FAKE_LOG": str(log), "FAKE_CPU_INDEX_DOWN": "1" if cpu_index_down else "",
                     "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env})
        proc = subprocess.run(["bash", str(REPO / "scripts" / "bootstrap.sh")], env=full, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [line for line in log.read_text().splitlines()
                if (line.startswith(("-m pip", "uv pip")) and " install " in f" {line} ")
                or line.startswith("-m compileall")]
    return run


def test_no_gpu_tries_the_cpu_index_first_with_a_short_timeout(bootstrap):
    """PyPI's torch for Linux is the CUDA build: a laptop must not download GBs of CUDA."""
    calls = bootstrap(gpu=False)
    assert calls[0].endswith(f"install --no-compile torch==2.13.0 --index-url {CPU_INDEX} --timeout 5 --retries 0")
    # pip's torch without .pyc files, then it and its dependencies compiled at once on every core
    assert calls[1].startswith("-m compileall -q -j 0 ") and calls[1].endswith("site-packages")
    assert calls[2].endswith("install uv")  # no uv binary appeared: pip installs the rest
    assert calls[3].endswith("install -e .[test,onnx] -c constraints.txt") and len(calls) == 4


def test_an_unreachable_cpu_index_falls_back_to_pips_own_index(bootstrap):
    calls = bootstrap(gpu=False, cpu_index_down=True)
    assert calls[0].endswith(f"--index-url {CPU_INDEX} --timeout 5 --retries 0")
    assert calls[1].endswith("install --no-compile torch==2.13.0")  # a mirror or local wheels with the CPU build
    assert calls[2].startswith("-m compileall") and calls[4].endswith("install -e .[test,onnx] -c constraints.txt")


def test_a_gpu_gets_the_cuda_build(bootstrap):
    calls = bootstrap(gpu=True)
    assert calls[0].endswith("install --no-compile torch==2.13.0") and "--index-url" not in calls[0]  # PyPI's: CUDA


def test_an_explicit_index_wins(bootstrap):
    calls = bootstrap(gpu=False, SEMRAY_TORCH_INDEX="https://example.org/simple")
    assert calls[0].endswith("install --no-compile torch==2.13.0 --index-url https://example.org/simple")


def test_uv_installs_the_rest_after_pips_torch_and_pip_takes_over_when_it_fails(bootstrap, tmp_path):
    """torch is pip's (uv reads no pip configuration: the CPU build may be in local wheels only
    pip.conf names); the rest is uv's, in the venv's python; a failing uv falls back to pip."""
    calls = [c for c in bootstrap(gpu=False, uv=0) if not c.startswith("-m compileall")]
    assert calls[0].startswith("-m pip") and "torch==2.13.0" in calls[0]
    python = tmp_path / "venv" / "bin" / "python"
    # with .pyc files, as pip writes them: Ray starts its workers with `python -B`
    assert calls[2] == f"uv pip install -q --compile-bytecode --python {python} -e .[test,onnx] -c constraints.txt"
    assert len(calls) == 3
    calls = [c for c in bootstrap(gpu=False, uv=1) if not c.startswith("-m compileall")]
    assert calls[2].startswith("uv pip install") and calls[3].endswith("install -e .[test,onnx] -c constraints.txt")
    calls = [c for c in bootstrap(gpu=False, uv=0, SEMRAY_NO_UV="1") if not c.startswith("-m compileall")]
    assert not any("uv" in c.split() for c in calls) and calls[1].endswith("install -e .[test,onnx] -c constraints.txt")
