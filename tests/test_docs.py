"""The README and docs/ stay walkable: the README short, its quick start unchanged, every
relative link and every repository path they name present, measured tables only in
benchmarks/BENCHMARKS.md."""

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = "README.md"
BENCHMARKS = "benchmarks/BENCHMARKS.md"
DOCS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
PAGES = [README, BENCHMARKS, *DOCS]

# the quick start a newcomer copies; .ci/run runs the second one
QUICK_START = (
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python -m train",
    ("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -r requirements-test.txt && npm ci "
     "&& .venv/bin/python -m pytest -q"),
)
# backticked paths under these folders name files of the repository (not outputs such as runs/)
REPO_FOLDERS = ("clade_tf/", "tests/", "benchmarks/", "assets/", "train/", "export/", "evaluate/", "docs/", ".ci/")


def read(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def prose(text):
    """`text` without its fenced code blocks (links and headings there are not links or headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)


def anchors(text):
    """The heading anchors GitHub makes: lower case, punctuation dropped, spaces to hyphens,
    repeated headings numbered."""
    out, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", prose(text), flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchors_follow_github_rules():
    text = "# Quality: CLADE against SPADE on `synthetic-scenes`\n## A\n## A\n```\n# not a heading\n```\n"
    assert anchors(text) == {"quality-clade-against-spade-on-synthetic-scenes", "a", "a-1"}


def test_readme_is_short_and_keeps_the_quick_start():
    text = read(README)
    assert len(text.splitlines()) <= 250
    for command in QUICK_START:
        assert command in text.splitlines(), f"quick-start command changed: {command}"


def test_readme_links_every_doc():
    linked = {os.path.normpath(t.split("#")[0]) for t in re.findall(r"\]\(([^)\s]+)\)", read(README))}
    assert DOCS, "docs/ is empty"
    assert [d for d in DOCS if d not in linked] == []


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page):
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(read(page))):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
        if not os.path.exists(full):
            bad.append(f"{target}: no such file")
        elif anchor and full.endswith(".md") and anchor not in anchors(read(full)):
            bad.append(f"{target}: no such heading")
    assert bad == []


@pytest.mark.parametrize("page", PAGES)
def test_named_repository_paths_exist(page):
    missing = []
    for token in re.findall(r"`([^`\s]+)`", read(page)):
        path, _, test = token.rstrip(".,;:").partition("::")
        if not path.startswith(REPO_FOLDERS) or "<" in path:
            continue
        if not glob.glob(os.path.join(ROOT, path)):
            missing.append(path)
        elif test and not re.search(rf"^def {re.escape(test)}\(", read(path), flags=re.MULTILINE):
            missing.append(token)
    assert missing == []


def defines(path, name):
    with open(path, encoding="utf-8") as f:
        return re.search(rf"\b{re.escape(name)}\b", f.read()) is not None


def module_exists(dotted):
    """`clade_tf.a.b` names a module of the repository, or a name its longest module prefix
    mentions (defined, imported or listed for lazy loading)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = os.path.join(ROOT, *parts[:i])
        for path in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(path):
                return i == len(parts) or defines(path, parts[i])
    return False


@pytest.mark.parametrize("page", PAGES)
def test_named_modules_exist(page):
    names = set(re.findall(r"\b((?:clade_tf|train|export|evaluate|benchmarks)(?:\.[A-Za-z_]\w*)+)", read(page)))
    files = (".md", ".py", ".json", ".png", ".mjs")
    assert sorted(n for n in names if not n.endswith(files) and not module_exists(n)) == []


def test_architecture_lists_every_package():
    block = read(README).split("## Architecture", 1)[1].split("```")[1]
    packages = sorted(d for d in os.listdir(ROOT) if os.path.isfile(os.path.join(ROOT, d, "__init__.py")))
    assert "evaluate" in packages
    assert [p for p in packages if not re.search(rf"^{re.escape(p)}/", block, flags=re.MULTILINE)] == []


@pytest.mark.parametrize("page", [README, *DOCS])
def test_measured_tables_live_in_benchmarks(page):
    # a decimal number in a table row outside BENCHMARKS.md is a measurement kept in two places
    rows = [r for r in prose(read(page)).splitlines() if r.lstrip().startswith("|") and re.search(r"\d\.\d", r)]
    assert rows == []
