"""The models role's sync module repairs a revision directory in place (the one `current` points
at) by swapping it with its verified staging copy in one step (renameat2 RENAME_EXCHANGE): at no
instant is the directory absent. Checked on this machine's filesystems: the swap happens, both
sides keep their contents, and where it cannot happen nothing is changed (the module then falls
back to two renames)."""

from __future__ import annotations

import os

from conftest import load_module

sync = load_module("gpuprov_model_sync", "roles/models/library/gpuprov_model_sync.py")


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    live, staging = tmp_path / "rev", tmp_path / ".staging-rev"
    live.mkdir()
    staging.mkdir()
    (live / "config.json").write_text("old")
    (staging / "config.json").write_text("new")
    (tmp_path / "current").symlink_to("rev")
    assert sync.exchange(str(staging), str(live))
    assert (tmp_path / "current" / "config.json").read_text() == "new"
    assert (staging / "config.json").read_text() == "old"


def test_exchange_of_a_missing_path_changes_nothing(tmp_path):
    live = tmp_path / "rev"
    live.mkdir()
    (live / "config.json").write_text("old")
    assert not sync.exchange(str(tmp_path / "absent"), str(live))
    assert (live / "config.json").read_text() == "old" and not os.path.exists(tmp_path / "absent")
