"""Every role follows the project's conventions: argument_specs in sync with defaults, every
default documented in the role README, role-prefixed variable names, phase tags, a Molecule
scenario, and a namespace in meta/main.yml."""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuprov import argspec_doc

ROOT = Path(__file__).resolve().parent.parent
ALL_ROLES = sorted(p for p in (ROOT / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
# Internal roles (a leading underscore, as prometheus-community's _common) hold shared task files
# that other roles include with tasks_from; they have no phases or scenario of their own.
ROLES = [r for r in ALL_ROLES if not r.name.startswith("_")]
INTERNAL = [r for r in ALL_ROLES if r.name.startswith("_")]


def _yaml(path: Path):
    return yaml.safe_load(path.read_text()) or {}


def _is_template(value) -> bool:
    return isinstance(value, str) and "{{" in value


@pytest.fixture(params=ROLES, ids=[r.name for r in ROLES])
def role(request) -> Path:
    return request.param


def test_there_are_roles():
    assert "base" in [r.name for r in ROLES]
    assert "_common" in [r.name for r in INTERNAL]


@pytest.mark.parametrize("internal", INTERNAL, ids=[r.name for r in INTERNAL])
def test_internal_roles_have_an_entry_point_per_task_file(internal):
    """Each task file but main is an entry point with its own argument spec (so a caller's missing
    or mistyped input is refused by name); main refuses to run the role on its own."""
    specs = _yaml(internal / "meta" / "argument_specs.yml")["argument_specs"]
    files = {p.stem for p in (internal / "tasks").glob("*.yml")}
    assert set(specs) == files, (set(specs), files)
    for name, spec in specs.items():
        if name != "main":
            assert spec.get("options"), f"{name}: an entry point without options"
            for opt, o in spec["options"].items():
                assert opt.startswith(f"{internal.name}_"), opt
                assert o.get("description"), f"{name}.{opt}: no description"
    main = _yaml(internal / "tasks" / "main.yml")
    assert [t for t in main if "ansible.builtin.fail" in t], "main.yml must refuse to run on its own"


def test_the_internal_role_is_used_with_tasks_from():
    """Roles call _common's entry points, never its main."""
    uses = [p for r in ROLES for p in (r / "tasks").glob("*.yml") if "name: _common" in p.read_text()]
    assert uses, "no role uses _common"
    for path in uses:
        text = path.read_text()
        assert text.count("name: _common") == text.count("tasks_from:"), path


def test_argument_specs_match_defaults(role):
    defaults = _yaml(role / "defaults" / "main.yml")
    options = _yaml(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options), "defaults and argument_specs name different variables"
    for name, spec in options.items():
        value = defaults[name]
        if "default" in spec:
            assert not _is_template(value), f"{name}: a templated default cannot be stated in the spec"
            assert spec["default"] == value, f"{name}: spec default {spec['default']!r} != {value!r}"
        elif value is not None and not _is_template(value):
            pytest.fail(f"{name}: argument_specs should state the default {value!r}")
        assert spec.get("description"), f"{name}: no description"


def test_defaults_keep_section_headers_only(role):
    """meta/argument_specs.yml is the prose (the README's table comes from it): defaults/main.yml
    carries one-line section headers, each after a blank line, and no other comment."""
    lines = (role / "defaults" / "main.yml").read_text().splitlines()
    for i, line in enumerate(lines):
        if "#" not in line:
            continue
        stripped = line.lstrip()
        assert stripped.startswith("# "), f"{role.name} defaults line {i + 1}: a comment beside a value: {line!r}"
        assert line == stripped and i > 0 and lines[i - 1] in ("", "---"), (
            f"{role.name} defaults line {i + 1}: not a one-line section header: {line!r}")
        assert i + 1 < len(lines) and not lines[i + 1].lstrip().startswith("#"), (
            f"{role.name} defaults line {i + 1}: a comment of more than one line")


def test_defaults_are_role_prefixed(role):
    for name in _yaml(role / "defaults" / "main.yml"):
        assert name.startswith(f"{role.name}_"), name


def test_every_default_is_documented(role):
    readme = (role / "README.md").read_text()
    for name in _yaml(role / "defaults" / "main.yml"):
        assert f"`{name}`" in readme, f"{name} is not documented in {role.name}/README.md"


def test_readme_follows_the_usual_role_readme_order(role):
    """Description, Requirements, Role Variables, Dependencies, Example Playbook (geerlingguy's
    order), in that order; what the tests check lives in docs/testing.md, linked from the README."""
    readme = (role / "README.md").read_text()
    headings = [line[3:].strip() for line in readme.splitlines() if line.startswith("## ")]
    wanted = ["Requirements", "Role Variables", "Dependencies", "Example Playbook"]
    assert headings[: len(wanted)] == wanted, headings
    assert readme.startswith(f"# Role `{role.name}`\n\n") and not readme.split("\n", 2)[2].startswith("#")
    assert not [h for h in headings if h.startswith("Tested")], headings
    anchor = f"role-{role.name.replace('_', '-')}"
    assert f"docs/testing.md#{anchor}" in readme
    assert f"## Role `{role.name}`" in (ROOT / "docs" / "testing.md").read_text()
    example = readme.split("## Example Playbook", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    play = yaml.safe_load(example)
    assert any(r == role.name or (isinstance(r, dict) and r.get("role") == role.name)
               for r in play[0]["roles"]), example


def test_readme_variables_are_generated_from_argument_specs(role):
    """The variable table is argument_specs' (python -m gpuprov.argspec_doc writes it): a README
    whose table is stale, or that has none, fails."""
    readme = (role / "README.md").read_text()
    assert argspec_doc.BEGIN in readme and argspec_doc.END in readme, f"{role.name}/README.md has no generated table"
    assert argspec_doc.render(readme, argspec_doc.table(role)) == readme, (
        f"{role.name}/README.md: the variable table is stale; run python -m gpuprov.argspec_doc")


def test_the_internal_roles_entry_points_are_generated_from_argument_specs():
    """_common's README lists each entry point as its argument spec describes it (the block that
    python -m gpuprov.argspec_doc writes): a stale one fails."""
    common = ROOT / "roles" / "_common"
    readme = (common / "README.md").read_text()
    assert argspec_doc.BEGIN in readme and argspec_doc.END in readme, "_common/README.md has no generated block"
    assert argspec_doc.render(readme, *argspec_doc.block_of(common)) == readme, (
        "_common/README.md: the entry points are stale; run python -m gpuprov.argspec_doc")
    entry_points = set(_yaml(common / "meta" / "argument_specs.yml")["argument_specs"]) - {"main"}
    assert {e for e in entry_points if f"### `{e}`" in readme} == entry_points


def test_meta_has_namespace(role):
    info = _yaml(role / "meta" / "main.yml")["galaxy_info"]
    assert info["namespace"] == "gpuprov"
    assert info["role_name"] == role.name


def test_phase_tags(role):
    tags = set()
    for entry in _yaml(role / "tasks" / "main.yml"):
        tags.update(entry.get("tags", []))
    # Every role installs and runs something; a configure phase where the role has one.
    phases = ["install", "run"] + (["configure"] if (role / "tasks" / "configure.yml").exists() else [])
    for phase in phases:
        assert f"{role.name}_{phase}" in tags


def _converged_roles(converge: Path) -> set[str]:
    names = set()
    for play in _yaml(converge):
        for r in play.get("roles", []) or []:
            names.add(r["role"] if isinstance(r, dict) else r)
    return names


def test_molecule_scenario_with_testinfra(role):
    """A scenario of the role's own (or one under molecule/*/ that converges it), with testinfra
    tests."""
    scenarios = list((role / "molecule").glob("*/molecule.yml"))
    scenarios += [s for s in (ROOT / "molecule").glob("*/molecule.yml")
                  if role.name in _converged_roles(s.parent / "converge.yml")]
    assert scenarios, f"no Molecule scenario converges {role.name}"
    for s in scenarios:
        assert list(s.parent.glob("tests/test_*.py")), f"{s.parent} has no testinfra tests"


def _gathered_fact_names() -> set[str]:
    """The names Ansible's setup module gives this host's facts (a real gather, not a list here)."""
    out = subprocess.run([str(Path(sys.executable).parent / "ansible"), "localhost", "-c", "local", "-m",
                          "ansible.builtin.setup", "-e", f"ansible_python_interpreter={sys.executable}", "-o"],
                         capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                              "ANSIBLE_CACHE_PLUGIN": "ansible.builtin.memory"}).stdout
    facts = json.loads(out.split("=>", 1)[1])["ansible_facts"]
    return {k.removeprefix("ansible_") for k in facts} - {"local"}


def test_facts_are_read_from_ansible_facts_only():
    """inject_facts_as_vars is off for the CLI's runs and Molecule's (ansible-core 2.20 deprecates the
    injected copies), and nothing reads a fact by its injected name (`ansible_distribution` for
    `ansible_facts['distribution']`), also on paths no test runs (another distribution's vars). Only
    `ansible_local` keeps its name: Ansible always promotes it."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "ansible.cfg")
    assert cfg.getboolean("defaults", "inject_facts_as_vars") is False
    molecule = _yaml(ROOT / ".config/molecule/config.yml")
    assert molecule["provisioner"]["config_options"]["defaults"]["inject_facts_as_vars"] is False
    names = _gathered_fact_names()
    assert {"distribution", "default_ipv4", "python", "architecture"} <= names
    injected = re.compile(r"\bansible_(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b")
    files = [p for pattern in ("roles/**/*.yml", "roles/**/*.j2", "playbooks/*.yml", "inventories/**/*.yml",
                               "molecule/**/*.yml", "benchmarks/**/*.yml")
             for p in ROOT.glob(pattern)]
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in files
             for n, line in enumerate(p.read_text().splitlines(), 1) if injected.search(line)]
    assert not found, "\n".join(found)
