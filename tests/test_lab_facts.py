"""`lab up` and `lab down` forget the lab hosts' cached facts: a container created or restarted may
get another address on the lab network, and cached facts would make certificates, firewall rules
and scrape targets for the old one (seen: a lab rebuilt after Docker restarted, on a new subnet)."""

from __future__ import annotations

from gpuprov import lab, paths


def test_forget_facts_removes_only_the_named_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUPROV_ROOT", str(tmp_path))
    cache = paths.fact_cache_dir([str(paths.lab_inventory_dir())])
    assert cache == tmp_path / ".gpuprov" / "facts" / "lab"
    cache.mkdir(parents=True)
    # ansible-core's jsonfile cache: one file per host, behind a schema prefix (s1_).
    for name in ("s1_gpuprov-lab-gpu1", "s1_gpuprov-lab-gpu10", "s1_gpuprov-lab-mon1", "s1_other_host"):
        (cache / name).write_text("{}")
    gone = lab.forget_facts(["gpuprov-lab-gpu1", "other_host"])
    assert sorted(p.name for p in gone) == ["s1_gpuprov-lab-gpu1", "s1_other_host"]
    assert sorted(p.name for p in cache.iterdir()) == ["s1_gpuprov-lab-gpu10", "s1_gpuprov-lab-mon1"]


def test_forget_facts_without_a_cache_does_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUPROV_ROOT", str(tmp_path))
    assert lab.forget_facts(["gpuprov-lab-gpu1"]) == []
