"""The firewall on Debian 12 and 13: default drop in gpuprov's own table, the sources it is given,
validation before anything loads, rules back after an nftables restart and a reboot, other tables
untouched, and, over a real SSH connection, a controller that is never locked out."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from gpuprov_molecule import (
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    assert_role_verify,
    failed_tasks,
    instance,
    run_role,
)

from gpuprov.verify import PASS

HOSTS = ["gpuprov-fw-debian12", "gpuprov-fw-debian13"]
OUTSIDER = instance("gpuprov-fw-outsider")
KEY = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"), "id_ed25519")
CONVERGE = {"firewall_admin_cidrs": ["198.51.100.0/24", "2001:db8:100::/48"],
            "firewall_client_cidrs": ["203.0.113.0/24"], "firewall_monitoring_extra_cidrs": ["192.0.2.50/32"],
            "firewall_guarded_units": ["nginx", "prometheus-node-exporter", "node_exporter", "gpuprov-triton",
                                       "gpuprov-gateway", "gpuprov-gpu-exporter", "gpuprov-guard-probe"]}
PROBE = "gpuprov-guard-probe"


def _ip(name: str) -> str:
    return instance(name).check_output("hostname -I").split()[0]


def _gateway(name: str) -> str:
    """The controller's address as the host sees it (Docker's bridge gateway)."""
    return instance(name).check_output("ip route show default").split()[2]


def _table(name: str) -> str:
    """The loaded table, its counters' values left out (packets arrive while a test runs)."""
    return re.sub(r"counter packets \d+ bytes \d+", "counter",
                  instance(name).check_output("nft list table inet gpuprov"))


def _eventually_loaded(name: str, seconds: int = 15) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if instance(name).run("nft list table inet gpuprov").rc == 0:
            break
        time.sleep(0.5)
    return _table(name)


def _ssh(ip: str, command: str = "true", timeout: int = 5) -> subprocess.CompletedProcess:
    return subprocess.run(["ssh", "-i", KEY, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={timeout}",
                           f"root@{ip}", command], capture_output=True, text=True, timeout=timeout + 60)


def _over_ssh(ip: str) -> dict:
    # Throwaway containers with fresh host keys: checking is off for them only (gpuprov's runs check
    # host keys everywhere else).
    return {"ansible_connection": "ssh", "ansible_host": ip, "ansible_user": "root",
            "ansible_ssh_private_key_file": KEY, "ansible_host_key_checking": False,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"}


def _dropped(host, ip: str, port: int) -> bool:
    """curl exit 28 is a timeout: the SYN was dropped, not refused."""
    return host.run(f"curl -sS -o /dev/null --connect-timeout 3 http://{ip}:{port}/").rc == 28


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


def test_the_roles_own_verify_passes():
    """The role's own checks (tasks/verify.yml: what `gpuprov verify` runs on a lab or fleet) with
    the scenario's settings, on the converged hosts."""
    assert_role_verify("firewall", HOSTS, {
        "Firewall: table loaded, input dropped by default": PASS,
        "Firewall: loaded at boot": PASS,
    })


@pytest.mark.parametrize("name", HOSTS)
def test_default_drop_with_the_given_sources(name):
    table = _table(name)
    assert "policy drop" in table
    assert "198.51.100.0/24" in table and "2001:db8:100::/48" in table
    assert "tcp dport 22 ct state new limit rate 10/minute burst 20 packets accept" in table
    assert "203.0.113.0/24" in table and "tcp dport 8443 accept" in table
    assert "192.0.2.50" in table and "tcp dport { 8002, 9100, 9108, 9835 } accept" in table
    assert "icmp type echo-request limit rate 10/second" in table
    assert instance(name).file("/etc/gpuprov/firewall.nft").mode == 0o600


def test_outsider_is_dropped():
    # sshd listens on the Debian 12 host; the outsider's SYN is dropped, not answered.
    ip = _ip(HOSTS[0])
    assert instance(HOSTS[0]).socket("tcp://0.0.0.0:22").is_listening
    assert _dropped(OUTSIDER, ip, 22)
    assert _dropped(OUTSIDER, ip, 8443)


# Docker's way of publishing a port, without Docker: a DNAT in prerouting (table ip of its own, as
# Docker's) to a service in a network namespace behind a veth pair (a container on its bridge).
PUBLISH = """set -e
ip netns add gpuprov-pub
ip link add gpv0 type veth peer name gpv1
ip link set gpv1 netns gpuprov-pub
ip addr add 10.213.0.1/30 dev gpv0
ip link set gpv0 up
ip netns exec gpuprov-pub ip addr add 10.213.0.2/30 dev gpv1
ip netns exec gpuprov-pub ip link set gpv1 up
ip netns exec gpuprov-pub ip link set lo up
ip netns exec gpuprov-pub ip route add default via 10.213.0.1
nft -f - <<'NFT'
table ip gpuprov_test_nat {
    chain prerouting {
        type nat hook prerouting priority dstnat;
        tcp dport { 8443, 18080 } dnat to 10.213.0.2:8080
    }
}
NFT
setsid ip netns exec gpuprov-pub python3 -m http.server 8080 >/dev/null 2>&1 < /dev/null &
for i in $(seq 1 300); do
    ip netns exec gpuprov-pub python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8080), 1)' \\
        2>/dev/null && exit 0
    sleep 0.2
done
exit 1
"""
UNPUBLISH = ("ip netns pids gpuprov-pub | xargs -r kill; nft delete table ip gpuprov_test_nat;"
             " ip link delete gpv0; ip netns delete gpuprov-pub")


def test_a_published_port_gets_the_input_chains_sources():
    """A port published the way Docker does it is DNATed before the input chain: the forward chain
    keeps the outsider out of it, lets it in once its address is among the clients (8443 is a client
    port), and keeps an unlisted published port (18080) closed to it even then."""
    name = HOSTS[0]
    host, outsider_ip, ip = instance(name), _ip("gpuprov-fw-outsider"), _ip(name)
    table = _table(name)
    assert "ct status dnat ct direction original jump published" in table
    assert 'iifname "docker0" return' in table and 'iifname "br-*" return' in table
    host.run(UNPUBLISH)
    host.check_output(PUBLISH)
    try:
        # The stand-in answers through the DNAT when nothing filters it (gpuprov's table away).
        host.check_output("nft delete table inet gpuprov")
        assert OUTSIDER.run(f"curl -sS -o /dev/null --connect-timeout 3 http://{ip}:18080/").rc == 0
        host.check_output("systemctl restart gpuprov-firewall")
        _eventually_loaded(name)
        assert _dropped(OUTSIDER, ip, 8443) and _dropped(OUTSIDER, ip, 18080)
        host.check_output(f"nft add element inet gpuprov clients_v4 '{{ {outsider_ip} }}'")
        assert OUTSIDER.run(f"curl -sS -o /dev/null --connect-timeout 3 http://{ip}:8443/").rc == 0
        assert _dropped(OUTSIDER, ip, 18080)
        # The drops were the forward chain's (its counter), not another table's.
        chain = host.check_output("nft list chain inet gpuprov published")
        dropped = re.search(r"counter packets (\d+) bytes \d+ drop", chain)
        assert dropped and int(dropped.group(1)) > 0, chain
    finally:
        host.run(UNPUBLISH)
        host.run("systemctl restart gpuprov-firewall")
        _eventually_loaded(name)


@pytest.mark.parametrize("name", HOSTS)
def test_rules_come_back_after_an_nftables_restart(name):
    host = instance(name)
    before = _table(name)
    host.check_output("systemctl restart nftables")  # Debian's unit flushes the whole ruleset
    # gpuprov-firewall restarts with it (PartOf), as a job of its own that may still be running.
    assert _eventually_loaded(name) == before


def test_rules_come_back_after_a_reboot():
    name = HOSTS[1]
    before = _table(name)
    subprocess.run(["docker", "restart", name], check=True, capture_output=True, timeout=120)
    deadline, state = time.time() + 90, ""
    while time.time() < deadline and state not in ("running", "degraded"):
        state = instance(name).run("systemctl is-system-running --wait").stdout.strip()
        time.sleep(1)
    assert state in ("running", "degraded")
    assert instance(name).service("gpuprov-firewall").is_enabled
    assert _eventually_loaded(name) == before


def test_a_guarded_service_starts_only_while_the_table_is_loaded():
    """Fail closed: a listening service (a stand-in unit here; nginx, the exporters, Triton and the
    gateway in production) does not start while gpuprov's table is missing, starts once it is
    loaded, and is not restarted when the firewall is."""
    name = HOSTS[1]
    host = instance(name)
    dropin = host.file(f"/etc/systemd/system/{PROBE}.service.d/10-gpuprov-firewall.conf").content_string
    assert "After=gpuprov-firewall.service" in dropin and "nft list table inet gpuprov" in dropin
    for unit in ("nginx", "gpuprov-triton", "gpuprov-gateway", "prometheus-node-exporter"):
        assert host.file(f"/etc/systemd/system/{unit}.service.d/10-gpuprov-firewall.conf").exists, unit
    host.check_output(f"printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > /etc/systemd/system/{PROBE}.service"
                      " && systemctl daemon-reload")
    try:
        host.check_output(f"systemctl start {PROBE}")
        pid = host.check_output(f"systemctl show --property=MainPID --value {PROBE}")
        host.check_output("systemctl restart gpuprov-firewall")
        assert host.check_output(f"systemctl show --property=MainPID --value {PROBE}") == pid
        host.check_output(f"systemctl stop {PROBE} && nft delete table inet gpuprov")
        assert host.run(f"systemctl start {PROBE}").rc != 0
        assert not host.service(PROBE).is_running
        host.check_output("systemctl restart gpuprov-firewall")
        _eventually_loaded(name)
        host.check_output(f"systemctl reset-failed {PROBE}; systemctl start {PROBE}")
        assert host.service(PROBE).is_running
    finally:
        host.run(f"systemctl stop {PROBE}; rm -f /etc/systemd/system/{PROBE}.service; systemctl daemon-reload;"
                 " systemctl start gpuprov-firewall")


def test_a_service_taken_off_the_list_loses_its_drop_in():
    name = HOSTS[1]
    kept = [u for u in CONVERGE["firewall_guarded_units"] if u != "nginx"]
    try:
        assert run_role("firewall", {**CONVERGE, "firewall_guarded_units": kept}, limit=name)[0].rc == 0
        assert not instance(name).file("/etc/systemd/system/nginx.service.d/10-gpuprov-firewall.conf").exists
        assert instance(name).file(f"/etc/systemd/system/{PROBE}.service.d/10-gpuprov-firewall.conf").exists
    finally:
        run_role("firewall", CONVERGE, limit=name)
    assert instance(name).file("/etc/systemd/system/nginx.service.d/10-gpuprov-firewall.conf").exists


def test_other_tables_are_left_alone():
    host, name = instance(HOSTS[1]), HOSTS[1]
    host.check_output("nft add table ip other_tool && nft add chain ip other_tool c")
    try:
        result, _ = run_role("firewall", {**CONVERGE, "firewall_extra_rules": ["tcp dport 9999 counter accept"]},
                             limit=name)
        assert result.rc == 0
        assert "table ip other_tool" in host.check_output("nft list tables")
        assert "tcp dport 9999 counter" in _table(name)
    finally:
        host.run("nft delete table ip other_tool")
        run_role("firewall", CONVERGE, limit=name)


@pytest.mark.parametrize("extra, words", [
    ({"firewall_client_cidrs": ["10.0.0.300/8"]}, "10.0.0.300/8"),
    ({"firewall_admin_cidrs": ["not-a-network"]}, "not-a-network"),
    ({"firewall_monitoring_ports": [70000]}, "Ports must be 1..65535"),
    ({"firewall_ssh_rate": "fast"}, "rates like 10/minute"),
    ({"firewall_published_trusted_interfaces": ["docker0; accept"]}, "docker0; accept"),
])
def test_bad_input_fails_before_any_change(extra, words):
    before = [_table(n) for n in HOSTS]
    assert_fails_before_any_change("firewall", {**CONVERGE, **extra}, "Check the addresses and ports", words,
                                   hosts=HOSTS, pre_roles=(), play_hosts="gpu_servers", exact_task=True)
    assert [_table(n) for n in HOSTS] == before


def test_a_ruleset_that_does_not_validate_changes_nothing():
    name = HOSTS[0]
    before = instance(name).file("/etc/gpuprov/firewall.nft").content_string
    table = _table(name)
    result, events = run_role("firewall", {**CONVERGE, "firewall_extra_rules": ["tcp dport 9999 acept"]}, limit=name)
    assert [t for _, t, _ in failed_tasks(events)] == ["Write the ruleset (validated with nft -c)"]
    assert instance(name).file("/etc/gpuprov/firewall.nft").content_string == before
    assert _table(name) == table


# --- over SSH, as on a real host (last: they change the Debian 12 host's SSH sources) ---

def test_over_ssh_the_controller_keeps_its_way_in():
    name, ip, gateway = HOSTS[0], _ip(HOSTS[0]), _gateway(HOSTS[0])
    # The converged ruleset admits only the administrators' network: the controller is dropped.
    assert _ssh(ip, timeout=3).returncode == 255
    # Open SSH to the controller through Docker, then manage the host over SSH alone.
    opened, _ = run_role("firewall", {**CONVERGE, "firewall_admin_cidrs": [f"{gateway}/32"]}, limit=name)
    assert opened.rc == 0 and _ssh(ip).returncode == 0
    # Over SSH, the administrators' network being one the controller is not in: the role finds the
    # controller's address (SSH_CLIENT) and lets it in too, so the run finishes and the next
    # connection still works.
    result, events = run_role("firewall", {**CONVERGE, **_over_ssh(ip)}, limit=name)
    assert result.rc == 0, failed_tasks(events)
    table = _table(name)
    assert f"elements = {{ {gateway} }}" in table and "@controller_v4 tcp dport 22 accept" in table
    assert _ssh(ip).returncode == 0
    again, _ = run_role("firewall", {**CONVERGE, **_over_ssh(ip)}, limit=name)
    assert again.rc == 0 and again.recaps[0].changed == 0
    assert _dropped(OUTSIDER, ip, 22)


def test_over_ssh_a_ruleset_that_would_lock_administrators_out_is_refused():
    """Without administrators' networks, SSH would be open only to the controller that ran the role
    last (each run would shut out the one before): refused, as is a port other than the connection's."""
    name, ip = HOSTS[0], _ip(HOSTS[0])
    before = _table(name)
    result, events = run_role("firewall", {**CONVERGE, "firewall_admin_cidrs": [], **_over_ssh(ip)}, limit=name)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check SSH stays open to the administrators"], failures
    assert "set firewall_admin_cidrs" in failures[0][2]
    assert result.recaps[0].changed == 0 and _table(name) == before
    result, events = run_role("firewall", {**CONVERGE, "firewall_ssh_port": 2222, **_over_ssh(ip)}, limit=name)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check SSH stays open to the administrators"], failures
    assert "managed over SSH on port 22" in failures[0][2] and "(is 2222)" in failures[0][2]
    assert result.recaps[0].changed == 0 and _table(name) == before
    assert _ssh(ip).returncode == 0


def test_over_ssh_an_unknown_host_key_is_refused_before_any_change():
    """gpuprov's runs check host keys (ansible-runner would turn that off): a host whose key is not
    known is unreachable, and nothing on it changes."""
    name, ip = HOSTS[0], _ip(HOSTS[0])
    before = _table(name)
    checked = {**_over_ssh(ip), "ansible_host_key_checking": True,
               "ansible_ssh_common_args": "-o UserKnownHostsFile=/dev/null"}
    result, events = run_role("firewall", {**CONVERGE, **checked}, limit=name)
    unreachable = [e["event_data"]["res"].get("msg", "") for e in events if e.get("event") == "runner_on_unreachable"]
    assert result.rc != 0 and result.recaps[0].unreachable > 0, unreachable
    assert unreachable and all("host key" in m.lower() for m in unreachable), unreachable
    assert _table(name) == before
