"""gpuprov.argspec_doc: a role README's variable table written from meta/argument_specs.yml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gpuprov import argspec_doc

SPEC = {"argument_specs": {"main": {"short_description": "x", "options": {
    "demo_port": {"type": "int", "default": 9100, "description": "Listen port."},
    "demo_mode": {"type": "str", "choices": ["a", "b"], "default": "a",
                  "description": ["First line,", "second line with a | pipe and <base>/O(demo_port)."]},
    "demo_list": {"type": "list", "elements": "str", "default": ["x" * 30, "y" * 30], "description": "Long."},
    "demo_cache": {"type": "str", "description": "Computed on the controller."},
}}}}


@pytest.fixture
def role(tmp_path: Path) -> Path:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return tmp_path


def test_the_table_has_every_option_with_its_type_default_and_description(role):
    block = argspec_doc.table(role)
    rows = [line for line in block.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["demo_port", "demo_mode", "demo_list", "demo_cache"]
    assert rows[0] == "| `demo_port` | int | `9100` | Listen port. |"
    # choices in the type column; a list description joined; a pipe escaped; markup and <...> kept visible
    assert rows[1] == ("| `demo_mode` | str: `a`, `b` | `a` | First line, second line with a \\| pipe and "
                       "&lt;base&gt;/`demo_port`. |")
    assert "(a list; see defaults/main.yml)" in rows[2] and "list of str" in rows[2]
    assert "(none)" in rows[3]


def test_a_default_argument_specs_cannot_state_comes_from_defaults_main(role):
    """A templated default (kept out of argument_specs) is shown as written; null is "unset"."""
    (role / "defaults").mkdir()
    (role / "defaults" / "main.yml").write_text(
        "demo_cache: \"{{ playbook_dir }}/../.cache | <x>\"\ndemo_port: 9100\n")
    rows = {line.split("`")[1]: line for line in argspec_doc.table(role).splitlines() if line.startswith("| `")}
    assert "| `{{ playbook_dir }}/../.cache \\| <x>` |" in rows["demo_cache"]  # code: only the pipe escaped
    spec = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    spec["argument_specs"]["main"]["options"]["demo_gid"] = {"type": "int", "default": None, "description": "A gid."}
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert "| `demo_gid` | int | unset | A gid. |" in argspec_doc.table(role)


def test_a_readme_without_markers_gets_the_table_in_place_of_its_old_one(role):
    readme = "# demo\n\n## Variables\n\nSome prose.\n\n| a | b |\n|---|---|\n| old | row |\n\nAfter.\n\n## Next\n"
    new = argspec_doc.render(readme, argspec_doc.table(role))
    assert "old | row" not in new
    assert new.index("Some prose.") < new.index(argspec_doc.BEGIN) < new.index(argspec_doc.END) < new.index("After.")
    assert new.endswith("\n## Next\n")
    # rendering again changes nothing, and a changed spec replaces only the block
    assert argspec_doc.render(new, argspec_doc.table(role)) == new
    spec2 = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())
    spec2["argument_specs"]["main"]["options"]["demo_port"]["description"] = "Another port."
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump(spec2, sort_keys=False))
    again = argspec_doc.render(new, argspec_doc.table(role))
    assert "Another port." in again and "Listen port." not in again and "After." in again


def test_a_readme_without_a_variables_section_or_with_half_a_block_is_an_error(role):
    with pytest.raises(ValueError, match="Variables"):
        argspec_doc.render("# demo\n\nNo section.\n", argspec_doc.table(role))
    with pytest.raises(ValueError, match="without"):
        argspec_doc.render("## Variables\n\n<!-- BEGIN argument_specs: old words -->\n| a |\n", argspec_doc.table(role))
    (role / "README.md").write_text("# demo\n")
    assert argspec_doc.main(["--check", str(role)]) == 2  # named on stderr, no traceback


def test_a_block_whose_marker_wording_changed_is_replaced_whole(role):
    old = "## Variables\n\n<!-- BEGIN argument_specs: old words -->\n| a |\n<!-- END argument_specs -->\nAfter.\n"
    new = argspec_doc.render(old, argspec_doc.table(role))
    assert "old words" not in new and new.count("BEGIN argument_specs") == 1 and new.endswith("\nAfter.\n")


def test_check_names_a_stale_readme_and_writes_nothing(role, capsys):
    readme = role / "README.md"
    readme.write_text("# demo\n\n## Variables\n\n| a |\n|---|\n")
    assert argspec_doc.main(["--check", str(role)]) == 1
    assert "stale" in capsys.readouterr().out and argspec_doc.BEGIN not in readme.read_text()
    assert argspec_doc.main([str(role)]) == 0
    assert argspec_doc.main(["--check", str(role)]) == 0


def test_an_internal_role_gets_each_entry_point_with_its_inputs(tmp_path: Path):
    role = tmp_path / "_demo"
    (role / "meta").mkdir(parents=True)
    (role / "meta" / "argument_specs.yml").write_text(yaml.safe_dump({"argument_specs": {
        "main": {"short_description": "Internal", "options": {}},
        "fetch": {"short_description": "A file fetched", "description": ["Once, on the", "controller."],
                  "options": {"_demo_url": {"type": "str", "required": True, "description": "Where from."},
                              "_demo_tries": {"type": "int", "default": 3, "description": "How often."}}},
    }}, sort_keys=False))
    (role / "README.md").write_text("# _demo\n\n## Entry points\n\n| old | table |\n|---|---|\n\n## Used by\n")
    block, heading = argspec_doc.block_of(role)
    assert heading == "## Entry points" and "### `main`" not in block
    assert "### `fetch`\n\nA file fetched.\n\nOnce, on the controller.\n" in block
    assert "| `_demo_url` | str | yes | Where from. |" in block
    assert "| `_demo_tries` | int | no, `3` | How often. |" in block
    assert argspec_doc.main([str(role)]) == 0
    written = (role / "README.md").read_text()
    assert "old | table" not in written and written.endswith("<!-- END argument_specs -->\n\n## Used by\n")
    assert argspec_doc.main(["--check", str(role)]) == 0


def test_a_path_that_is_not_a_role_is_one_error_line_and_exit_2(tmp_path, capsys):
    assert argspec_doc.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'nowhere' / 'README.md'}: ") and "Traceback" not in err
