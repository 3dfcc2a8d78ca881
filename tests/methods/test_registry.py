"""`ftray.methods.METHODS` is the one list of methods: the spec's `method` union, the spec reference
and the hooks lookup all come from it, so adding a method is one new folder and one registry entry."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import ftray
from ftray.methods import METHODS
from ftray.methods.base import Method
from ftray.reference import spec_reference
from ftray.spec import JobSpec, SpecError, validate
from tests.conftest import mlp_spec


def test_the_spec_union_the_reference_and_the_hooks_come_from_the_registry(tmp_path):
    union = typing.get_args(JobSpec.model_fields["method"].annotation)
    assert list(union) == list(METHODS.values())
    assert [config.model_fields["name"].default for config in METHODS.values()] == list(METHODS)
    choices = ", ".join(f"`{name}`" for name in METHODS)
    assert f"| `method` | one of: {choices} | `full` |" in spec_reference()
    for name in METHODS:
        assert f"### `method` (name: `{name}`)" in spec_reference()
    with pytest.raises(SpecError, match=f"unknown name 'nope'; choose one of {choices.replace('`', chr(39))}"):
        validate(mlp_spec(tmp_path / "d.parquet", tmp_path, method={"name": "nope"}), "job.yaml")
    for name, config in METHODS.items():
        if not config.supervised:  # rl: RLlib runs it (ftray.rl), not the supervised loop's hooks
            with pytest.raises(NotImplementedError):
                config.hooks()
            continue
        hooks = config.hooks()
        assert issubclass(hooks, Method) and hooks.__module__ == f"ftray.methods.{name}.hooks"


def test_typed_method_questions_replace_reads_of_fields_some_methods_lack(tmp_path):
    def method(**m):
        return JobSpec.model_validate(mlp_spec(tmp_path / "d.parquet", tmp_path, method=m)).method
    assert method(name="transfer").replaces_head and not method(name="transfer", new_head=False).replaces_head
    assert not method(name="full").replaces_head and not method(name="distill", teacher="t").replaces_head
    assert method(name="distill", teacher="t", precompute=True).precomputes_teacher
    assert not method(name="distill", teacher="t").precomputes_teacher and not method(name="full").precomputes_teacher
    for config in METHODS.values():  # every declared path field is a field holding a path (a string)
        for key in config.path_fields:
            assert config.model_fields[key].annotation in (str, str | None), (config.__name__, key)


ECHO_CONFIG = '''
from typing import Literal
from ftray.methods.config import MethodConfig
from ftray.schema import describe


class EchoMethod(MethodConfig):
    name: Literal["echo"] = describe("A test method: full training under another name.", "echo")
    louder: int = describe("How loud.", 1, ge=1)
    notes: str | None = describe("A local notes file.", None)

    path_fields = ("notes",)

    def check_job(self, spec):
        if self.louder > spec.model.layers:
            raise ValueError("method.louder: no louder than model.layers")

    @classmethod
    def hooks(cls):
        from ftray.methods.echo.hooks import Echo
        return Echo
'''
ECHO_HOOKS = '''
from ftray.methods.base import Method


class Echo(Method):
    pass
'''
PROBE = '''
import json, sys
from ftray.methods import get_method
from ftray.reference import spec_reference
from ftray.spec import SpecError, load_spec
spec = load_spec(sys.argv[1])
try:
    load_spec(sys.argv[1], ["method.louder=9"])
    refused = None
except SpecError as e:
    refused = str(e)
print(json.dumps({"hooks": type(get_method(spec)).__name__, "notes": spec.method.notes, "refused": refused,
                  "reference": "### `method` (name: `echo`)" in spec_reference()}))
'''


def test_adding_a_method_is_one_folder_and_one_registry_entry(tmp_path):
    """A copy of the package gets a new method folder and one entry (its import and its dict line)
    in the registry; nothing else changes, and the spec, the reference and the hooks know it."""
    pkg = tmp_path / "pkg" / "ftray"
    shutil.copytree(Path(ftray.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    echo = pkg / "methods" / "echo"
    echo.mkdir()
    (echo / "__init__.py").write_text('"""`echo`: a test method."""\n')
    (echo / "config.py").write_text(ECHO_CONFIG)
    (echo / "hooks.py").write_text(ECHO_HOOKS)
    registry = pkg / "methods" / "__init__.py"
    text = registry.read_text()
    anchor_import, anchor_entry = "from ftray.methods.full.config import FullMethod\n", '    "full": FullMethod,\n'
    assert text.count(anchor_import) == 1 and text.count(anchor_entry) == 1
    registry.write_text(text.replace(anchor_import, anchor_import + "from ftray.methods.echo.config import EchoMethod\n")
                        .replace(anchor_entry, anchor_entry + '    "echo": EchoMethod,\n'))
    (tmp_path / "notes.txt").write_text("hi")
    spec = mlp_spec(tmp_path / "d.parquet", tmp_path, method={"name": "echo", "louder": 1, "notes": "notes.txt"})
    (tmp_path / "job.yaml").write_text(json.dumps(spec))  # JSON is YAML
    (tmp_path / "probe.py").write_text(PROBE)
    out = subprocess.run([sys.executable, str(tmp_path / "probe.py"), str(tmp_path / "job.yaml")], cwd=tmp_path,
                         env={"PYTHONPATH": str(pkg.parent), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"hooks": "Echo", "notes": str(tmp_path / "notes.txt"), "reference": True,
                   "refused": f"{tmp_path / 'job.yaml'}: (top level): method.louder: no louder than model.layers"}
