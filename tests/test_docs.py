"""The documentation names only what exists, and CI runs the README's commands.

README.md and docs/*.md are read as text: every ``python train.py <subcommand>``, every
``python -m <module>``, every repository path in inline code or a code block, and every relative
link (with its anchor) must resolve. Paths that are examples by construction (placeholders such
as ``<run_id>``, outputs under ``runs/`` or ``lightning_logs/``, the cache under ``data/``) are
not checked; the output directory of a committed sweep file counts as existing before the sweep
has run. No training: the whole module takes seconds.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"

CODE_BLOCK = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
INLINE_CODE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A repository path: a top-level file, or anything under a tracked top-level directory.
REPO_PATH = re.compile(
    r"(?<![\w/.+-])"
    r"((?:configs|results|docs|lightning_ttn|tests|benchmarks|\.ci|\.github)(?:/[\w.*+-]*)+"
    r"|train\.py|requirements\.txt|pyproject\.toml)"
    r"(?![\w<{])"
)
TRAIN = re.compile(r"\bpython3? train\.py\s+(\S+)")
MODULE = re.compile(r"\bpython3? -m\s+([\w.]+)")
# A dotted name in the package, e.g. lightning_ttn.training.run.fit_and_test.
DOTTED = re.compile(r"(?<![\w./])lightning_ttn(?:\.\w+)+")
# The subcommands of train.py (LightningCLI's).
SUBCOMMANDS = {"fit", "validate", "test", "predict"}
README_TEST_COMMANDS = ['python -m pytest -m "not slow"', "python -m pytest -m slow"]
# CI's smoke job: the README's seconds-long commands.
SMOKE_COMMANDS = [
    "python train.py fit --config configs/smoke.yaml",
    "python -m lightning_ttn.sweep --config configs/sweeps/smoke.yaml",
    "python -m lightning_ttn.report runs/sweeps/smoke",
]


def code_texts(text: str) -> list[str]:
    """The code of a Markdown page: code blocks (continuation lines joined) and inline spans."""
    blocks = [block.replace("\\\n", " ") for block in CODE_BLOCK.findall(text)]
    prose = CODE_BLOCK.sub("", text)
    return blocks + INLINE_CODE.findall(prose)


def planned_output_dirs() -> set[str]:
    """Where the committed sweep files write (a results directory may not exist before)."""
    dirs = set()
    for path in (ROOT / "configs" / "sweeps").glob("*.yaml"):
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        dirs.add(str(config["output_dir"]).rstrip("/"))
    return dirs


def missing_paths(text: str, planned: set[str]) -> list[str]:
    """Repository paths named in the code of ``text`` that do not exist, other than what a
    command on the page writes (``--out PATH``, ``--output-dir PATH``)."""
    missing = []
    written = set(re.findall(r"--out(?:put-dir)?[ =]+([\w./-]+)", text))
    planned = planned | {path.rstrip("/") for path in written}
    for code in code_texts(text):
        for match in REPO_PATH.finditer(code):
            path = match.group(1).rstrip(".,:;")
            if any(path == d or path.startswith(d + "/") for d in planned):
                continue
            if "*" in path:
                if not list(ROOT.glob(path)):
                    missing.append(path)
            elif not (ROOT / path).exists():
                missing.append(path)
    return missing


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = CODE_BLOCK.sub("", path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(page: Path) -> list[str]:
    """Relative links of ``page`` whose file (or heading) does not exist."""
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_paths_exist(page):
    assert missing_paths(page.read_text(encoding="utf-8"), planned_output_dirs()) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_exist(page):
    codes = code_texts(page.read_text(encoding="utf-8"))
    subcommands = {m for code in codes for m in TRAIN.findall(code)}
    modules = {m for code in codes for m in MODULE.findall(code)}
    assert subcommands <= SUBCOMMANDS, subcommands - SUBCOMMANDS
    assert [m for m in sorted(modules) if importlib.util.find_spec(m) is None] == []


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent is a module, not a package
        return False


def unresolved_names(text: str) -> list[str]:
    """Dotted ``lightning_ttn`` names in the code of ``text`` that do not import or resolve."""
    unresolved = []
    for name in sorted({m for code in code_texts(text) for m in DOTTED.findall(code)}):
        parts = name.split(".")
        k = 1  # the longest module prefix, then attributes
        while k < len(parts) and is_module(".".join(parts[:k + 1])):
            k += 1
        obj = importlib.import_module(".".join(parts[:k]))
        for attr in parts[k:]:
            if not hasattr(obj, attr):
                unresolved.append(name)
                break
            obj = getattr(obj, attr)
    return unresolved


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_objects_exist(page):
    assert unresolved_names(page.read_text(encoding="utf-8")) == []


def test_train_py_has_the_documented_subcommands():
    from pytorch_lightning.cli import LightningCLI

    assert set(LightningCLI.subcommands()) == SUBCOMMANDS


def test_catches_a_broken_path_and_link(tmp_path):
    text = (
        "Run `python train.py fit --config configs/no_such.yaml` or see `results/cpu_lowdata`.\n"
        "```bash\npython -m lightning_ttn.report results/no_such_dir --out /tmp/x\n"
        "python -m lightning_ttn.report results/cpu_lowdata --out results/written_by_it\n```\n"
        "Then `results/written_by_it/table.md` exists.\n"
        "Outputs such as `runs/sweeps/mine` or `lightning_logs/<name>/version_N/` are examples.\n"
    )
    assert missing_paths(text, planned_output_dirs()) == [
        "results/no_such_dir", "configs/no_such.yaml"]
    page = tmp_path / "page.md"
    page.write_text("# A heading\n[ok](#a-heading) [bad](#no-heading) [gone](missing.md)\n")
    assert broken_links(page) == ["#no-heading", "missing.md"]
    assert unresolved_names("`lightning_ttn.training.run.fit_and_tset`") == [
        "lightning_ttn.training.run.fit_and_tset"]


def test_readme_keeps_the_test_commands():
    readme = README.read_text(encoding="utf-8")
    for command in README_TEST_COMMANDS:
        assert command in readme
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert README_TEST_COMMANDS[0] in ci_run


def test_readme_stays_a_quick_start():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 220


def test_readme_layer_example_runs():
    readme = README.read_text(encoding="utf-8")
    (example,) = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    exec(compile(example, "README.md", "exec"), {})


def test_workflow_runs_the_readme_commands():
    workflow = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    jobs = workflow["jobs"]
    assert {"test", "smoke"} <= set(jobs)
    runs = {
        name: [line.strip() for step in job["steps"] for line in step.get("run", "").splitlines()]
        for name, job in jobs.items()
    }
    assert README_TEST_COMMANDS[0] in runs["test"]
    assert "ruff check ." in runs["test"]
    assert runs["smoke"][-3:] == SMOKE_COMMANDS
    readme = README.read_text(encoding="utf-8")
    for command in SMOKE_COMMANDS:
        assert command in readme
