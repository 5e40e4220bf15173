"""nvidia_driver with the distro method on Debian 12 and 13 containers (no GPU): packages installed
and held, nouveau blacklisted, persistenced enabled, the fact valid; zero changes in check mode; bad
input fails before any change with a message naming the variable."""

import json

import pytest
from gpuprov_molecule import (
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    assert_role_verify,
    failed_tasks,
    host_in,
    instance,
    run_role,
    serve_stand_in_repository,
    stop_stand_in_repository,
)

from gpuprov.verify import SKIP

# The scenario's Debian 12 and 13 hosts (the shared platforms, named after the scenario run).
D12, D13 = host_in("debian12"), host_in("debian13")

BRANCH = {"12": "535", "13": "550"}
PACKAGES = ["nvidia-kernel-dkms", "nvidia-smi", "libcuda1"]


def _major(host):
    return host.system_info.release.split(".")[0]


@pytest.mark.parametrize("pkg", PACKAGES + ["nvidia-persistenced", "firmware-misc-nonfree"])
def test_driver_packages_installed(host, pkg):
    assert host.package(pkg).is_installed


def test_distro_branch(host):
    assert host.package("nvidia-smi").version.startswith(BRANCH[_major(host)] + ".")


@pytest.mark.parametrize("pkg", PACKAGES)
def test_driver_packages_held(host, pkg):
    name, selection = host.run(f"dpkg --get-selections {pkg}").stdout.split()
    assert name.split(":")[0] == pkg  # multi-arch packages are listed as name:arch
    assert selection == "hold"


def test_nouveau_blacklisted(host):
    conf = host.file("/etc/modprobe.d/gpuprov-blacklist-nouveau.conf")
    assert conf.mode == 0o644
    assert "blacklist nouveau" in conf.content_string
    assert "options nouveau modeset=0" in conf.content_string


def test_persistenced_enabled(host):
    assert host.service("nvidia-persistenced").is_enabled


def test_fact_with_driver_packages_and_no_gpu(host):
    fact = json.loads(host.check_output("/etc/ansible/facts.d/gpu.fact"))
    assert fact["status"] == "no_gpu"
    # The NVML library of the installed branch is found even though no module can load here.
    assert fact["nvml_library_version"].startswith(BRANCH[_major(host)] + ".")
    assert fact["loaded_module_version"] is None


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_passes():
    """The role's own checks (tasks/verify.yml: what `gpuprov verify` runs on a lab or fleet) with
    the scenario's settings, on the converged hosts.
    The containers have no NVIDIA device on their PCI bus: the check does not apply, and says so."""
    assert_role_verify("nvidia_driver", [D12, D13], {
        "GPU driver: nvidia-smi sees every NVIDIA GPU on the PCI bus (hosts with NVIDIA GPUs)": SKIP,
    })


@pytest.mark.parametrize(
    "extra, task, words",
    [
        ({"nvidia_driver_method": "bogus"}, "Validating arguments", "nvidia_driver_method"),
        ({"nvidia_driver_branch": "53x"}, "Check the branch and version", "nvidia_driver_branch must be"),
        ({"nvidia_driver_method": "distro", "nvidia_driver_branch": "470"},
         "Check the distribution packages this branch", "packages only branch"),
        ({"nvidia_driver_version": "550.1-1", "nvidia_driver_branch": "535"},
         "Check the branch and version", "nvidia_driver_version"),
    ],
)
def test_bad_input_fails_before_any_change(extra, task, words):
    assert_fails_before_any_change("nvidia_driver", extra, task, words)  # on both platforms


def test_cuda_repo_refused_on_debian13():
    result, events = run_role("nvidia_driver", {"nvidia_driver_method": "cuda_repo"},
                              pre_roles=("gpu_facts",), limit=D13)
    failures = failed_tasks(events)
    assert len(failures) == 1
    _, task, msg = failures[0]
    assert task == "Check the CUDA repository serves this distribution"
    assert "supported here for Debian-12, Ubuntu-22, Ubuntu-24, not Debian 13" in msg
    assert result.recaps[0].changed == 0


@pytest.fixture(scope="module")
def debian12():
    return instance(D12)


def _cuda_repo_on_debian12(base_url, check=False, **extra):
    """Apply nvidia_driver with method cuda_repo and this repository URL to the Debian 12 instance."""
    extra_vars = {"nvidia_driver_method": "cuda_repo", "nvidia_driver_cuda_repo_base_url": base_url, **extra}
    return run_role("nvidia_driver", extra_vars, pre_roles=("gpu_facts",), limit=D12, check=check)


def test_cuda_repo_unreachable_changes_nothing(debian12):
    result, events = _cuda_repo_on_debian12("http://127.0.0.1:9/repos")
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Stop when the repository does not answer"]
    assert "NVIDIA's CUDA repository http://127.0.0.1:9/repos/debian12/x86_64 does not answer" in failures[0][2]
    assert result.recaps[0].changed == 0
    assert not debian12.file("/etc/apt/sources.list.d/nvidia-cuda.sources").exists


@pytest.fixture(scope="module")
def local_cuda_mirror(debian12):
    served = serve_stand_in_repository(debian12, "repos/debian12/x86_64", "3bf863cc.pub", 8089)
    yield {"base": served["base"] + "/repos", "fpr": served["fpr"]}
    stop_stand_in_repository(debian12, 8089)


def test_cuda_repo_key_with_wrong_fingerprint_is_refused(debian12, local_cuda_mirror):
    result, events = _cuda_repo_on_debian12(local_cuda_mirror["base"])
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check the key is the expected one"]
    assert "EB693B3035CD5710E231E123A4B469963BF863CC" in failures[0][2]
    assert result.recaps[0].changed == 0
    assert not debian12.file("/usr/share/keyrings/nvidia-cuda-archive-keyring.asc").exists
    assert not debian12.file("/etc/apt/sources.list.d/nvidia-cuda.sources").exists


def test_cuda_repo_configuration_rendered(debian12, local_cuda_mirror):
    # Check mode against the stand-in mirror: the key passes, the keyring and the deb822 source
    # are rendered (seen as diffs); no package can be resolved from the stand-in, so the run stops
    # at the package step, having changed nothing on the host.
    result, events = _cuda_repo_on_debian12(
        local_cuda_mirror["base"], check=True, nvidia_driver_cuda_repo_key_fingerprint=local_cuda_mirror["fpr"])
    changes = {c.task: c for c in result.tracker.changes}
    assert "Install the repository key" in changes
    source = changes["Write the repository source"].diff[0]["after"]
    assert "URIs: http://127.0.0.1:8089/repos/debian12/x86_64/" in source
    assert "Suites: /" in source
    assert "Signed-By: /usr/share/keyrings/nvidia-cuda-archive-keyring.asc" in source
    assert "NVIDIA's CUDA repository: a flat apt repository" in source
    # The published file holds a second key (the mirror's): the keyring gets the expected one alone.
    keyring = "/usr/share/keyrings/nvidia-cuda-archive-keyring.asc"
    fingerprints = {name: [ln.split(":")[9] for ln in debian12.check_output(
        f"gpg --batch --show-keys --with-colons {keyring}{name}").splitlines() if ln.startswith("fpr:")]
        for name in (".download", ".download.expected")}
    assert len(fingerprints[".download"]) == 2
    assert fingerprints[".download.expected"] == [local_cuda_mirror["fpr"]]
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Install the driver packages"]
    assert "cuda-drivers-580" in failures[0][2]  # the default branch of the CUDA repository
    assert not debian12.file("/etc/apt/sources.list.d/nvidia-cuda.sources").exists


def test_nvswitches_without_a_fabric_manager_package_are_refused(debian12):
    # An 8-GPU NVSwitch system as the fact describes it (extra vars outrank the gathered fact):
    # Debian packages no Fabric Manager, so the distro method is refused before anything changes.
    fact = {"status": "no_driver", "gpu_count": 8, "nvswitch_count": 4, "fabric_manager_needed": True, "gpus": []}
    result, events = run_role("nvidia_driver", {"nvidia_driver_method": "distro", "ansible_local": {"gpu": fact}},
                              limit=D12)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check Fabric Manager can be installed where NVSwitches are present"]
    assert "4 NVSwitch(es) and needs NVIDIA Fabric Manager 535" in failures[0][2]
    assert result.recaps[0].changed == 0
