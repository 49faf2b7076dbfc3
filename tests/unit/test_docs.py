"""
The documentation's links between its pages hold: every relative link to
another file names a file that exists and, with C{#anchor}, a heading of
that file (as GitHub makes anchors of headings).  (Links within a page are
left to its author.)
"""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAGES = ["README.md"] + [os.path.join("docs", name) for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
                         if name.endswith(".md")]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path):
    with open(path) as f:
        text = f.read()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", PAGES)
def test_every_link_between_pages_holds(page):
    with open(os.path.join(ROOT, page)) as f:
        text = f.read()
    broken = []
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        if not path:
            continue
        file = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path))
        if not os.path.exists(file):
            broken.append(target)
        elif anchor and file.endswith(".md") and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{page}: links that lead nowhere: {broken}"
