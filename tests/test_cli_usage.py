"""CLI contract: help, exit codes, and refusing to run without an inventory."""

from __future__ import annotations

import pytest

from gpuprov import cli


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for code in ("0   success (check: no changes; verify: every check passed)", "1   a task or a verify check failed",
                 "2   check, drift: changes found", "64  bad command-line usage",
                 "75  another run holds this inventory's lock", "130 interrupted"):
        assert code in out


def test_bad_usage_exits_64(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["frobnicate"])
    assert exc.value.code == cli.EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_lab_rejects_zero_hosts(capsys):
    assert cli.main(["lab", "up", "--hosts", "0", "--no-apply"]) == cli.EXIT_USAGE
    assert "at least one host" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["apply", "verify"])
def test_apply_without_inventory_is_a_clear_error(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setattr(cli.paths, "lab_inventory_dir", lambda: tmp_path)
    assert cli.main([command]) == cli.EXIT_FAILED
    assert "run `gpuprov lab up` first" in capsys.readouterr().err
