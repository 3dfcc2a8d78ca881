"""README and docs/ stay true: README is short and links resolve, docs/reference.md is the spec
reference the schema generates, README's Layout names every module, CI runs README's test command,
the commands it shows exist, every measured figure (README's jobs table, benchmarks/RESULTS.md's
"Jobs") is in tests/figures.py and checked by the test the registry names, and tests/README.md
lists every test file."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from ftray.reference import spec_reference
from ftray.spec import load_spec
from tests import figures
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
REFERENCE = REPO / "docs" / "reference.md"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
REGENERATE = "ftray reference > docs/reference.md"


def test_readme_is_short():
    """README holds what ftray is, set-up, jobs, commands, links and the layout; the rest is in docs/."""
    lines = README.count("\n")
    assert lines <= 300, f"README.md has {lines} lines (at most 300): move detail into docs/"


def test_spec_reference_is_in_sync():
    assert REFERENCE.is_file(), f"docs/reference.md is missing: run `{REGENERATE}`"
    assert REFERENCE.read_text() == spec_reference(), \
        f"docs/reference.md differs from the spec's schema: regenerate it with `{REGENERATE}`"


def test_every_spec_field_is_documented():
    reference = REFERENCE.read_text()
    for key in ("scaling.num_workers", "scaling.use_gpu", "run.name", "run.storage_path", "run.seed",
                "model.layers", "model.units", "model.activation", "model.dropout", "train.lr",
                "train.batch_size", "train.epochs", "train.optimizer", "train.l1",
                "train.optimizer.weight_decay", "train.optimizer.momentum", "train.schedule.name",
                "train.grad_clip", "train.grad_accum_steps", "train.precision",
                "train.early_stopping.patience"):
        assert f"`{key}`" in reference, key


# ------------------------------------------------------------------------------ links, layout
LINK = re.compile(r"\]\(([^)\s]+)\)")
PAGES = [REPO / "README.md", RESULTS, *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_resolve(page):
    """Every relative link of README, docs/ and benchmarks/RESULTS.md names a file that exists."""
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address, or an anchor on the same page
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)} links to missing files: {broken}"


def test_readme_links_every_docs_page():
    linked = {(REPO / t.split("#")[0]).resolve() for t in LINK.findall(README)}
    pages = sorted((REPO / "docs").glob("*.md"))
    assert pages and not [p.name for p in pages if p.resolve() not in linked], "README links each docs/ page"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def _modules() -> set[str]:
    """Every module of ftray/ as README's Layout names it: `ftray/x.py`, a package as `ftray/x/`;
    a method's folder (`ftray/methods/NAME/`: its config.py and hooks.py, the same two files for
    every method) by its folder alone."""
    names = set()
    for path in (REPO / "ftray").rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(REPO).as_posix()
        parts = rel.split("/")
        if len(parts) == 4 and parts[1] == "methods":  # ftray/methods/NAME/file.py
            names.add("/".join(parts[:3]) + "/")
            continue
        names.add(rel[:-len("__init__.py")] if path.name == "__init__.py" else rel)
    return names


def test_layout_names_every_module():
    """One Layout line per module of ftray/ (every .py file, a package by its folder), and no line
    for a module that does not exist: adding, moving or removing a module means editing Layout."""
    lines = re.findall(r"^- `(ftray/[^`]*)` — \S", _section(README, "Layout"), re.M)
    named = set(lines)
    assert len(lines) == len(named), "a module is named twice in README's Layout"
    modules = _modules()
    assert {"ftray/", "ftray/cli.py", "ftray/methods/"} <= modules
    assert not modules - named, f"README's Layout does not name {sorted(modules - named)}"
    assert not named - modules, f"README's Layout names modules that do not exist: {sorted(named - modules)}"


# ------------------------------------------------------------------------- set up, jobs, commands
def _code_blocks(after: str) -> str:
    return README.split(after)[1].split("```bash")[1].split("```")[0]


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in _code_blocks("**2. Install the test extra").splitlines() if line.strip()]
    assert commands and any("pytest" in c for c in commands)
    for command in commands:
        for part in command.split(" && "):
            assert part in ci, part


def test_quickstart_command_names_a_real_job():
    block = _code_blocks("**1. Install and run the quickstart")
    jobs = re.findall(r"ftray run (\S+)", block)
    assert jobs and all((REPO / j).is_file() for j in jobs)


def test_readme_spec_example_is_the_quickstart():
    """The spec README shows is jobs/quickstart.yaml as shipped (its header comment left out)."""
    shown = _section(README, "A job spec").split("```yaml\n")[1].split("```")[0]
    assert shown == "model:" + (REPO / "jobs" / "quickstart.yaml").read_text().split("\nmodel:", 1)[1]


def test_readme_jobs_table_gives_each_jobs_command():
    """Each row's command cell is the command the job's header names (`ftray sweep` for a spec
    with a `tune` section); tests/test_jobs.py checks the table has one row per job."""
    table = README[README.index("| job | what | figure"):].split("\n\n")[0]
    rows = re.findall(r"^\| `(jobs/[^`]+)` \|.* \| `(ftray \w+)`[^|]* \|$", table, re.M)
    assert len(rows) == len(list((REPO / "jobs").glob("*.yaml"))), "every row ends with its command"
    for job, command in rows:
        assert command == ("ftray sweep" if load_spec(REPO / job).tune else "ftray run"), job


def test_readme_commands_exist(capsys):
    """Each command README lists is one `ftray --help` offers, and each one it offers is listed."""
    from ftray.cli import main
    with pytest.raises(SystemExit):
        main(["--help"])
    offered = set(re.search(r"\{([\w,-]+)\}", capsys.readouterr().out).group(1).split(","))
    block = _section(README, "Commands").split("```\n")[1]
    shown = {line.split()[1] for line in block.splitlines() if line.startswith("ftray ")}
    assert shown == offered, f"README lists {sorted(shown)}, ftray offers {sorted(offered)}"


def test_cluster_launcher_config_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    config["available_node_types"]["gpu_worker"]["min_wokers"] = 1  # a typo must be caught
    try:
        validate_config(prepare_config(config))
    except Exception as e:  # noqa: BLE001 - Ray raises jsonschema's ValidationError
        assert "min_wokers" in str(e)
    else:
        raise AssertionError("a misspelled key passed Ray's validation")


# ------------------------------------------------------------------------- measured figures
def _normalized(text: str) -> tuple[str, list[int]]:
    """`text` with every whitespace run made one space, and each original offset's new offset
    (README wraps lines anywhere; the registry's texts are written on one line)."""
    out: list[str] = []
    where: list[int] = []
    for c in text:
        if c.isspace():
            if not out or out[-1] != " ":
                out.append(" ")
        else:
            out.append(c)
        where.append(len(out) - 1)
    return "".join(out), where


def _jobs_table_regions(text: str) -> list[tuple[int, int]]:
    """Offsets of README's jobs table's figure column (each row's third cell on)."""
    regions = []
    start = text.index("| job | what | figure")
    end = text.index("\n\n", start)
    offset = start
    for i, line in enumerate(text[start:end].split("\n")):
        if i >= 2:  # the header and the |---| line
            cut = line.index(" | ", line.index(" | ") + 3)
            regions.append((offset + cut, offset + len(line)))
        offset += len(line) + 1
    return regions


def _jobs_section_regions(text: str) -> list[tuple[int, int]]:
    """Offsets of benchmarks/RESULTS.md's "Jobs" section (the jobs' measured figures)."""
    start = text.index("\n## Jobs\n")
    return [(start, text.index("\n## ", start + 1))]


# The documents that state measured figures, and the parts of each that do. Every registry text is
# looked for in all of them (the same sentence may move between them).
FIGURE_DOCS = {"README.md": (README, _jobs_table_regions),
               "benchmarks/RESULTS.md": (RESULTS.read_text(), _jobs_section_regions)}
NORMALIZED = {name: _normalized(text) for name, (text, _) in FIGURE_DOCS.items()}


def _stated_numbers() -> list[tuple[str, int, str, str]]:
    """(document, normalized offset, number, its line) of every number in the figure regions,
    outside `code`."""
    found = []
    for name, (text, regions) in FIGURE_DOCS.items():
        where = NORMALIZED[name][1]
        for lo, hi in regions(text):
            part = re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), text[lo:hi])
            for m in figures.NUMBER.finditer(part):
                line = text[text.rfind("\n", 0, lo + m.start()) + 1:text.find("\n", lo + m.start())]
                found.append((name, where[lo + m.start()], m.group(), line.strip()))
    return found


def _covered(entry) -> set[tuple[str, int, str]]:
    """(document, normalized offset, number) of each number this entry accounts for, wherever its
    texts occur in the figure documents: a Figure its braced figure, an Untested or Setting entry
    all its numbers."""
    texts = (entry.text, *entry.also) if isinstance(entry, figures.Figure) else entry.texts
    covered = set()
    for raw in texts:
        raw = re.sub(r"\s+", " ", raw)
        if isinstance(entry, figures.Figure):
            m = figures.BRACED.search(raw)
            plain, numbers = figures.BRACED.sub(r"\1", raw), [(m.start(), m.group(1))]
        else:
            plain, numbers = raw, [(m.start(), m.group()) for m in figures.NUMBER.finditer(raw)]
        for name, (norm, _) in NORMALIZED.items():
            at = norm.find(plain)
            while at >= 0:
                covered |= {(name, at + i, n) for i, n in numbers}
                at = norm.find(plain, at + 1)
    return covered


def test_every_stated_figure_is_in_the_registry():
    """Each number in README's jobs table's figures and in RESULTS.md's "Jobs" is a registered
    figure (checked by a test), a registered one-off measurement (with its command), or a
    registered setting."""
    covered = set().union(*(_covered(e) for e in figures.ENTRIES))
    missing = [f"{name}: {n!r} in: {line[:160]}" for name, at, n, line in _stated_numbers()
               if (name, at, n) not in covered]
    assert not missing, "figures tests/figures.py does not list:\n" + "\n".join(missing)


@pytest.mark.parametrize("entry", figures.ENTRIES, ids=lambda e: e.key)
def test_registry_text_is_in_the_docs(entry):
    """The registry's text (so its value) is what README or RESULTS.md says; a changed figure
    changes both."""
    for text in entry.readme_texts():
        text = re.sub(r"\s+", " ", text)
        assert any(text in norm for norm, _ in NORMALIZED.values()), \
            f"{entry.key}: neither README.md nor benchmarks/RESULTS.md says {text!r} any more"
    assert len({e.key for e in figures.ENTRIES}) == len(figures.ENTRIES), "registry keys are unique"


def _figure_cases():
    for key, fig in figures.FIGURES.items():
        marks = [pytest.mark.xfail(strict=True, reason=f"{key}: its owner's test does not check it yet")] \
            if key in figures.PENDING else []
        yield pytest.param(fig, marks=marks, id=key)


@pytest.mark.parametrize("fig", list(_figure_cases()))
def test_each_figure_is_checked_by_the_test_it_names(fig):
    """The named test exists and calls FIGURES[key].check (the value comes from the registry)."""
    path, name = fig.test.split("::")
    source = (REPO / path).read_text()
    tests = {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
    assert name in tests, f"{fig.key}: {fig.test} does not exist"
    body = ast.get_source_segment(source, tests[name])
    assert f'FIGURES["{fig.key}"].check(' in body, f"{fig.key}: {fig.test} does not check it"


# ---------------------------------------------------------------------------- tests/README.md
def test_tests_readme_lists_every_test_file():
    listed = (REPO / "tests" / "README.md").read_text()
    files = sorted(p.relative_to(REPO / "tests").as_posix() for p in (REPO / "tests").rglob("test_*.py"))
    missing = [f for f in files if f"`{f}`" not in listed]
    assert files and not missing, f"tests/README.md does not list {missing}"
