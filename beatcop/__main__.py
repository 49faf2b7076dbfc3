"""
C{python -m beatcop}: the C{beatcop} command (see L{beatcop.cli}).
"""

from .cli import run

run()
