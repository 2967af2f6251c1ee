"""The production-image stand-in: a Python 3.12 venv holding the image's pinned versions, into which koserve[server]
is installed from a built wheel (not editable, not the checkout) with deploy/docker/constraints-trtllm-1.2.1.txt,
exactly as deploy/docker/Dockerfile does it (deploy/docker/image_pins.py before / pip install / after).

What it stands in for: nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3 has Python 3.12 in the venv
/opt/venv-tritonserver and TensorRT-LLM 1.2.1's pins (numpy 1.26.x, transformers 4.57.3, protobuf >= 6.33.5, pydantic
>= 2.9.1; tests/image/image-standin.txt). What it is not: there is no tensorrt_llm (it does not install here) and no
torch (the image's torch 2.9-2.10 CUDA build is not installable here), so the stand-in's "before" imports
transformers instead of tensorrt_llm and watches the stand-in packages' requirements instead of tensorrt_llm's.

The venv is cached under $KOSERVE_CACHE/image-standin/<hash of the stand-in list, the constraints, pyproject.toml and
image_pins.py>: dependencies are resolved again whenever one of them changes. koserve's own wheel is rebuilt from the
working tree and reinstalled (--no-deps) in every session, so the tests run the current code.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STANDIN = HERE / "image-standin.txt"
CONSTRAINTS = REPO / "deploy" / "docker" / "constraints-trtllm-1.2.1.txt"
IMAGE_PINS = REPO / "deploy" / "docker" / "image_pins.py"
# Test tools for running koserve's own tests inside the stand-in, installed after the pin check.
TEST_TOOLS = ("pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100")


@dataclass(frozen=True)
class ImageEnv:
    venv: Path
    python: Path
    base_python: Path  # the 3.12 interpreter the venv was made from (its libdir has libpython3.12.so)
    state: Path  # image_pins.py's record of the versions before koserve was installed
    install_log: Path

    @property
    def bin(self) -> Path:
        return self.python.parent

    def libdir(self) -> str:
        """The 3.12 interpreter's LIBDIR (libpython3.12.so, which the Triton python stub loads)."""
        out = subprocess.run([str(self.base_python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip()

    def run(self, args: list[str], *, timeout: float, cwd: Path | None = None, env: dict | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        base = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONPATH", "KOSERVE_TEMPLATES", "KOSERVE_RECIPES_DIR", "VIRTUAL_ENV")}
        base["PATH"] = os.pathsep.join([str(self.bin), base.get("PATH", "")])
        proc = subprocess.run(args, cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n"
                                 f"{proc.stderr[-4000:]}")
        return proc


def find_python312() -> Path:
    """Python 3.12 with a shared libpython: $KOSERVE_PYTHON312, else pyenv's newest 3.12, else python3.12 on PATH."""
    candidates = [os.environ.get("KOSERVE_PYTHON312", "")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(str(pyenv_root / "versions" / "3.12.*" / "bin" / "python3.12")), reverse=True)
    candidates.append(shutil.which("python3.12") or "")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.fail("the image stand-in needs Python 3.12 (the image's version): set KOSERVE_PYTHON312 or install it "
                "with pyenv (`pyenv install 3.12`)")


def _key() -> str:
    digest = hashlib.sha256()
    for path in (STANDIN, CONSTRAINTS, REPO / "pyproject.toml", IMAGE_PINS):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_wheel(dest: Path) -> Path:
    """koserve's wheel from the working tree (a copy of its files: setuptools writes build/ next to the sources)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    with tempfile.TemporaryDirectory(prefix="koserve-src-") as tmp:
        src = Path(tmp)
        for name in files:
            path = REPO / name
            if not (path.is_file() or path.is_symlink()) or name.startswith((".cache/", ".venv/")):
                continue
            target = src / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():
                target.symlink_to(os.readlink(path))
            else:
                shutil.copy2(path, target)
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("koserve-*.whl"):
            old.unlink()
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                        str(dest), str(src)], capture_output=True, text=True, timeout=300, check=True)
    (wheel,) = dest.glob("koserve-*.whl")
    return wheel


def _create(venv: Path, base_python: Path, wheel: Path) -> None:
    """The Dockerfile's steps, in the stand-in."""
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([str(base_python), "-m", "venv", str(venv)], check=True, timeout=300)
    env = ImageEnv(venv, venv / "bin" / "python", base_python, venv / "image-pins.json", venv / "install.log")
    log: list[str] = []

    def step(args: list[str], timeout: float = 900) -> None:
        proc = env.run(args, timeout=timeout)
        log.append(f"$ {' '.join(map(str, args))}\n{proc.stdout}{proc.stderr}")
        env.install_log.write_text("\n".join(log), encoding="utf-8")
        if proc.returncode != 0:
            raise AssertionError(f"image stand-in: {' '.join(map(str, args))} exited {proc.returncode}; log "
                                 f"{env.install_log}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")

    pip = [str(env.python), "-m", "pip", "--disable-pip-version-check"]
    step(pip + ["install", "-q", "-r", str(STANDIN)])
    roots = [line.split("==")[0] for line in STANDIN.read_text().splitlines() if line and not line.startswith("#")]
    step([str(env.python), str(IMAGE_PINS), "before", "--import", "transformers",
          *[a for r in roots for a in ("--root", r)], "--state", str(env.state),
          "--constraints", str(venv / "image-constraints.txt")])
    step(pip + ["install", "-c", str(CONSTRAINTS), "-c", str(venv / "image-constraints.txt"), f"{wheel}[server]"])
    step([str(env.python), str(IMAGE_PINS), "after", "--state", str(env.state)])
    step(pip + ["install", "-q", *TEST_TOOLS])
    (venv / ".complete").write_text(json.dumps({"wheel": wheel.name, "python": str(base_python)}), encoding="utf-8")


@pytest.fixture(scope="session")
def image_env(tmp_path_factory) -> ImageEnv:
    from koserve.fixtures import cache_dir

    base_python = find_python312()
    root = cache_dir() / "image-standin"
    venv = root / f"venv-{_key()}"
    wheel = build_wheel(tmp_path_factory.mktemp("wheel"))
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # two test sessions never build the same venv at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (venv / ".complete").is_file():
            for stale in root.glob("venv-*"):
                if stale != venv:
                    shutil.rmtree(stale, ignore_errors=True)
            _create(venv, base_python, wheel)
    env = ImageEnv(venv, venv / "bin" / "python", base_python, venv / "image-pins.json", venv / "install.log")
    # The current code, as a wheel again (the dependencies are the cached resolution of the same pyproject.toml).
    env.run([str(env.python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
            timeout=300, check=True)
    return env


def _engines_conftest():
    spec = importlib.util.spec_from_file_location("koserve_tests_engines_conftest", REPO / "tests/engines/conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# The fake TensorRT-LLM toolchain of the build tests (fake trtllm-build / convert_checkpoint.py / nvidia-smi).
fake_toolchain = _engines_conftest().fake_toolchain

