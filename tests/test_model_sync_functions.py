"""The models role's sync module (roles/models/library/gpuprov_model_sync.py), function by function,
on real files: what it counts as a verified file, which copies it re-uses, which files it judges
drifted, where a bearer token may go, how `current` moves and what pruning removes. The module run
whole by Ansible (fetching from a mirror, resuming, refusing a bad checksum) is the models
scenario's (roles/models/molecule/default)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time

import pytest
from conftest import load_module

sync = load_module("gpuprov_model_sync", "roles/models/library/gpuprov_model_sync.py")


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _revision(dest, name: str, files: dict[str, bytes]) -> tuple[str, dict]:
    """A revision directory as the module leaves it: the files and a manifest with their stat."""
    rev = dest / name
    rev.mkdir(parents=True)
    entries = []
    for path, data in files.items():
        (rev / path).parent.mkdir(parents=True, exist_ok=True)
        (rev / path).write_bytes(data)
        entries.append({"path": path, "size": len(data), "digest": _sha256(data),
                        "stat": sync.stat_key(str(rev / path))})
    (rev / sync.MANIFEST).write_text(json.dumps({"revision": name, "files": entries}))
    want = sync.wanted_map([{"path": p, "size": len(d), "sha256": _sha256(d)[7:]} for p, d in files.items()])
    return str(rev), want


def test_digest_of_gives_sha256_and_gits_own_blob_id(tmp_path):
    f = tmp_path / "config.json"
    f.write_bytes(b'{"model_type": "deepseek_v3"}\n')
    assert sync.digest_of(str(f)) == _sha256(f.read_bytes())
    git = subprocess.run(["git", "hash-object", str(f)], capture_output=True, text=True, check=True, timeout=30)
    assert sync.digest_of(str(f), "git") == f"git:{git.stdout.strip()}"


def test_wanted_map_reads_manifests_and_the_hubs_entries():
    got = sync.wanted_map([
        {"path": "a.bin", "size": "3", "sha256": "AB" * 32},
        {"path": "b.txt", "size": 2, "git_sha1": "cd" * 20},
        {"rfilename": "model.safetensors", "size": 99, "blobId": "ee" * 20, "lfs": {"sha256": "ff" * 32, "size": 1000}},
        {"rfilename": "tokenizer.json", "size": 7, "blobId": "12" * 20},
    ])
    assert got == {
        "a.bin": {"size": 3, "digest": "sha256:" + "ab" * 32},
        "b.txt": {"size": 2, "digest": "git:" + "cd" * 20},
        # An LFS file is known by its sha256 and its LFS size, not the pointer's.
        "model.safetensors": {"size": 1000, "digest": "sha256:" + "ff" * 32},
        "tokenizer.json": {"size": 7, "digest": "git:" + "12" * 20},
    }


def test_matches_needs_the_size_and_the_digest(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights")
    assert sync.matches(str(f), {"size": 7, "digest": _sha256(b"weights")})
    assert not sync.matches(str(f), {"size": 8, "digest": _sha256(b"weights")})
    assert not sync.matches(str(f), {"size": 7, "digest": _sha256(b"weighTs")})


def test_revision_state_finds_a_verified_revision_good(tmp_path):
    rev, want = _revision(tmp_path, "r1", {"config.json": b"{}", "sub/w.bin": b"x" * 100})
    assert sync.revision_state(rev, want, "stat") == []
    assert sync.revision_state(rev, want, "full") == []


def test_revision_state_names_missing_changed_and_unrecorded_files(tmp_path):
    rev, want = _revision(tmp_path, "r1", {"a": b"aaaa", "b": b"bbbb", "c": b"cccc"})
    os.unlink(os.path.join(rev, "a"))
    time.sleep(0.01)
    with open(os.path.join(rev, "b"), "r+b") as f:  # same size, another byte, a new mtime
        f.write(b"X")
    want["d"] = {"size": 1, "digest": _sha256(b"d")}  # wanted but not in the manifest
    assert sorted(sync.revision_state(rev, want, "stat")) == ["a", "b", "d"]


def test_stat_mode_trusts_an_unchanged_stat_and_full_mode_hashes_again(tmp_path):
    rev, want = _revision(tmp_path, "r1", {"w.bin": b"good"})
    path = os.path.join(rev, "w.bin")
    st = os.stat(path)
    with open(path, "r+b") as f:  # corrupted in place, then its mtime put back: the stat still matches
        f.write(b"b")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sync.revision_state(rev, want, "stat") == []
    assert sync.revision_state(rev, want, "full") == ["w.bin"]


def test_a_manifest_that_cannot_be_read_verifies_nothing(tmp_path):
    rev, want = _revision(tmp_path, "r1", {"a": b"aaaa"})
    with open(os.path.join(rev, sync.MANIFEST), "w") as f:
        f.write("{not json")
    assert sync.read_manifest(rev) is None
    assert sync.revision_state(rev, want, "stat") == ["a"]


def test_ownership_drift_names_files_not_owned_as_wanted_or_not_0440(tmp_path):
    rev, want = _revision(tmp_path, "r1", {"a": b"a", "b": b"b"})
    for name in ("a", "b", sync.MANIFEST):
        os.chmod(os.path.join(rev, name), 0o440)
    uid, gid = os.getuid(), os.getgid()
    assert sync.ownership_drift(rev, want, uid, gid) == []
    os.chmod(os.path.join(rev, "b"), 0o644)
    assert sync.ownership_drift(rev, want, uid, gid) == ["b"]
    assert sync.ownership_drift(rev, want, uid + 1, gid) == ["a", "b", sync.MANIFEST]


def test_known_good_copies_are_verified_files_of_other_revisions_only(tmp_path):
    _revision(tmp_path, "r1", {"shared.bin": b"same weights", "old.bin": b"old"})
    _, want = _revision(tmp_path, ".staging-r2", {"shared.bin": b"same weights", "new.bin": b"new"})
    (tmp_path / "current").symlink_to("r1")
    found = sync.known_good_copies(str(tmp_path), want)
    assert found == {_sha256(b"same weights"): str(tmp_path / "r1" / "shared.bin")}
    # A copy whose stat changed since it was verified is not trusted.
    time.sleep(0.01)
    (tmp_path / "r1" / "shared.bin").write_bytes(b"same weights")
    assert sync.known_good_copies(str(tmp_path), want) == {}
    assert sync.known_good_copies(str(tmp_path / "absent"), want) == {}


@pytest.mark.parametrize(("url", "token_url", "allowed"), [
    ("https://hub.example/r/a", "https://hub.example/api", True),
    ("https://cdn.example/x", "https://hub.example/api", False),          # a redirect to another host
    ("https://hub.example:8443/x", "https://hub.example/api", False),     # another port
    ("http://hub.example/x", "http://hub.example/api", False),            # plain http off loopback
    ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/api", True),       # the tests' stand-ins
    ("http://[::1]:8080/x", "http://[::1]:8080/api", True),
    ("http://127.0.0.1:9/x", "http://127.0.0.1:8080/api", False),
])
def test_token_allowed_only_to_the_same_host_over_https(url, token_url, allowed):
    assert sync.token_allowed(url, token_url) is allowed


def test_switch_points_current_at_the_revision_in_one_rename(tmp_path):
    (tmp_path / "r1").mkdir()
    (tmp_path / "r2").mkdir()
    sync.switch(str(tmp_path), "r1")
    assert os.readlink(tmp_path / "current") == "r1"
    (tmp_path / ".current.tmp").symlink_to("leftover")  # from a run that died mid-switch
    sync.switch(str(tmp_path), "r2")
    assert os.readlink(tmp_path / "current") == "r2"
    assert not os.path.lexists(tmp_path / ".current.tmp")
    assert oct(os.stat(tmp_path).st_mode & 0o777) == oct(0o750)


def test_prune_keeps_the_revision_in_use_and_the_newest_others(tmp_path):
    for i, name in enumerate(["r1", "r2", "r3", "r4"]):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1_000_000 + i, 1_000_000 + i))
    (tmp_path / ".staging-r5").mkdir()
    (tmp_path / "current").symlink_to("r2")
    assert sorted(sync.prune(str(tmp_path), "r2", keep=1)) == ["r1", "r3"]
    assert sorted(os.listdir(tmp_path)) == [".staging-r5", "current", "r2", "r4"]
    assert sync.prune(str(tmp_path), "r2", keep=0) == ["r4"]
    assert sorted(os.listdir(tmp_path)) == [".staging-r5", "current", "r2"]
