"""End to end through scripts/gpuprov, and the repository's one converge of the whole stack: lab up
applies site.yml to real systemd containers (an inference host and a monitoring host), a second
apply changes nothing, a whole-site drift run finds one hand edit and nothing else (exit 2), its
metrics fire ConfigurationDrift in the lab's Prometheus, and apply corrects it, facts shows the host,
lab down removes it. Then the stack as its users meet it, from
this machine (the lab's one API client) and from an outsider container: the API through the gateway
over TLS 1.3, Triton's own routes refused, the firewall, Prometheus and its alerts, verify."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import ROOT, run_gpuprov, verify_rows

from gpuprov import lab as lab_module

# Docker's own transport failing under load (seen in CI: containerd-shim's "failed to start io pipe
# copy ... context deadline exceeded" appended to a `cat`'s output, or an empty output): not the
# command's answer, so the command is run again, at most three times in all.
_DOCKER_EXEC_FAULTS = (b"failed to start io pipe copy", b"containerd-shim: opening w/o fifo")


def _exec(container, argv: list[str], *, want_output: bool = False) -> tuple[int, bytes]:
    """`container.exec_run(argv)`, again when Docker itself (not the command) failed."""
    for attempt in range(3):
        if attempt:
            time.sleep(2 * attempt)
        rc, out = container.exec_run(argv)
        broken = any(fault in out for fault in _DOCKER_EXEC_FAULTS) or (want_output and not out.strip())
        if not broken:
            break
    return rc, out

HOST = "gpuprov-lab-gpu1"
MON = "gpuprov-lab-mon1"
CA = ROOT / ".gpuprov" / "pki" / "lab" / "ca.crt"


def _summary(stdout: str) -> dict:
    line = [ln for ln in stdout.splitlines() if ln.startswith("artifacts: ")][-1]
    return json.loads((Path(line.split(": ", 1)[1]) / "summary.json").read_text())


@pytest.fixture(scope="module")
def lab(docker_client):
    run_gpuprov("lab", "down")
    up = run_gpuprov("lab", "up", timeout=2400)
    yield up
    down = run_gpuprov("lab", "down")
    assert down.returncode == 0, down.stderr
    assert HOST in down.stdout


def test_lab_up_applies_site(lab):
    assert lab.returncode == 0, lab.stdout[-3000:] + lab.stderr[-3000:]
    assert (ROOT / "inventories" / "lab" / "hosts.yml").exists()
    # Plain progress lines (not a terminal): "[done/total] host: state: task".
    assert f"] {HOST}: changed: base : Write the kernel settings" in lab.stdout
    summary = _summary(lab.stdout)
    assert summary["command"] == "apply"
    assert summary["strategy"] == "mitogen_linear"  # the lab opts in (gpuprov.runner.strategy_for)
    assert summary["hosts"][HOST]["failed"] == 0
    assert summary["hosts"][HOST]["changed"] > 0
    # The recap table has the host's row.
    assert any(ln.startswith(HOST) for ln in lab.stdout.splitlines())


def test_second_apply_changes_nothing(lab):
    again = run_gpuprov("apply")
    assert again.returncode == 0, again.stdout[-3000:]
    assert _summary(again.stdout)["hosts"][HOST]["changed"] == 0


def test_a_limited_apply_keeps_what_the_other_hosts_facts_make(lab):
    """`apply -l` one host, with no earlier run's facts in the cache: the GPU host's firewall still
    opens the metrics ports to the monitoring host, and Prometheus still has every GPU host's
    targets at its address (the facts of the host outside the limit are gathered for the run), so
    neither run changes anything."""
    for limit, other, tag in ((HOST, MON, "firewall"), (MON, HOST, "prometheus")):
        shutil.rmtree(ROOT / ".gpuprov" / "facts" / "lab", ignore_errors=True)
        r = run_gpuprov("apply", "-l", limit, "-t", tag)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        summary = _summary(r.stdout)
        assert summary["hosts"][limit]["changed"] == 0, summary["changes"]
        log = (Path(r.stdout.split("artifacts: ")[-1].split()[0]) / "artifacts" / "run" / "stdout").read_text()
        assert f"Gather the facts of {other}" in log, f"{other}'s facts were not gathered"


def test_drift_finds_only_the_drift_its_alert_fires_and_apply_corrects_it(lab, docker_client, tmp_path):
    """`gpuprov drift` over the whole converged lab, one file edited by hand on one host: that host
    `drifted` with that one task and its diff, the other `compliant` (every other task would change
    nothing), exit 2, nothing changed. Its metrics, put where the lab's node exporter reads them (the
    scheduled run writes them into the controller's own textfile directory), reach Prometheus and
    ConfigurationDrift fires for that host. Apply of the drifted role's phase corrects it, and the
    role's check then finds no drift either."""
    container, mon = docker_client.containers.get(HOST), docker_client.containers.get(MON)
    rc, _ = _exec(container, ["sed", "-i", "s/^vm.swappiness = .*/vm.swappiness = 60/",
                                "/etc/sysctl.d/90-gpuprov.conf"])
    assert rc == 0
    metrics = tmp_path / "gpuprov_drift.prom"
    drift = run_gpuprov("drift", "--format", "json", "--metrics-file", str(metrics))
    assert drift.returncode == 2, drift.stdout[-3000:] + drift.stderr[-3000:]
    report = json.loads(drift.stdout)
    hosts = {h["host"]: h for h in report["hosts"]}
    assert {h: r["status"] for h, r in hosts.items()} == {HOST: "drifted", MON: "compliant"}
    [task] = hosts[HOST]["tasks"]
    assert task["task"].endswith("Write the kernel settings"), task
    assert "-vm.swappiness = 60" in task["diff"] and "+vm.swappiness = 10" in task["diff"], task["diff"]
    # check mode changed nothing on the host
    _, content = _exec(container, ["cat", "/etc/sysctl.d/90-gpuprov.conf"], want_output=True)
    assert b"vm.swappiness = 60" in content
    textfile = "/var/lib/prometheus/node-exporter/gpuprov_drift.prom"
    put = time.time() - 2
    rc, out = _sh(container, f"cat > {textfile}.tmp <<'EOF'\n{metrics.read_text()}EOF\nmv {textfile}.tmp {textfile}")
    assert rc == 0, out
    try:
        fix = run_gpuprov("apply", "--limit", HOST, "--tags", "base_configure")
        assert fix.returncode == 0, fix.stdout[-3000:]
        _, content = _exec(container, ["cat", "/etc/sysctl.d/90-gpuprov.conf"], want_output=True)
        assert b"vm.swappiness = 10" in content
        again = run_gpuprov("check", "--limit", HOST, "--tags", "base")
        assert again.returncode == 0, again.stdout[-3000:]
        assert "no changes: the hosts match the repository" in again.stdout
        # The drift run's metrics as Prometheus sees them: ConfigurationDrift for that host (the
        # lab's windows: 15 s scrapes, 60 s for the alert).
        deadline = time.time() + 300
        firing: list[dict] = []
        while time.time() < deadline and not firing:
            time.sleep(5)
            firing = [a for a in _active(mon, "ConfigurationDrift") if a["state"] == "firing"
                      and _since(a["activeAt"]) >= put]
        assert [a["labels"]["managed_host"] for a in firing] == [HOST], _active(mon, "ConfigurationDrift")
        assert firing[0]["labels"]["inventory"] == report["inventory"]
        assert "1 task(s) would change it" in firing[0]["annotations"]["summary"], firing[0]
    finally:
        # The drift is corrected: its metrics leave, and so does the alert (later tests verify that
        # no alert fires).
        _sh(container, f"rm -f {textfile}")
        deadline = time.time() + 120
        while time.time() < deadline and _active(mon, "ConfigurationDrift"):
            time.sleep(5)
    assert not _active(mon, "ConfigurationDrift")


def test_the_lab_is_reached_over_ssh_and_a_host_whose_key_changed_is_left_alone(lab, docker_client, tmp_path):
    """The lab's hosts are reached over SSH as root with their keys checked against the lab's own
    known_hosts, which `lab up` fills with the key each host made (read through Docker, never taken
    on first use). With the GPU host's entry replaced by another key, an apply that would correct a
    hand edit there finds the host unreachable for its key and changes nothing; with the key back,
    the same apply corrects the edit."""
    gpu = docker_client.containers.get(HOST)
    gpu.reload()
    ip = _ip(gpu)
    inventory = (ROOT / "inventories" / "lab" / "hosts.yml").read_text()
    assert f"ansible_host: {ip}" in inventory
    known = lab_module.ssh_dir() / "known_hosts"
    original = known.read_text()
    _, host_key = _exec(gpu, ["cat", "/etc/ssh/ssh_host_ed25519_key.pub"], want_output=True)
    assert f"{ip} {' '.join(host_key.decode().split()[:2])}\n" in original
    # Each container made its own key: no two hosts share one.
    assert len({line.split()[2] for line in original.splitlines()}) == len(original.splitlines()) >= 2

    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    forged = " ".join(other.with_suffix(".pub").read_text().split()[:2])
    lines = [f"{ip} {forged}" if line.startswith(f"{ip} ") else line for line in original.splitlines()]
    rc, _ = _exec(gpu, ["sed", "-i", "s/^vm.swappiness = .*/vm.swappiness = 61/", "/etc/sysctl.d/90-gpuprov.conf"])
    assert rc == 0
    try:
        known.write_text("\n".join(lines) + "\n")
        refused = run_gpuprov("apply", "--limit", HOST, "--tags", "base_configure")
        assert refused.returncode == 1, refused.stdout[-3000:]
        why = [ln for ln in refused.stdout.splitlines() if ln.startswith(f"UNREACHABLE {HOST}: ")]
        assert len(why) == 1 and "host key" in why[0].lower(), refused.stdout[-3000:]
        summary = _summary(refused.stdout)["hosts"][HOST]
        assert summary["unreachable"] >= 1 and summary["changed"] == 0, summary
        _, content = _exec(gpu, ["cat", "/etc/sysctl.d/90-gpuprov.conf"], want_output=True)
        assert b"vm.swappiness = 61" in content  # the hand edit is still there: nothing ran
    finally:
        known.write_text(original)
    fixed = run_gpuprov("apply", "--limit", HOST, "--tags", "base_configure")
    assert fixed.returncode == 0, fixed.stdout[-3000:]
    _, content = _exec(gpu, ["cat", "/etc/sysctl.d/90-gpuprov.conf"], want_output=True)
    assert b"vm.swappiness = 10" in content


def test_phase_tags_limit_a_run(lab):
    """A run limited by tags finds everything it needs (facts worked out in preflight, task files
    included with their tags) and, on a converged lab, no drift."""
    check = run_gpuprov("check", "--tags", "triton_install,triton_configure,tls,firewall,prometheus")
    assert check.returncode == 0, check.stdout[-3000:]
    assert "no changes: the hosts match the repository" in check.stdout
    summary = _summary(check.stdout)
    assert summary["hosts"][HOST]["ok"] > 20  # the tagged tasks ran, not only fact gathering


def test_facts_table(lab):
    facts = run_gpuprov("facts")
    assert facts.returncode == 0, facts.stderr
    lines = facts.stdout.splitlines()
    assert lines[0].split() == ["host", "os", "kernel", "cpu", "memory", "gpus", "driver"]
    row = [ln for ln in lines if ln.startswith(HOST)]
    assert len(row) == 1 and "Debian 12" in row[0] and "GiB" in row[0]
    # The gpu fact (site.yml's GPU stack) is read: a container has no GPU and no loaded driver.
    assert row[0].split()[-2:] == ["none", "-"]


def test_lab_hosts_fetch_debian_through_the_shared_cache(lab, docker_client):
    """With GPUPROV_APT_CACHE_PORT (scripts/test starts apt-cacher-ng and sets it), each lab host
    sends the Debian archive, and only it, through the cache at its gateway, and a package that
    site.yml installed is fetched through it (the cache's log names the host's address)."""
    port = os.environ.get("GPUPROV_APT_CACHE_PORT")
    if not port:
        pytest.skip("no shared apt cache in this run (scripts/test sets GPUPROV_APT_CACHE_PORT)")
    container = docker_client.containers.get(HOST)
    net = container.attrs["NetworkSettings"]["Networks"]["gpuprov-lab"]
    rc, conf = _exec(container, ["cat", "/etc/apt/apt.conf.d/00gpuprov-lab-cache"], want_output=True)
    assert rc == 0
    assert conf.decode().strip() == f'Acquire::http::Proxy::deb.debian.org "http://{net["Gateway"]}:{port}";'
    # jq (base_packages) fetched again into a directory of its own: the host's archive directory
    # (.gpuprov/apt-cache, kept across labs) cannot answer, so the package comes from the archive.
    # Only what the cache logs from now on counts (its log outlives labs, whose addresses repeat).
    cache_log = Path("/var/log/apt-cacher-ng/apt-cacher.log")
    start = cache_log.stat().st_size
    rc, out = _exec(container, ["sh", "-c", "rm -rf /tmp/aptdl && mkdir -p /tmp/aptdl/partial && apt-get install"
                                " --reinstall --download-only -y -qq -o Dir::Cache::archives=/tmp/aptdl jq"])
    assert rc == 0, out
    deadline, fetched = time.time() + 120, False
    while not fetched and time.time() < deadline:
        with cache_log.open("rb") as f:
            f.seek(start)
            log = f.read().decode(errors="replace").splitlines()
        served = [ln.split("|") for ln in log if ln.count("|") >= 4]
        fetched = any(f[3] == net["IPAddress"] and "/jq_" in f[4] and f[4].endswith(".deb") for f in served)
        time.sleep(0 if fetched else 1)
    assert fetched, log[-20:]


def test_lab_status(lab):
    status = run_gpuprov("lab", "status")
    assert status.returncode == 0
    row = [ln for ln in status.stdout.splitlines() if ln.startswith(HOST)]
    assert row and "running" in row[0] and "debian12" in row[0]


@pytest.mark.parametrize(
    "extra, failing_task, message",
    [
        ("base_swappiness=150", "base : Check the role's variables", "base_swappiness must be 0-100 (is 150)"),
        ("base_nofile_limit=lots", "base : Validating arguments against arg spec", "base_nofile_limit"),
    ],
)
def test_bad_input_fails_before_any_change(lab, docker_client, extra, failing_task, message):
    container = docker_client.containers.get(HOST)
    _, before = _exec(container, ["cat", "/etc/sysctl.d/90-gpuprov.conf"], want_output=True)
    bad = run_gpuprov("apply", "-e", extra)
    assert bad.returncode == 1
    assert f"FAILED {HOST}: {failing_task.split(' : ', 1)[1]}" in bad.stdout
    summary = _summary(bad.stdout)
    assert summary["hosts"][HOST]["changed"] == 0 and summary["hosts"][HOST]["failed"] == 1
    stdout_file = Path(bad.stdout.split("artifacts: ")[-1].strip()) / "artifacts" / "run" / "stdout"
    assert message in stdout_file.read_text()
    _, after = _exec(container, ["cat", "/etc/sysctl.d/90-gpuprov.conf"], want_output=True)
    assert before == after


def _front(docker_client) -> str:
    ip = docker_client.containers.get(HOST).attrs["NetworkSettings"]["Networks"]["gpuprov-lab"]["IPAddress"]
    return f"{ip}:8443"


USER_KEY = "gpuprov-lab-user-key-0000000000000000"  # inventories/lab/group_vars/all.yml (throwaways)
CHAT_ONLY_KEY = "gpuprov-lab-chat-only-key-0000000000"


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(CA))
    ctx.check_hostname = False  # the URL uses the address; the certificate has it as an IP SAN too
    return ctx


def _sdk(docker_client, key: str):
    """The official openai SDK, as an application would point it at the lab host. The SDK's own
    retries are off (a 5xx must fail the test); a 429 from the key's bucket, which the tests before
    may have emptied, is waited out as its Retry-After says, as a client does."""
    import httpx2
    import openai

    class WaitOut429(httpx2.HTTPTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            for _ in range(30):
                response = super().handle_request(request)
                if response.status_code != 429:
                    return response
                response.read()
                response.close()
                time.sleep(float(response.headers.get("retry-after", "1")))
            return response

    return openai.OpenAI(base_url=f"https://{_front(docker_client)}/v1", api_key=key, max_retries=0,
                         http_client=openai.DefaultHttpx2Client(
                             transport=WaitOut429(verify=_tls_context())), timeout=120)


def test_lab_serves_tiny_deepseek_over_tls13_only(lab, docker_client):
    """From this machine (the controller, on the lab network): a chat completion over HTTPS verifying
    the lab CA, through the front and the gateway; a TLS 1.2 handshake is refused; Triton's own port
    is not reachable."""
    front = _front(docker_client)
    ctx = _tls_context()
    body = json.dumps({"model": "deepseek-chat", "max_tokens": 32,
                       "messages": [{"role": "user", "content": "What is Triton?"}]}).encode()
    times = []
    for _ in range(10):
        req = urllib.request.Request(f"https://{front}/v1/chat/completions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {USER_KEY}", "Cache-Control": "no-cache",
                                              "Content-Type": "application/json"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, context=ctx, timeout=60) as resp:
            out = json.loads(resp.read())
            assert resp.status == 200
            assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
        times.append(time.perf_counter() - t0)
        assert out["object"] == "chat.completion" and out["usage"]["completion_tokens"] > 0
    print(f"32-token chat completion through the TLS front and the gateway: median "
          f"{statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
    host, port = front.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
        assert tls.version() == "TLSv1.3"
    old = ssl.create_default_context(cafile=str(CA))
    old.check_hostname = False
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        with socket.create_connection((host, int(port)), timeout=10) as raw, old.wrap_socket(raw):
            pass
    with pytest.raises(OSError):
        socket.create_connection((host, 8000), timeout=3).close()


def test_the_openai_sdk_works_against_the_lab(lab, docker_client):
    """An application changes the base URL and the key, nothing else: completion, an alias, a stream
    with include_usage, max_tokens ending in `length`, the model list."""
    client = _sdk(docker_client, USER_KEY)
    names = {m.id for m in client.models.list().data}
    assert {"deepseek", "deepseek-chat", "deepseek-reasoner"} <= names, names
    done = client.chat.completions.create(model="deepseek-reasoner", max_tokens=8,
                                          messages=[{"role": "system", "content": "Be brief."},
                                                    {"role": "user", "content": "Hello"}])
    assert done.choices[0].finish_reason in ("stop", "length")
    assert done.usage.prompt_tokens > 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens
    chunks = list(client.chat.completions.create(model="deepseek-chat", max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "Stream, please."}]))
    assert len(chunks) >= 2
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes and finishes[-1] in ("stop", "length")
    one = client.chat.completions.create(model="deepseek-chat", max_tokens=1,
                                         messages=[{"role": "user", "content": "Count to one hundred."}])
    assert one.usage.completion_tokens == 1 and one.choices[0].finish_reason == "length"


def _chat(docker_client, key: str, content: str, **extra) -> tuple[int, dict, dict]:
    """One non-streaming chat completion through the front: status, headers (lower-case), body. A
    429 (the key's bucket, which the tests before may have emptied) is waited out as its
    Retry-After says, as a client does."""
    body = json.dumps({"model": "deepseek-chat", "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": content}], **extra}).encode()
    for _ in range(30):
        req = urllib.request.Request(f"https://{_front(docker_client)}/v1/chat/completions", data=body,
                                     method="POST", headers={"Authorization": f"Bearer {key}",
                                                             "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=_tls_context(), timeout=120) as resp:
                return resp.status, {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            headers = {k.lower(): v for k, v in e.headers.items()}
            if e.code != 429:
                return e.code, headers, json.loads(e.read())
            time.sleep(float(headers.get("retry-after", "1")))
    raise AssertionError("still 429 after 30 waits for the key's bucket")


GATEWAY_CLI = "/opt/gpuprov/gateway/venv/bin/gpuprov-gateway"
AUDIT_DIR = "/var/log/gpuprov-gateway"


def test_the_cache_and_the_audit_log_in_front_of_the_real_triton(lab, docker_client):
    """A repeated temperature-0 request is answered from the cache (the same answer, header `hit`),
    the same request with another key is not (no answer crosses keys); the audit log on the host
    has a line for each with the key's id and never the key or the prompt, its hash chain verifies,
    and a copy with one edited line is found broken at that line."""
    prompt = f"Cache me {time.time_ns()}"
    first = _chat(docker_client, USER_KEY, prompt)
    again = _chat(docker_client, USER_KEY, prompt)
    other = _chat(docker_client, CHAT_ONLY_KEY, prompt)
    assert [r[0] for r in (first, again, other)] == [200, 200, 200]
    assert [r[1]["x-cache"] for r in (first, again, other)] == ["miss", "hit", "miss"]
    assert again[2]["choices"][0]["message"] == first[2]["choices"][0]["message"]
    # Which backend answered: the local Triton for the first, none for the cached one.
    assert first[1].get("x-backend") and "x-backend" not in again[1]
    ids = [r[1]["x-request-id"] for r in (first, again, other)]

    gpu = docker_client.containers.get(HOST)
    rc, out = _sh(gpu, f"cat {AUDIT_DIR}/audit-*.jsonl", want_output=True)
    assert rc == 0, out
    lines = {json.loads(ln)["request_id"]: json.loads(ln) for ln in out.splitlines() if ln.strip()}
    assert all(i in lines for i in ids), (ids, len(lines), out.splitlines()[-4:])
    assert [lines[i]["key_id"] for i in ids] == ["lab-user", "lab-user", "lab-chat-only"]
    assert [lines[i]["cache_hit"] for i in ids] == [False, True, False]
    assert [lines[i]["backend"] for i in ids] == [first[1]["x-backend"], "cache", other[1]["x-backend"]]
    assert all(lines[i]["status"] == 200 and lines[i]["model"] for i in ids)
    assert USER_KEY not in out and CHAT_ONLY_KEY not in out and prompt not in out
    rc, out = _sh(gpu, f"stat -c '%a' {AUDIT_DIR}/audit-*.jsonl", want_output=True)
    assert rc == 0 and set(out.split()) == {"640"}, out
    rc, out = _sh(gpu, f"{GATEWAY_CLI} audit-verify {AUDIT_DIR}", want_output=True)
    assert rc == 0 and "audit log OK" in out, out
    # One edited line in a copy (the live log stays as it is): the check names where it breaks.
    rc, out = _sh(gpu, f"rm -rf /tmp/audit-copy && cp -a {AUDIT_DIR} /tmp/audit-copy && "
                       f"sed -i 's/\"lab-chat-only\"/\"lab-admin\"/' /tmp/audit-copy/audit-*.jsonl && "
                       f"{GATEWAY_CLI} audit-verify /tmp/audit-copy; rc=$?; rm -rf /tmp/audit-copy; exit $rc",
                   want_output=True)
    assert rc == 1 and "audit log BROKEN at" in out, out


def test_the_gateway_refuses_without_a_key_and_outside_a_keys_models(lab, docker_client):
    import openai

    with pytest.raises(openai.AuthenticationError):
        _sdk(docker_client, "not-a-key-of-this-lab").chat.completions.create(
            model="deepseek-chat", messages=[{"role": "user", "content": "Hello"}])
    with pytest.raises(openai.PermissionDeniedError):
        _sdk(docker_client, CHAT_ONLY_KEY).chat.completions.create(
            model="deepseek-reasoner", messages=[{"role": "user", "content": "Hello"}])


def test_a_10_mb_body_is_refused_at_the_front_and_the_gateway_keeps_serving(lab, docker_client):
    """The front's body limit (8 MB) answers 413 before the gateway sees the request: a 10 MB
    request body with a valid key; the next request is served."""
    import http.client

    host, port = _front(docker_client).split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=_tls_context(), timeout=60)
    body = json.dumps({"model": "deepseek-chat", "messages": [{"role": "user", "content": "x" * (10 << 20)}]})
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Authorization": f"Bearer {USER_KEY}", "Content-Type": "application/json"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException):  # a broken pipe or reset, an SSL EOF
        # nginx may answer and close while the body is still being sent: read what it said.
        conn.close()
        conn = http.client.HTTPSConnection(host, int(port), context=_tls_context(), timeout=60)
        conn.putrequest("POST", "/v1/chat/completions")
        for k, v in (("Authorization", f"Bearer {USER_KEY}"), ("Content-Type", "application/json"),
                     ("Content-Length", str(len(body)))):
            conn.putheader(k, v)
        conn.endheaders()
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status == 413
    ok = _sdk(docker_client, USER_KEY).chat.completions.create(
        model="deepseek-chat", max_tokens=4, messages=[{"role": "user", "content": "Still there?"}])
    assert ok.usage.completion_tokens > 0


def test_tritons_own_routes_are_refused_at_the_front(lab, docker_client):
    """Clients reach /v1/ and Triton's readiness only: its statistics, configuration, shared memory,
    logging and generate routes answer 403 at the front (on the host, Triton's administrative ones
    also need its administrator's key)."""
    front, ctx = _front(docker_client), _tls_context()

    def status(path: str, method: str = "GET", body: bytes | None = None) -> int:
        req = urllib.request.Request(f"https://{front}{path}", data=body, method=method)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status("/v2/health/ready") == 200
    refused = {p: status(p, m, b) for p, m, b in [
        ("/v2/models/stats", "GET", None), ("/v2/models/deepseek/config", "GET", None),
        ("/v2/systemsharedmemory/status", "GET", None), ("/v2/logging", "POST", b'{"log_verbose_level": 1}'),
        ("/v2/models/deepseek/generate", "POST", b'{"text_input": "x"}')]}
    assert refused == {p: 403 for p in refused}


def test_lab_monitoring_sees_every_target(lab, docker_client):
    mon = docker_client.containers.get(MON)
    deadline = time.time() + 120
    health: dict[str, list[str]] = {}
    while time.time() < deadline:
        _, out = _exec(mon, ["curl", "-sS", "http://127.0.0.1:9090/api/v1/targets"], want_output=True)
        health = {}
        for t in json.loads(out)["data"]["activeTargets"]:
            health.setdefault(t["labels"]["job"], []).append(t["health"])
        if health and all(h == ["up"] for h in health.values()):
            break
        time.sleep(5)
    assert health == {"prometheus": ["up"], "node": ["up"], "triton": ["up"], "gateway": ["up"], "triton_ready": ["up"]}
    # No GPU exporter target: the gpu fact shows no GPU on the lab host, and the role says so.
    _, gpu_targets = _exec(mon, ["cat", "/etc/prometheus/file_sd/gpu.yml"], want_output=True)
    assert gpu_targets.decode().strip().endswith("[]")


def _ip(container) -> str:
    return container.attrs["NetworkSettings"]["Networks"]["gpuprov-lab"]["IPAddress"]


def _sh(container, script: str, *, want_output: bool = False) -> tuple[int, str]:
    """A shell script in the container; `want_output`: a read whose empty output is Docker's fault
    (run again, as `_exec` does), never the answer."""
    rc, out = _exec(container, ["sh", "-c", script], want_output=want_output)
    return rc, out.decode()


def _tcp_from_here(ip: str, port: int) -> str:
    """`open`, `refused`, or `dropped` (no answer within 3 s: the firewall's drop policy)."""
    try:
        socket.create_connection((ip, port), timeout=3).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "dropped"


@pytest.fixture(scope="module")
def outsider(lab, docker_client):
    """A container on the lab network that is neither the controller nor a monitoring host."""
    import docker.errors

    name = "gpuprov-lab-test-outsider"
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.containers.get(name).remove(force=True)
    c = docker_client.containers.run("gpuprov/debian12-systemd:latest", ["sleep", "infinity"], name=name,
                                     detach=True, network="gpuprov-lab", auto_remove=False)
    c.reload()
    yield c
    c.remove(force=True)


def _curl_code(container, url: str) -> int:
    """curl's exit status from inside `container` (28: timed out, the packet was dropped)."""
    rc, _ = _sh(container, f"curl -sk -o /dev/null --connect-timeout 3 --max-time 10 {url}")
    return rc


def _firewall_holds(docker_client, outsider) -> None:
    gpu, mon = docker_client.containers.get(HOST), docker_client.containers.get(MON)
    ip = _ip(gpu)
    metrics = (8002, 9100, 9108)  # Triton's, the node exporter's and the gateway's /metrics
    # This machine (the lab's one API client and its administrator): the API and SSH answer, the
    # metrics ports are dropped.
    assert _tcp_from_here(ip, 8443) == "open"
    assert _tcp_from_here(ip, 22) == "open"
    assert {p: _tcp_from_here(ip, p) for p in metrics} == dict.fromkeys(metrics, "dropped")
    # The monitoring host reaches the metrics ports.
    assert {p: _curl_code(mon, f"http://{ip}:{p}/metrics") for p in metrics} == dict.fromkeys(metrics, 0)
    # Another container on the same network: every port dropped, not refused.
    assert {p: _curl_code(outsider, f"https://{ip}:{p}/") for p in (8443, 8444)} == {8443: 28, 8444: 28}
    assert {p: _curl_code(outsider, f"http://{ip}:{p}/metrics") for p in metrics} == dict.fromkeys(metrics, 28)
    # SSH from the outsider: no answer (timeout's 124), where this machine's connection opens.
    assert _sh(outsider, f"timeout 3 bash -c '</dev/tcp/{ip}/22'")[0] == 124


def test_the_firewall_lets_in_the_controller_and_monitoring_only(lab, docker_client, outsider):
    _firewall_holds(docker_client, outsider)


def test_the_firewall_survives_an_nftables_restart(lab, docker_client, outsider):
    """Debian's nftables.service flushes the whole ruleset; gpuprov's unit (PartOf it) loads its
    table again, and a restart of gpuprov's own unit keeps the rules."""
    gpu = docker_client.containers.get(HOST)
    assert _sh(gpu, "systemctl restart nftables")[0] == 0
    deadline = time.time() + 15
    while time.time() < deadline and "table inet gpuprov" not in _sh(gpu, "nft list tables")[1]:
        time.sleep(0.5)
    assert "table inet gpuprov" in _sh(gpu, "nft list tables", want_output=True)[1]
    _firewall_holds(docker_client, outsider)
    assert _sh(gpu, "systemctl restart gpuprov-firewall")[0] == 0
    _firewall_holds(docker_client, outsider)


def test_the_monitoring_host_lets_in_the_controller_only(lab, docker_client, outsider):
    """Prometheus's UI and API have no authentication: the monitoring host's firewall lets this
    machine (the lab's administrator) in and drops another container on the network."""
    mon = docker_client.containers.get(MON)
    ip = _ip(mon)
    assert "table inet gpuprov" in _sh(mon, "nft list tables", want_output=True)[1]
    assert _tcp_from_here(ip, 9090) == "open"
    assert _curl_code(outsider, f"http://{ip}:9090/api/v1/targets") == 28
    # Prometheus starts only once the table is loaded (the fail-closed drop-in).
    rc, out = _sh(mon, "systemctl cat prometheus", want_output=True)
    assert rc == 0 and "nft list table inet gpuprov" in out, out


def test_triton_listens_on_loopback_only(lab, docker_client):
    gpu = docker_client.containers.get(HOST)
    rc, out = _sh(gpu, "ss -ltnH", want_output=True)
    assert rc == 0
    listening = {line.split()[3] for line in out.splitlines()}
    assert "127.0.0.1:8000" in listening and "127.0.0.1:8001" in listening, listening
    assert not {a for a in listening if a.endswith((":8000", ":8001")) and not a.startswith("127.0.0.1:")}


def test_the_grpc_port_is_closed_by_default(lab, docker_client):
    """Triton's gRPC API through the front would be all of it, unfiltered and without a key: off
    unless tls_front_grpc_enabled, so nginx has no such port and the firewall drops it."""
    gpu = docker_client.containers.get(HOST)
    assert _tcp_from_here(_ip(gpu), 8444) == "dropped"
    _, out = _sh(gpu, "ss -ltnH", want_output=True)
    assert not [line for line in out.splitlines() if line.split()[3].endswith(":8444")]


def test_the_hosts_certificate_names_it_and_its_key_is_private(lab, docker_client):
    gpu = docker_client.containers.get(HOST)
    rc, text = _sh(gpu, "openssl x509 -in /etc/gpuprov/tls/server.crt -noout -ext subjectAltName",
                   want_output=True)
    assert rc == 0, text
    assert f"IP Address:{_ip(gpu)}" in text and f"DNS:{HOST}" in text
    _, mode = _sh(gpu, "stat -c '%a %U' /etc/gpuprov/tls/server.key", want_output=True)
    assert mode.split() == ["600", "root"]


GPU_HOST_CHECKS = [
    "Triton: service active", "Triton: model ready", "Triton: generate answers",
    "Gateway: service active", "Gateway: ready", "Gateway: a request without a key is refused (401)",
    "Gateway: an authenticated completion answers", "TLS front: Triton's own routes refused",
    "TLS front: nginx active", "TLS front: HTTPS with a verified certificate, Triton ready behind it",
    "TLS front: TLS 1.2 refused", "Firewall: table loaded, input dropped by default", "Firewall: loaded at boot",
    "Node exporter: service active", "Node exporter: metrics served",
    "GPU exporter: running where the gpu fact shows GPUs",
]
MON_CHECKS = ["Prometheus: ready", "Prometheus: every target up", "Prometheus: gpuprov's alerts loaded",
              "Prometheus: no alert firing"]
GPU_DRIVER_CHECK = "GPU driver: nvidia-smi sees every NVIDIA GPU on the PCI bus (hosts with NVIDIA GPUs)"


def test_verify_passes_on_the_lab_and_finds_a_stopped_front(lab, docker_client):
    out = run_gpuprov("verify", timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    print(out.stdout)
    rows = verify_rows(out.stdout)
    assert {c: rows[(HOST, c)][0] for c in GPU_HOST_CHECKS} == {c: "pass" for c in GPU_HOST_CHECKS}
    assert {c: rows[(MON, c)][0] for c in MON_CHECKS} == {c: "pass" for c in MON_CHECKS}
    # A container has no NVIDIA GPU: the hardware check is not applicable, and says so.
    assert rows[(HOST, GPU_DRIVER_CHECK)] == ("skip", "not applicable on this host")
    assert "not deployed: the gpu fact shows 0 GPU(s)" in rows[(HOST, GPU_HOST_CHECKS[-1])][1]
    assert "16 tokens asked" in rows[(HOST, "Triton: generate answers")][1]

    host = docker_client.containers.get(HOST)
    assert _exec(host, ["systemctl", "stop", "nginx"])[0] == 0
    try:
        broken = run_gpuprov("verify", "--limit", HOST, timeout=600)
    finally:
        assert _exec(host, ["systemctl", "start", "nginx"])[0] == 0
    assert broken.returncode == 1, broken.stdout[-3000:]
    rows = verify_rows(broken.stdout)
    assert rows[(HOST, "TLS front: nginx active")] == ("FAIL", "nginx is inactive")
    assert rows[(HOST, "TLS front: HTTPS with a verified certificate, Triton ready behind it")][0] == "FAIL"
    assert rows[(HOST, "Triton: generate answers")][0] == "pass"


def _since(stamp: str) -> float:
    """Prometheus's RFC 3339 UTC time (nanoseconds and all) as a Unix time, to the second."""
    return datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


def _alerts(mon) -> list[dict]:
    rc, out = _exec(mon, ["curl", "-sS", "http://127.0.0.1:9090/api/v1/alerts"], want_output=True)
    assert rc == 0, f"Prometheus's alerts API: curl exit {rc}: {out[:300]!r}"
    return json.loads(out)["data"]["alerts"]


def _active(mon, name: str) -> list[dict]:
    """The alerts of that name Prometheus has pending or firing."""
    return [a for a in _alerts(mon) if a["labels"]["alertname"] == name]


def _firing(mon, since: float = 0.0) -> list[str]:
    """Names of the alerts firing that became active at `since` or later."""
    return [a["labels"]["alertname"] for a in _alerts(mon) if a["state"] == "firing" and _since(a["activeAt"]) >= since]


def test_a_stopped_triton_fires_its_alert_and_verify_reports_it(lab, docker_client):
    """The last lab test (it leaves alerts that take a while to resolve): Triton stopped, the API
    answers 503 with Retry-After, Prometheus fires TritonNotReady and GatewayBackendUnavailable (the
    lab's default windows: 15 s scrapes, 60 s) and, while requests keep failing, GatewaySuccessRateLow;
    `gpuprov verify` on the monitoring host reports Triton's (the alert's summary)."""
    gpu, mon = docker_client.containers.get(HOST), docker_client.containers.get(MON)
    # Only an alert that became active after the stop counts: the verify test before this one
    # stopped nginx, which Prometheus may have seen as Triton not ready, so first wait until no
    # TritonNotReady is pending or firing.
    deadline = time.time() + 120
    while time.time() < deadline and any(a["labels"]["alertname"] == "TritonNotReady" for a in _alerts(mon)):
        time.sleep(3)
    assert not any(a["labels"]["alertname"] == "TritonNotReady" for a in _alerts(mon))
    stopped = time.time() - 2
    assert _sh(gpu, "systemctl stop gpuprov-triton")[0] == 0
    # A clean stop: no idle connection (the front's keep-alive to Triton) held Triton until its exit
    # timeout, after which it exits with status 1 and the unit's result is "exit-code".
    result = _sh(gpu, "systemctl show -p Result -p ExecMainStatus gpuprov-triton", want_output=True)[1]
    assert "Result=success" in result, result + _sh(gpu, "journalctl -n 5 -u gpuprov-triton")[1]
    try:
        # The API while nothing can serve (the cloud fallback is off): 503 with Retry-After and an
        # error in OpenAI's shape, never an answer; the second failure opens the gateway's breaker
        # for the local Triton, and with no request after it the breaker stays open.
        for n in range(2):
            status, headers, body = _chat(docker_client, USER_KEY, f"Anyone there? {n} {time.time_ns()}")
            assert status == 503 and int(headers["retry-after"]) >= 1, (status, headers, body)
            assert body["error"]["code"] == "no_backend" and "choices" not in body, body
        # Prometheus fires the seed's not-ready alert and the gateway's open-breaker alert (the
        # lab's default windows: 15 s scrapes, 60 s).
        want = {"TritonNotReady", "GatewayBackendUnavailable"}
        deadline = time.time() + 300
        firing: list[str] = []
        while time.time() < deadline and not want <= set(firing):
            time.sleep(5)
            firing = _firing(mon, since=stopped)
        assert want <= set(firing), firing
        # The seed's success rate as applications see it: every answer a 5xx while nothing can
        # serve (one request every 1.5 s, below the key's refill rate, so none is a 429) until
        # GatewaySuccessRateLow fires (the lab's window: 60 s; the ratio over 5 minutes, so the
        # answers that succeeded before the stop count against it for a while). Only now: a
        # request lets the breaker probe Triton, and a scrape in that moment would reset the
        # open-breaker alert's window.
        deadline = time.time() + 480
        while time.time() < deadline and "GatewaySuccessRateLow" not in firing:
            status, _, body = _chat(docker_client, USER_KEY, f"Still nobody? {time.time_ns()}")
            assert status == 503 and body["error"]["code"] == "no_backend", (status, body)
            time.sleep(1.5)
            firing = _firing(mon, since=stopped)
        assert "GatewaySuccessRateLow" in firing, firing
        out = run_gpuprov("verify", "--limit", MON, timeout=600)
        assert out.returncode == 1, out.stdout[-3000:]
        result, found = verify_rows(out.stdout)[(MON, "Prometheus: no alert firing")]
        assert result == "FAIL" and "TritonNotReady" in found, found
    finally:
        assert _sh(gpu, "systemctl start gpuprov-triton")[0] == 0
        rc, _ = _sh(gpu, "for i in $(seq 1 180); do curl -sf http://127.0.0.1:8000/v2/health/ready && exit 0;"
                         " sleep 2; done; exit 1")
        assert rc == 0
