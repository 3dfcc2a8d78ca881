"""README stays true: the spec reference matches the schema, CI runs README's test command, the
commands it shows exist, every measured figure it states is in tests/figures.py (and checked by the
test the registry names), and tests/README.md lists every test file."""

from __future__ import annotations

import ast
import re

import pytest
import yaml

from ftray.reference import END, START, spec_reference
from tests import figures
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_spec_reference_is_in_sync():
    inside = README.split(START)[1].split(END)[0].lstrip("\n")
    assert inside == spec_reference(), "run `ftray reference` and paste it into README.md"


def test_every_spec_field_is_documented():
    for key in ("scaling.num_workers", "scaling.use_gpu", "run.name", "run.storage_path", "run.seed",
                "model.layers", "model.units", "model.activation", "model.dropout", "train.lr",
                "train.batch_size", "train.epochs", "train.optimizer", "train.l1",
                "train.optimizer.weight_decay", "train.optimizer.momentum", "train.schedule.name",
                "train.grad_clip", "train.grad_accum_steps", "train.precision",
                "train.early_stopping.patience"):
        assert f"`{key}`" in README, key


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


def _figure_regions() -> list[tuple[int, int]]:
    """README offsets of the jobs table's figure column (each row's third cell on) and of the
    "Measured" section: the parts of README that state measured figures."""
    regions = []
    start = README.index("| job | what | figure")
    end = README.index("\n\n", start)
    offset = start
    for i, line in enumerate(README[start:end].split("\n")):
        if i >= 2:  # the header and the |---| line
            cut = line.index(" | ", line.index(" | ") + 3)
            regions.append((offset + cut, offset + len(line)))
        offset += len(line) + 1
    measured = README.index("\n## Measured\n")
    regions.append((measured, README.index("\n## ", measured + 1)))
    return regions


def _readme_numbers() -> list[tuple[int, str, str]]:
    """(normalized offset, number, its line) of every number in the figure regions, outside `code`."""
    _, where = _normalized(README)
    found = []
    for lo, hi in _figure_regions():
        part = re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), README[lo:hi])
        for m in figures.NUMBER.finditer(part):
            line = README[README.rfind("\n", 0, lo + m.start()) + 1:README.find("\n", lo + m.start())]
            found.append((where[lo + m.start()], m.group(), line.strip()))
    return found


def _covered(entry) -> set[tuple[int, str]]:
    """(normalized README offset, number) of each number this entry accounts for, wherever its
    texts occur in README: a Figure its braced figure, an Untested or Setting entry all its numbers."""
    norm, _ = _normalized(README)
    texts = (entry.text, *entry.also) if isinstance(entry, figures.Figure) else entry.texts
    covered = set()
    for raw in texts:
        raw = re.sub(r"\s+", " ", raw)
        if isinstance(entry, figures.Figure):
            m = figures.BRACED.search(raw)
            plain, numbers = figures.BRACED.sub(r"\1", raw), [(m.start(), m.group(1))]
        else:
            plain, numbers = raw, [(m.start(), m.group()) for m in figures.NUMBER.finditer(raw)]
        at = norm.find(plain)
        while at >= 0:
            covered |= {(at + i, n) for i, n in numbers}
            at = norm.find(plain, at + 1)
    return covered


def test_every_readme_figure_is_in_the_registry():
    """Each number in the jobs table's figures and in "Measured" is a registered figure (checked
    by a test), a registered one-off measurement (with its command), or a registered setting."""
    covered = set().union(*(_covered(e) for e in figures.ENTRIES))
    missing = [f"{n!r} in: {line[:160]}" for at, n, line in _readme_numbers() if (at, n) not in covered]
    assert not missing, "README states figures tests/figures.py does not list:\n" + "\n".join(missing)


@pytest.mark.parametrize("entry", figures.ENTRIES, ids=lambda e: e.key)
def test_registry_text_is_in_readme(entry):
    """The registry's text (so its value) is what README says; a changed figure changes both."""
    norm, _ = _normalized(README)
    for text in entry.readme_texts():
        assert re.sub(r"\s+", " ", text) in norm, f"{entry.key}: README no longer says {text!r}"
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
