"""The gpu local fact (roles/gpu_facts/files/gpu.fact) over recorded inputs.

Recorded with `gpu.fact --record DIR`: `h200-x1` on the real GPU machine (device tool: one H200,
driver 580.159.04), `no-gpu` on this CI machine. The other cases are built from the H200 recording
with the changes each failure mode makes (documented per case), since no such host was available.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FACT = ROOT / "roles" / "gpu_facts" / "files" / "gpu.fact"
FIXTURES = ROOT / "tests" / "fixtures" / "gpu"
PCI = "fs/sys/bus/pci/devices"
H100_QUERY = ("{i}, NVIDIA H100 80GB HBM3, GPU-0000000{i}-1111-2222-3333-444444444444, "
              "00000000:{bus:02X}:00.0, 81559, 9.0, Enabled, Disabled, 550.127.05")


def fact(replay: Path | None = None) -> dict:
    env = dict(os.environ)
    env.pop("GPU_FACT_REPLAY", None)
    if replay is not None:
        env["GPU_FACT_REPLAY"] = str(replay)
    out = subprocess.run([sys.executable, str(FACT)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def _write(root: Path, rel: str, content: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def _pci(root: Path, addr: str, pci_class: str, device: str, driver: str | None) -> None:
    _write(root, f"{PCI}/{addr}/vendor", "0x10de\n")
    _write(root, f"{PCI}/{addr}/class", pci_class + "\n")
    _write(root, f"{PCI}/{addr}/device", device + "\n")
    if driver:
        _write(root, f"link/sys/bus/pci/devices/{addr}/driver", driver)


def _base(tmp_path: Path) -> Path:
    """The recorded H200 host as a starting point."""
    root = tmp_path / "replay"
    shutil.copytree(FIXTURES / "h200-x1", root)
    return root


@pytest.mark.parametrize("name", ["h200-x1", "no-gpu"])
def test_recorded_hosts(name):
    expected = json.loads((FIXTURES / f"{name}.expected.json").read_text())
    assert fact(FIXTURES / name) == expected


def test_recorded_h200_details():
    got = fact(FIXTURES / "h200-x1")
    assert got["status"] == "ok"
    assert got["driver_version"] == "580.159.04" and got["cuda_version"] == "13.0"
    assert got["module_matches_library"] is True
    (gpu,) = got["gpus"]
    assert gpu["name"] == "NVIDIA H200" and gpu["memory_total_mib"] == 143771
    assert gpu["compute_capability"] == "9.0" and gpu["persistence_mode"] is True
    assert gpu["mig_mode"] == "disabled"
    assert got["pci_devices"][0]["kernel_driver"] == "nvidia"


def test_no_gpu_host():
    got = fact(FIXTURES / "no-gpu")
    assert got["status"] == "no_gpu" and got["gpu_count"] == 0 and got["pci_devices"] == []


def test_eight_h100_with_nvswitch(tmp_path):
    # An HGX H100 board: 8 GPUs, 4 NVSwitches (PCI bridges of NVIDIA), driver 550.
    root = _base(tmp_path)
    addrs = []
    for i in range(8):
        addr = f"0000:{0x18 + i * 0x10:02x}:00.0"
        addrs.append(addr)
        _pci(root, addr, "0x030200", "0x2330", "nvidia")
    for i in range(4):
        addr = f"0000:{0xa0 + i:02x}:00.0"
        addrs.append(addr)
        _pci(root, addr, "0x068000", "0x22a3", "nvidia-nvswitch")
    # The board replaces the recorded H200 (0000:00:06.0); the host's other PCI devices stay.
    listing = set((root / "ls/sys/bus/pci/devices/.list").read_text().split()) - {"0000:00:06.0"}
    _write(root, "ls/sys/bus/pci/devices/.list", "\n".join(sorted(listing | set(addrs))))
    _write(root, "cmd/query.out", "\n".join(H100_QUERY.format(i=i, bus=0x18 + i * 0x10) for i in range(8)) + "\n")
    _write(root, "cmd/summary.out", (root / "cmd/summary.out").read_text().replace("13.0", "12.4"))
    _write(root, "fs/sys/module/nvidia/version", "550.127.05\n")
    _write(root, "glob/libs", "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.550.127.05")
    got = fact(root)
    assert got["status"] == "ok"
    assert got["gpu_count"] == 8 and len(got["pci_devices"]) == 8
    assert got["nvswitch_count"] == 4 and got["fabric_manager_needed"] is True
    assert got["total_memory_mib"] == 8 * 81559
    assert got["cuda_version"] == "12.4" and got["driver_version"] == "550.127.05"
    assert got["module_matches_library"] is True
    assert [g["index"] for g in got["gpus"]] == list(range(8))


def test_version_mismatch(tmp_path):
    # An upgrade replaced the userspace library (535.247.01) under the loaded module (535.183.01).
    root = _base(tmp_path)
    _write(root, "fs/sys/module/nvidia/version", "535.183.01\n")
    _write(root, "glob/libs", "/usr/lib/x86_64-linux-gnu/nvidia/current/libnvidia-ml.so.535.247.01")
    _write(root, "cmd/query.rc", "18")
    _write(root, "cmd/query.out",
           "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 535.247\n")
    got = fact(root)
    assert got["status"] == "driver_mismatch"
    assert got["module_matches_library"] is False
    assert "535.183.01" in got["message"] and "535.247.01" in got["message"] and "reboot" in got["message"]
    assert got["gpus"] == [] and len(got["pci_devices"]) == 1


def test_gpu_without_driver(tmp_path):
    # The GPU is on the bus, no module is loaded and nvidia-smi is not installed.
    root = _base(tmp_path)
    (root / "fs/sys/module/nvidia/version").unlink()
    (root / "link/sys/bus/pci/devices/0000:00:06.0/driver").unlink()
    (root / "cmd/query.rc").unlink()
    (root / "cmd/query.out").unlink()
    _write(root, "glob/libs", "")
    got = fact(root)
    assert got["status"] == "no_driver"
    assert got["pci_devices"][0]["kernel_driver"] is None
    assert "1 NVIDIA device(s) on the PCI bus and no working driver" in got["message"]
    assert "not loaded" in got["message"]


def test_broken_driver(tmp_path):
    # The module is loaded but nvidia-smi cannot talk to it.
    root = _base(tmp_path)
    _write(root, "cmd/query.rc", "9")
    _write(root, "cmd/query.out", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
                                  "Make sure that the latest NVIDIA driver is installed and running.\n")
    got = fact(root)
    assert got["status"] == "driver_error"
    assert got["message"].startswith("nvidia-smi failed (rc 9): NVIDIA-SMI has failed")


def test_garbage_input_still_gives_valid_json(tmp_path):
    root = _base(tmp_path)
    _write(root, "cmd/query.rc", "not a number")
    got = fact(root)
    assert got["status"] == "error" and got["message"].startswith("gpu.fact failed:")


def test_live_run_on_this_machine_is_valid_json():
    got = fact()
    assert got["schema"] == 1
    assert got["status"] in {"ok", "no_gpu", "no_driver", "driver_error", "driver_mismatch"}


def test_record_then_replay_round_trip(tmp_path):
    rec = tmp_path / "rec"
    live = subprocess.run([sys.executable, str(FACT), "--record", str(rec)], capture_output=True, text=True,
                          check=True)
    assert json.loads(live.stdout) == fact(rec)
