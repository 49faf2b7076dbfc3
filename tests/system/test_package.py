"""
The distribution, as a new user gets it: the sdist is complete on its own
(every file the repository tracks: the suite with its helpers, the examples
the README runs, tox.ini, CI and the scripts it calls, the benchmarks, the
licence), the wheel built from it carries every module of the source tree
and installs into a fresh virtualenv whose twistd lists the plugin, whose
beatcop says its version and whose soak runs, and a node installed the way
the systemd recipe says runs as an unprivileged user without a word about
Twisted's plugin cache.

The README's test command and C{.ci/run} import the checkout, which has
every module whatever the packaging says; these tests are what sees a
module the wheel lacks (C{tox}'s environments then run the whole suite on
the installed wheel).
"""

import glob
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

import pytest

from beatcop import __version__
from beatcop.testing.processes import writeConfig

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534
# What a source tree may hold that is not the project's: build and test
# leftovers, virtualenvs.
_NOT_SOURCE = {".git", ".venv", ".tox", "build", "dist", "__pycache__", ".pytest_cache", ".benchmarks"}
# Tracked, and deliberately not in the source release.
_NOT_RELEASED = {".gitignore"}


def _run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{argv}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def _readSome(process):
    try:
        return os.read(process.stdout.fileno(), 65536).decode("utf-8", "replace")
    except BlockingIOError:
        return ""


def _nobodyCanRun(python):
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return False
    return subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", "pass"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def distribution():
    """
    The sdist, built from the checkout; the wheel, built from the sdist
    alone; a fresh virtualenv with the wheel installed (made with a Python
    that the user nobody may run, where there is one, in a directory open
    to it: pytest's own are not).
    """
    work = pathlib.Path(tempfile.mkdtemp(prefix="bcpkg-"))
    os.chmod(work, 0o755)
    try:
        yield _build(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(work):
    out = work / "out"
    _run([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", str(out), CHECKOUT])
    (sdist,) = glob.glob(str(out / "*.tar.gz"))
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
        archive.extractall(work / "src", filter="data")
    (root,) = os.listdir(work / "src")
    source = work / "src" / root
    _run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", str(out), str(source)])
    (wheel,) = glob.glob(str(out / "*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        wheelNames = set(archive.namelist())
    python = next((p for p in ("/usr/bin/python3", sys.executable) if os.path.exists(p) and _nobodyCanRun(p)),
                  sys.executable)
    venv = work / "venv"
    _run([python, "-m", "venv", str(venv)])
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", wheel])
    return {"names": names, "root": root, "source": source, "venv": venv, "python": python, "wheel": wheelNames}


def _sourceFiles():
    """
    The project's files: those git tracks (that exist), or, outside a git
    checkout (an unpacked sdist), every file but build and test leftovers.
    """
    if os.path.exists(os.path.join(CHECKOUT, ".git")) and shutil.which("git"):
        listed = _run(["git", "-C", CHECKOUT, "ls-files", "-z"]).stdout.split("\0")
        return {name for name in listed if name and os.path.isfile(os.path.join(CHECKOUT, name))}
    found = set()
    for directory, subdirectories, files in os.walk(CHECKOUT):
        subdirectories[:] = [d for d in subdirectories if d not in _NOT_SOURCE and not d.endswith(".egg-info")]
        for name in files:
            if not name.endswith((".pyc", "dropin.cache")):
                found.add(os.path.relpath(os.path.join(directory, name), CHECKOUT))
    return found


def _packageFiles():
    """
    What the wheel must carry: every file of the package directories in the
    source tree (modules and anything else they hold), and the plugin.
    """
    found = {"twisted/plugins/beatcop_plugin.py"}
    for directory, subdirectories, files in os.walk(os.path.join(CHECKOUT, "beatcop")):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        for name in files:
            if not name.endswith(".pyc"):
                found.add(os.path.relpath(os.path.join(directory, name), CHECKOUT))
    return found


def test_the_sdist_has_every_file_of_the_source_tree(distribution):
    """
    Every file the repository tracks is in the source release (CI's
    scripts included: C{.ci/run} calls C{.ci/find-python} and
    C{.ci/quickstart}), but the few left out on purpose.
    """
    names = {name.split("/", 1)[1] for name in distribution["names"] if "/" in name}
    missing = sorted(_sourceFiles() - _NOT_RELEASED - names)
    assert not missing, f"files missing from the sdist (MANIFEST.in): {missing}"


def test_the_wheel_has_every_module_of_the_source_tree(distribution):
    """
    A package directory without an C{__init__.py} is left out of the wheel
    by find_packages, with every module in it, and nothing that imports the
    checkout notices: compare the wheel with the source tree.
    """
    expected = _packageFiles()
    assert "beatcop/testing/faults/chaos.py" in expected
    wheel = {name for name in distribution["wheel"] if not name.split("/", 1)[0].endswith(".dist-info")}
    missing = sorted(expected - wheel)
    assert not missing, f"in the source tree, not in the wheel: {missing}"
    extra = sorted(wheel - expected)
    assert not extra, f"in the wheel, not in the source tree: {extra}"


def test_the_installed_soak_runs_and_every_module_imports(distribution):
    """
    From the installed wheel alone (no checkout on the path): every module
    of the package (but C{__main__}, which runs the command) imports, or fails only for an optional library this
    virtualenv lacks (pytest, prometheus_client, redis-py); and the soak's
    command line runs (C{--plan}: the seed's steps, without starting
    anything).
    """
    bin = distribution["venv"] / "bin"
    code = (
        "import importlib, pkgutil, beatcop\n"
        "for module in pkgutil.walk_packages(beatcop.__path__, 'beatcop.'):\n"
        "    if module.name == 'beatcop.__main__':\n"
        "        continue  # runs the command\n"
        "    try:\n"
        "        importlib.import_module(module.name)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name.split('.')[0] in ('beatcop', 'twisted'):\n"
        "            raise\n"
        "        print('optional', module.name, e.name)\n"
        "print('imported', beatcop.__file__)\n"
    )
    imported = _run([str(bin / "python"), "-c", code], cwd="/").stdout
    assert f"imported {distribution['venv']}" in imported, imported
    optional = {line.split()[2].split(".")[0] for line in imported.splitlines() if line.startswith("optional")}
    assert optional <= {"pytest", "pytest_twisted", "prometheus_client", "redis", "cryptography"}, imported
    plan = _run([str(bin / "python"), "-m", "beatcop.testing.faults.chaos", "--plan", "3", "--seed", "7"], cwd="/")
    assert len(plan.stdout.splitlines()) == 3 and '"step": 2' in plan.stdout, plan.stdout


def test_the_sdist_is_complete_on_its_own(distribution):
    names = {name.split("/", 1)[1] for name in distribution["names"] if "/" in name}
    for expected in ("LICENSE", "README.md", "tox.ini", "pyproject.toml", "setup.py", ".ci/run",
                     ".ci/find-python", ".ci/quickstart", "docs/soak.md", "benchmarks/benchlib/takeovers.py",
                     "tests/conftest.py", "tests/unit/test_service.py", "tests/system/test_integration.py",
                     "tests/faults/test_containment.py", "examples/quickstart.ini", "examples/beatcop-1.0.ini",
                     "examples/systemd/beatcop@.service", "examples/testing/test_leader_pytest.py",
                     "benchmarks/failover.py", "docs/architecture.md", "beatcop/testing/recorder.py",
                     "twisted/plugins/beatcop_plugin.py"):
        assert expected in names, expected
    assert not any(name.endswith((".pyc", "dropin.cache")) for name in names)


def test_the_wheel_installs_a_working_twistd_plugin_and_command(distribution):
    bin = distribution["venv"] / "bin"
    assert "beatcop" in _run([str(bin / "twistd"), "--help"]).stdout
    assert _run([str(bin / "beatcop"), "--version"]).stdout.strip() == f"beatcop {__version__}"
    metadata = _run([str(bin / "python"), "-c",
                     "import importlib.metadata as m; d = m.metadata('beatcop');"
                     " print(d['License-Expression'] or d['License']); print('\\n'.join(d.get_all('Classifier')));"
                     " print('\\n'.join(d.get_all('Project-URL') or []))"]).stdout
    assert "MIT" in metadata
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in metadata
    assert "Documentation" in metadata
    # the examples are where the README says, in the source release
    for path in ("examples/quickstart.ini", "examples/production.ini", "examples/topologies/cluster.ini"):
        assert (distribution["source"] / path).is_file(), path
    # and nothing named "tests" came with the wheel
    imported = subprocess.run([str(bin / "python"), "-c", "import tests"], capture_output=True, cwd="/")
    assert imported.returncode != 0


def test_an_unprivileged_user_runs_a_node_without_plugin_cache_complaints(distribution, redisServer, workdir):
    """
    The systemd recipe: the virtualenv owned by root, Twisted's plugin
    cache refreshed by root once, the node run as another user (here
    nobody): no "Unable to write to plugin cache" at start-up.
    """
    if not _nobodyCanRun(distribution["python"]):
        pytest.skip("needs root, runuser and a Python the user nobody can run")
    bin = distribution["venv"] / "bin"
    _run([str(bin / "python"), "-c", "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"])
    os.chmod(workdir, 0o777)
    config = writeConfig(os.path.join(workdir, "nobody.ini"), {"url": redisServer.url},
                         {"command": "sleep 30", "timeout": "1500", "lockname": "nobody-lock"})
    os.chmod(config, 0o644)
    node = subprocess.Popen(
        ["runuser", "-u", "nobody", "--", str(bin / "twistd"), "-n", "--pidfile=", "beatcop", "-c", config],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/",
        env=dict(os.environ, HOME="/nonexistent", XDG_RUNTIME_DIR=""), start_new_session=True,
    )
    try:
        output = ""
        deadline = time.monotonic() + 20
        os.set_blocking(node.stdout.fileno(), False)
        while "Started " not in output and time.monotonic() < deadline and node.poll() is None:
            output += _readSome(node)
            time.sleep(0.05)
        assert "Started " in output, output
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(10)
    output += _readSome(node)
    assert "plugin cache" not in output, output
    assert "Traceback" not in output, output


def test_the_suite_never_shadows_a_projects_own_tests_package(tmp_path):
    """
    An editable install puts the checkout on sys.path; the suite is not a
    package, so a project's own C{tests} package (here one before and one
    after the checkout on the path) is the one imported.
    """
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "tests" / "__init__.py").write_text("MINE = True\n")
    for where in ("0", "len(sys.path)"):
        code = (f"import sys; sys.path.insert({where}, {CHECKOUT!r}); sys.path.insert(1, {str(project)!r});"
                " import tests; print(getattr(tests, 'MINE', False))")
        assert _run([sys.executable, "-c", code], cwd=str(tmp_path)).stdout.strip() == "True"
    assert not os.path.exists(os.path.join(CHECKOUT, "tests", "__init__.py"))
