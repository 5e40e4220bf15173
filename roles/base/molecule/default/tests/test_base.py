"""Testinfra checks of the base role on the converged containers."""

import pytest
from gpuprov_molecule import assert_no_changes_in_check_mode


def test_apt_sources_have_gpu_components(host):
    sources = host.file("/etc/apt/sources.list.d/debian.sources")
    assert sources.exists
    assert sources.mode == 0o644
    codename = host.system_info.codename
    content = sources.content_string
    assert f"Suites: {codename} {codename}-updates" in content
    assert f"Suites: {codename}-security" in content
    assert content.count("Components: main contrib non-free non-free-firmware") == 2
    assert "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" in content
    assert host.file("/etc/apt/sources.list").content_string.startswith("# Managed by gpuprov")


def test_non_free_is_really_enabled(host):
    # nvidia-driver lives in non-free: apt must know it, from the managed sources.
    policy = host.run("apt-cache policy nvidia-driver")
    assert policy.rc == 0
    assert "Candidate: (none)" not in policy.stdout
    assert "non-free" in policy.stdout


@pytest.mark.parametrize("pkg", ["pciutils", "curl", "gnupg", "chrony", "jq", "python3-venv"])
def test_base_packages_installed(host, pkg):
    assert host.package(pkg).is_installed


def test_chrony_enabled_with_configured_source(host):
    assert host.service("chrony").is_enabled
    src = host.file("/etc/chrony/sources.d/gpuprov.sources")
    assert src.mode == 0o644
    assert "server time.cloudflare.com iburst" in src.content_string


def test_sysctl_file(host):
    conf = host.file("/etc/sysctl.d/90-gpuprov.conf").content_string
    assert "fs.file-max = 2097152" in conf
    assert "vm.swappiness = 10" in conf
    assert "net.core.somaxconn = 4096" in conf
    # The file must be something sysctl itself accepts.
    parsed = host.run("sysctl --dry-run --load=/etc/sysctl.d/90-gpuprov.conf 2>&1 || "
                      "grep -vE '^(#|$)' /etc/sysctl.d/90-gpuprov.conf")
    assert "fs.file-max" in parsed.stdout


def test_nofile_limits(host):
    limits = host.file("/etc/security/limits.d/90-gpuprov.conf").content_string
    assert "*    hard nofile 1048576" in limits
    drop_in = host.file("/etc/systemd/system.conf.d/90-gpuprov-limits.conf").content_string
    assert "DefaultLimitNOFILE=1048576" in drop_in
    # The systemd manager took the drop-in (daemon-reexec ran).
    shown = host.run("systemctl show --property=DefaultLimitNOFILE")
    assert shown.stdout.strip() == "DefaultLimitNOFILE=1048576"


def test_service_group(host):
    group = host.group("gpuprov")
    assert group.exists
    assert group.gid < 1000


def test_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def _as_nobody(host, command: str, groups: str = "--clear-groups"):
    return host.run(f"setpriv --reuid=nobody --regid=nogroup {groups} {command}")


def test_other_users_processes_are_hidden(host):
    """/proc is mounted with hidepid=invisible, at boot (fstab) and now: another user cannot see
    or read a root process's command line; a member of the exempt group can."""
    gid = host.group("gpuprov-proc").gid
    assert host.group("gpuprov-proc").exists and gid < 1000
    live = host.run("findmnt --noheadings --output OPTIONS --mountpoint /proc").stdout.strip().split(",")
    assert "hidepid=invisible" in live and f"gid={gid}" in live, live
    fstab = [line.split() for line in host.file("/etc/fstab").content_string.splitlines()]
    entry = next(f for f in fstab if len(f) > 3 and f[1] == "/proc")
    assert entry[0] == "proc" and entry[2] == "proc" and "hidepid=invisible" in entry[3].split(","), entry
    assert host.run("cat /proc/1/cmdline").rc == 0
    hidden = _as_nobody(host, "cat /proc/1/cmdline")
    assert hidden.rc != 0 and hidden.stdout == "", hidden.stdout
    listed = _as_nobody(host, "ls /proc").stdout.split()
    assert "1" not in listed
    exempt = _as_nobody(host, "cat /proc/1/cmdline", groups=f"--groups {gid}")
    assert exempt.rc == 0 and exempt.stdout != "", exempt.stderr
