"""scripts/test's scheduler and the resources it reads from Molecule scenarios, run as processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEDULER = ROOT / "scripts" / "lib" / "parallel_steps.py"
RESOURCES = ROOT / "scripts" / "lib" / "molecule_resources.py"


def _meets(d: Path, n: str, partner: str) -> str:
    """A step's command that records its start and end and, between them, waits up to 30 s for its
    partner to have started (exit 9 when it has not): the two passed only if they ran at once,
    however slowly the machine starts them."""
    return (f"date +%s.%N > {d}/{n}.start; for i in $(seq 300); do [ -e {d}/{partner}.start ] && break;"
            f" sleep 0.1; done; [ -e {d}/{partner}.start ] || exit 9; date +%s.%N > {d}/{n}.end")


def _run(steps: str, jobs: int, tmp_path: Path) -> tuple[str, dict[str, tuple[int, int]]]:
    results = tmp_path / "results.tsv"
    out = subprocess.run([sys.executable, str(SCHEDULER), str(jobs), str(tmp_path / "logs"), str(results)],
                         input=steps, text=True, capture_output=True, check=True, timeout=60)
    rows = [line.split("\t") for line in results.read_text().splitlines()]
    return out.stdout, {name: (int(rc), int(secs)) for name, rc, secs, _cpu in rows}


def test_each_step_reports_the_processor_time_of_its_own_processes(tmp_path: Path) -> None:
    """A step that computes for about a second (in a child of its shell) reports about a second of
    processor time; one that sleeps as long reports none."""
    loop = "import time; t = time.process_time(); [0 for _ in iter(lambda: time.process_time() - t < 1.0, False)]"
    busy = f"{sys.executable} -c '{loop}'"
    steps = f"busy\t\t{busy}\nidle\t\tsleep 1.2\n"
    results = tmp_path / "results.tsv"
    subprocess.run([sys.executable, str(SCHEDULER), "2", str(tmp_path / "logs"), str(results)],
                   input=steps, text=True, capture_output=True, check=True, timeout=60)
    cpu = {name: int(c) for name, _rc, _secs, c in (line.split("\t") for line in results.read_text().splitlines())}
    assert cpu["busy"] >= 1 and cpu["idle"] == 0, cpu


def test_steps_that_share_a_resource_never_overlap(tmp_path: Path) -> None:
    stamp = tmp_path / "stamps"
    stamp.mkdir()
    # Each step records when it started and ended; a and b share "apt:x", c shares nothing: a and c
    # wait for each other (they pass only if they ran at once).
    cmd = "date +%s.%N > {d}/{n}.start; sleep 1.5; date +%s.%N > {d}/{n}.end"
    steps = (f"a\tapt:x,container:a\t{_meets(stamp, 'a', 'c')}\n"
             f"b\tapt:x\t{cmd.format(d=stamp, n='b')}\n"
             f"c\tcontainer:c\t{_meets(stamp, 'c', 'a')}\n")
    out, results = _run(steps, 3, tmp_path)
    t = {n: (float((stamp / f"{n}.start").read_text()), float((stamp / f"{n}.end").read_text())) for n in "abc"}
    assert t["b"][0] >= t["a"][1], "a and b share apt:x but ran together"
    # c shares nothing with a: had it waited for a, a would have waited for c in vain (exit 9)
    assert {n: rc for n, (rc, _) in results.items()} == {"a": 0, "b": 0, "c": 0}
    assert out.count("--- PASS") == 3


def test_a_failing_step_is_reported_with_its_output_in_one_piece(tmp_path: Path) -> None:
    steps = "ok\t\techo fine\nbad\t\techo first; sleep 0.5; echo second; exit 3\n"
    out, results = _run(steps, 2, tmp_path)
    assert results["bad"][0] == 3 and results["ok"][0] == 0
    assert "=== bad\nfirst\nsecond\n--- FAIL bad (rc 3," in out
    assert (tmp_path / "logs" / "bad.log").read_text() == "first\nsecond\n"


def test_every_scenario_holds_containers_networks_and_caches_of_its_own() -> None:
    """The shared platforms are named after the scenario run (GPUPROV_SCENARIO, which scripts/test
    sets to the scenario's id), so no two scenarios hold one container, network or apt cache and all
    may run side by side; a scenario with platforms of its own keeps its names."""
    def run(*args: str) -> str:
        return subprocess.check_output([sys.executable, str(RESOURCES), *args], text=True).strip()

    held: dict[str, set[str]] = {}
    for molecule_yml in sorted(ROOT.glob("roles/*/molecule/*/molecule.yml")):
        d = str(molecule_yml.parent)
        # What the scenario holds (a step it waits for, `after:`, is not held).
        held[d] = {r for r in run(d).split(",") if not r.startswith("after:")}
    assert len(held) >= 13
    for a in held:
        for b in held:
            assert a == b or not held[a] & held[b], f"{a} and {b} share {held[a] & held[b]}"
    cuda = str(ROOT / "roles/cuda/molecule/default")
    node = str(ROOT / "roles/node_exporter/molecule/default")
    assert run("--id", cuda) == "cuda" and run("--id", node) == "node-exporter"
    assert {"container:gpuprov-cuda-debian12", "container:gpuprov-cuda-debian13", "network:gpuprov-cuda"} <= held[cuda]
    assert "container:gpuprov-node-exporter-debian13" in held[node]
    assert "container:gpuprov-fw-outsider" in held[str(ROOT / "roles/firewall/molecule/default")]


def test_a_step_waits_for_the_step_it_names_and_is_not_run_when_that_one_failed(tmp_path: Path) -> None:
    stamp = tmp_path / "stamps"
    stamp.mkdir()
    # images and other wait for each other, and so do uses and also (each pair passes only if it
    # ran at once).
    steps = (f"images\t\t{_meets(stamp, 'images', 'other')}\n"
             f"uses\tafter:images\t{_meets(stamp, 'uses', 'also')}\n"
             f"also\tafter:images\t{_meets(stamp, 'also', 'uses')}\n"
             f"other\t\t{_meets(stamp, 'other', 'images')}\n"
             "broken\t\texit 4\n"
             f"after-broken\tafter:broken\ttouch {stamp}/ran\n")
    out, results = _run(steps, 4, tmp_path)
    t = {n: (float((stamp / f"{n}.start").read_text()), float((stamp / f"{n}.end").read_text()))
         for n in ("images", "uses", "also", "other")}
    assert t["uses"][0] >= t["images"][1], "a step started before the step it waits for had passed"
    # Waiting for the same step is not a resource they share: both run at once after it (uses and
    # also met), and a step that waits for nothing ran beside images (they met).
    assert {n: results[n][0] for n in ("images", "uses", "also", "other")} == dict.fromkeys(
        ("images", "uses", "also", "other"), 0), results
    assert results["broken"][0] == 4
    assert results["after-broken"][0] == 125 and not (stamp / "ran").exists()
    assert "--- FAIL after-broken (not run: broken failed)" in out
    assert {n: results[n][0] for n in ("images", "uses", "other")} == {"images": 0, "uses": 0, "other": 0}


def test_the_scenarios_on_the_base_images_wait_for_them_and_the_others_do_not() -> None:
    def res(d: str) -> set[str]:
        return set(subprocess.check_output([sys.executable, str(RESOURCES), str(ROOT / d)], text=True)
                   .strip().split(","))

    assert "after:base-images" in res("roles/cuda/molecule/default")
    assert "after:base-images" in res("roles/gateway/molecule/default")
    assert "after:base-images" not in res("roles/base/molecule/default")
    assert "after:base-images" not in res("roles/models/molecule/default")


def test_steps_start_longest_first_by_the_last_recorded_durations_and_the_record_is_rewritten(tmp_path: Path) -> None:
    """One slot: the order of the starts is the order the scheduler chose. `short` and `long` were
    recorded (1 and 900 s), `new` was not, `images` is waited for by `long`; `gone` is a record of a
    step no longer run, and `fails` fails (its record stays as it was)."""
    durations = tmp_path / "durations.tsv"
    durations.write_text("short\t1\nlong\t900\nfails\t500\ngone\t7\nnot a record\n")
    order = tmp_path / "order"
    steps = "".join(f"{n}\t{res}\techo {n} >> {order}{'; exit 1' if n == 'fails' else ''}\n"
                    for n, res in (("short", ""), ("new", ""), ("fails", ""), ("long", "after:images"),
                                   ("images", "")))
    results = tmp_path / "results.tsv"
    subprocess.run([sys.executable, str(SCHEDULER), "1", str(tmp_path / "logs"), str(results), str(durations)],
                   input=steps, text=True, capture_output=True, check=True, timeout=60)
    assert order.read_text().split() == ["images", "new", "long", "fails", "short"]
    records = dict(line.split("\t") for line in durations.read_text().splitlines())
    assert records["fails"] == "500" and records["gone"] == "7"
    assert set(records) == {"short", "long", "fails", "gone", "new", "images"}
    assert all(records[n] in ("0", "1") for n in ("short", "long", "new", "images"))
