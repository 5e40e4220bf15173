"""cuda with the distro method on Debian 12 and 13 containers: nvcc of the distribution's CUDA
compiles a kernel for Hopper; CUDA_HOME in login shells; zero changes in check mode. NVIDIA's
repositories cannot be reached here: an unreachable one or a key with the wrong fingerprint changes
nothing, and against a stand-in the sources are rendered (check mode). Bad input fails before any
change, naming the variable."""

import pytest
from gpuprov_molecule import (
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    failed_tasks,
    host_in,
    instance,
    run_role,
    serve_stand_in_repository,
    stop_stand_in_repository,
)

# The scenario's Debian 12 and 13 hosts (the shared platforms, named after the scenario run).
D12, D13 = host_in("debian12"), host_in("debian13")

CUDA_RELEASE = {"12": "11.8", "13": "12.4"}
PRE_ROLES = ("gpu_facts",)


def _major(host):
    return host.system_info.release.split(".")[0]


def test_nvcc_is_the_distribution_release(host):
    out = host.check_output("nvcc --version")
    assert f"release {CUDA_RELEASE[_major(host)]}," in out


def test_nvcc_compiles_for_hopper(host):
    # Device code for sm_90 and the host stub: needs the host compiler nvcc supports
    # (nvidia-cuda-toolkit-gcc); no GPU is needed to compile.
    host.check_output("bash -c %s", "mkdir -p /tmp/cudatest && printf '%s\\n' "
                      "'__global__ void twice(float *x) { x[threadIdx.x] *= 2.0f; }' > /tmp/cudatest/k.cu")
    cmd = host.run("cd /tmp/cudatest && nvcc -c -arch=sm_90 -o k.o k.cu")
    assert cmd.rc == 0, cmd.stderr
    assert "twice" in host.check_output("nm -C /tmp/cudatest/k.o")


def test_cuda_home_in_login_shells(host):
    profile = host.file("/etc/profile.d/gpuprov-cuda.sh")
    assert profile.mode == 0o644
    assert host.check_output("bash -lc 'echo $CUDA_HOME'") == "/usr/lib/cuda"
    # Debian's CUDA_HOME layout: the driver API header and libdevice, which JIT compilers look for.
    assert host.file("/usr/lib/cuda/include/cuda.h").exists
    assert host.file("/usr/lib/cuda/nvvm/libdevice").is_directory
    # The distribution's libraries are on the standard path: no linker configuration of ours.
    assert not host.file("/etc/ld.so.conf.d/gpuprov-cuda.conf").exists


def test_no_container_runtime_unless_selected(host):
    assert not host.package("docker.io").is_installed
    assert not host.file("/etc/apt/sources.list.d/nvidia-container-toolkit.sources").exists


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


@pytest.mark.parametrize(
    "extra, task, words",
    [
        ({"cuda_method": "bogus"}, "Validating arguments", "cuda_method"),
        ({"cuda_container_runtime": "podman"}, "Validating arguments", "cuda_container_runtime"),
        ({"cuda_method": "cuda_repo", "cuda_version": "12"}, "Check the versions", "cuda_version must be"),
        ({"cuda_package_version": "12.4.1-1"}, "Check the versions", "cuda_package_version"),
        ({"cuda_container_toolkit_version": "latest"}, "Check the versions", "cuda_container_toolkit_version"),
    ],
)
def test_bad_input_fails_before_any_change(extra, task, words):
    assert_fails_before_any_change("cuda", extra, task, words)  # on both platforms


def test_cuda_repo_refused_on_debian13():
    result, events = run_role("cuda", {"cuda_method": "cuda_repo"}, pre_roles=PRE_ROLES, limit=D13)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check the CUDA repository serves this distribution"]
    assert "not Debian 13. Use cuda_method: distro or none." in failures[0][2]
    assert result.recaps[0].changed == 0


@pytest.fixture(scope="module")
def debian12():
    return instance(D12)


def test_container_runtime_with_unreachable_repository_changes_nothing(debian12):
    result, events = run_role("cuda", {"cuda_container_runtime": "docker",
                                       "cuda_container_toolkit_repo_url": "http://127.0.0.1:9/deb"},
                              pre_roles=PRE_ROLES, limit=D12)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Stop when the repository does not answer"]
    assert "NVIDIA's container toolkit repository http://127.0.0.1:9/deb/amd64 does not answer" in failures[0][2]
    assert "cuda_container_toolkit_repo_url" in failures[0][2]
    assert result.recaps[0].changed == 0
    assert not debian12.package("docker.io").is_installed


@pytest.fixture(scope="module")
def toolkit_stand_in(debian12):
    served = serve_stand_in_repository(debian12, "libnvidia-container/stable/deb/amd64", "../../../gpgkey", 8090)
    yield {"repo_url": served["base"] + "/libnvidia-container/stable/deb",
           "key_url": served["base"] + "/libnvidia-container/gpgkey", "fpr": served["fpr"]}
    stop_stand_in_repository(debian12, 8090)


def _toolkit(stand_in, check=False, **extra):
    return run_role("cuda", {"cuda_container_runtime": "docker",
                             "cuda_container_toolkit_repo_url": stand_in["repo_url"],
                             "cuda_container_toolkit_key_url": stand_in["key_url"], **extra},
                    pre_roles=PRE_ROLES, limit=D12, check=check)


def test_container_toolkit_key_with_wrong_fingerprint_is_refused(debian12, toolkit_stand_in):
    result, events = _toolkit(toolkit_stand_in)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check the key is the expected one"]
    assert "C95B321B61E88C1809C4F759DDCAE044F796ECB0" in failures[0][2]
    assert result.recaps[0].changed == 0
    assert not debian12.file("/usr/share/keyrings/nvidia-container-toolkit-keyring.asc").exists
    assert not debian12.package("docker.io").is_installed


def test_container_toolkit_configuration_rendered(debian12, toolkit_stand_in):
    # Check mode against the stand-in with its key accepted: keyring and source are rendered; the
    # stand-in has no packages, so the run stops at the package step having changed nothing.
    result, events = _toolkit(toolkit_stand_in, check=True,
                              cuda_container_toolkit_key_fingerprint=toolkit_stand_in["fpr"])
    changes = {c.task: c for c in result.tracker.changes}
    assert "Install the repository key" in changes
    source = changes["Write the repository source"].diff[0]["after"]
    assert f"URIs: {toolkit_stand_in['repo_url']}/amd64/" in source
    assert "Signed-By: /usr/share/keyrings/nvidia-container-toolkit-keyring.asc" in source
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Install Docker and the NVIDIA Container Toolkit"]
    assert "nvidia-container-toolkit" in failures[0][2]
    asked = next(e["event_data"]["res"]["invocation"]["module_args"]["name"] for e in events
                 if e.get("event") == "runner_on_failed")
    assert sorted(asked) == ["docker.io", "libnvidia-container-tools=1.17.8-1", "libnvidia-container1=1.17.8-1",
                             "nvidia-container-toolkit-base=1.17.8-1", "nvidia-container-toolkit=1.17.8-1"]
    assert not debian12.file("/etc/apt/sources.list.d/nvidia-container-toolkit.sources").exists


def test_cuda_repo_configuration_rendered(debian12):
    served = serve_stand_in_repository(debian12, "cuda/debian12/x86_64", "3bf863cc.pub", 8091)
    try:
        result, events = run_role("cuda", {"cuda_method": "cuda_repo", "cuda_repo_base_url": served["base"] + "/cuda",
                                           "cuda_repo_key_fingerprint": served["fpr"]},
                                  pre_roles=PRE_ROLES, limit=D12, check=True)
    finally:
        stop_stand_in_repository(debian12, 8091)
    changes = {c.task: c for c in result.tracker.changes}
    source = changes["Write the repository source"].diff[0]["after"]
    assert f"URIs: {served['base']}/cuda/debian12/x86_64/" in source
    assert "Signed-By: /usr/share/keyrings/nvidia-cuda-archive-keyring.asc" in source
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Install cuda-toolkit-12-8"]
    assert not debian12.file("/etc/apt/sources.list.d/nvidia-cuda.sources").exists
