"""triton (native) on Debian 12, CPU, serving tiny-deepseek: ready; generate returns text;
generate_stream streams several chunks; 16 concurrent requests all succeed and are batched;
nv_inference_* metrics and the model's time-to-first-token and time-per-token histograms; kill -9 is
followed by a restart and readiness; a killed Python-backend stub
(Triton stays "ready" while every request fails) is found by the canary and Triton restarted, and a
Triton stopped on purpose stays stopped; the unit is hardened and
runs unprivileged; Triton's administrative APIs answer 403 without the root-only key; zero changes
in check mode. Debian 13 is refused with the numpy message; bad
input fails before any change."""

import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from gpuprov_molecule import (
    EXPOSURE_LIMIT,
    assert_a_lost_restart_is_drift_and_applied,
    assert_fails_before_any_change,
    assert_no_changes_in_check_mode,
    assert_role_verify,
    exposure,
    failed_tasks,
    host_in,
    instance,
    journal_since,
    run_role,
)

from gpuprov.verify import PASS

# The scenario's Debian 12 and 13 hosts (the shared platforms, named after the scenario run).
D12, D13 = host_in("debian12"), host_in("debian13")

testinfra_hosts = [f"ansible://debian12?ansible_inventory={os.environ.get('MOLECULE_INVENTORY_FILE', '')}"]
API = "http://127.0.0.1:8000/v2/models/deepseek"
# Triton's units, whose journal goes with a failure that may come from a restart.
TRITON_UNITS = ("gpuprov-triton", "gpuprov-triton-canary.service", "gpuprov-triton-canary.timer",
                "gpuprov-triton-recover.service")
# The gpu fact as recorded on the device machine's H200.
H200 = json.loads((Path(__file__).resolve().parents[5] / "tests/fixtures/gpu/h200-x1.expected.json").read_text())
# n requests at once: each thread connects first, and all send together (a barrier), so they reach
# Triton within its batching delay however slowly the threads start. A refused or broken connection
# (a Triton restarting) is status -1.
PY = r"""
import http.client, json, sys, threading, time, urllib.parse, concurrent.futures as cf
url, body, n = urllib.parse.urlsplit(sys.argv[1]), sys.argv[2], int(sys.argv[3])
together = threading.Barrier(n)
def one(i):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        conn.connect()
    except OSError as e:
        together.abort()
        return -1, repr(e), 0.0
    try:
        together.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass
    t = time.monotonic()
    try:
        conn.request("POST", url.path, body=body.replace("{i}", str(i)).encode())
        r = conn.getresponse()
        return r.status, r.read().decode(), time.monotonic() - t
    except (OSError, http.client.HTTPException) as e:
        return -1, repr(e), time.monotonic() - t
    finally:
        conn.close()
with cf.ThreadPoolExecutor(n) as ex:
    print(json.dumps(list(ex.map(one, range(n)))))
"""


def _post(host, path, body, n=1):
    return json.loads(host.check_output("python3 -c %s %s %s %s", PY, f"{API}/{path}", json.dumps(body), str(n)))


def _ready(host, timeout=360):
    """Triton ready within timeout s: a cold start (torch, the stub, the model) on a loaded machine
    is given what the role gives it (triton_ready_timeout, 300 s) and a stop (60 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run("python3 -c %s",
                    "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready')").rc == 0:
            return True
        time.sleep(2)
    return False


def test_ready_and_unprivileged(host):
    assert _ready(host)
    svc = host.service("gpuprov-triton")
    assert svc.is_enabled and svc.is_running
    assert host.check_output("systemctl show -p User --value gpuprov-triton") == "triton"
    assert host.check_output("ps -o user= -C tritonserver").split()[0] == "triton"
    props = host.check_output(
        "systemctl show -p NoNewPrivileges -p ProtectSystem -p CapabilityBoundingSet gpuprov-triton")
    assert "NoNewPrivileges=yes" in props and "ProtectSystem=strict" in props


def test_listens_where_configured(host):
    assert host.socket("tcp://127.0.0.1:8000").is_listening
    assert host.socket("tcp://127.0.0.1:8001").is_listening
    assert host.socket("tcp://0.0.0.0:8002").is_listening
    assert not host.socket("tcp://0.0.0.0:8000").is_listening


ADMIN = r"""
import json, sys, urllib.error, urllib.request

method, path, header = sys.argv[1], sys.argv[2], sys.argv[3:]
req = urllib.request.Request("http://127.0.0.1:8000" + path, method=method,
                             data=b'{"log_verbose_level": 1}' if method == "POST" else None)
if header:
    req.add_header(header[0], header[1])
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


def _admin_call(host, method, path, key=None):
    args = [method, path] + (["gpuprov-admin", key] if key else [])
    return json.loads(host.check_output("python3 -c %s" + " %s" * len(args), ADMIN, *args))


def _admin_key(host) -> str:
    return host.file("/etc/gpuprov/triton-admin.env").content_string.strip().split("=", 1)[1]


def test_tritons_own_apis_need_the_administrators_key(host):
    """Logging, trace, statistics, model configuration and repository, shared memory: refused
    without the header and key (Triton's restricted-API options), also from root on the host;
    with the root-only key they answer. Health and inference stay open to the gateway."""
    key_file = host.file("/etc/gpuprov/triton-admin.env")
    assert key_file.user == "root" and key_file.mode == 0o600
    key = _admin_key(host)
    assert re.fullmatch(r"[0-9a-fA-F]{64}", key)
    unit = host.file("/etc/systemd/system/gpuprov-triton.service").content_string
    assert key not in unit and "EnvironmentFile=/etc/gpuprov/triton-admin.env" in unit
    for method, path in (("POST", "/v2/logging"), ("GET", "/v2/logging"), ("GET", "/v2/trace/setting"),
                         ("GET", "/v2/models/stats"), ("GET", "/v2/models/deepseek/config"),
                         ("POST", "/v2/repository/index"), ("GET", "/v2/systemsharedmemory/status")):
        status, body = _admin_call(host, method, path)
        assert status == 403 and "gpuprov-admin" in body, (method, path, status, body)
        status, body = _admin_call(host, method, path, key="0" * 64)
        assert status == 403, (method, path, status, body)
    status, body = _admin_call(host, "GET", "/v2/logging", key=key)
    assert status == 200 and json.loads(body)["log_verbose_level"] == 0, body
    assert _admin_call(host, "GET", "/v2/models/stats", key=key)[0] == 200
    assert _admin_call(host, "GET", "/v2/health/ready")[0] == 200
    assert _post(host, "generate", {"text_input": "hello", "max_tokens": 2})[0][0] == 200


def test_the_units_exposure_is_within_the_readmes_limit(host):
    for unit in ("gpuprov-triton.service", "gpuprov-triton-canary.service"):
        assert exposure(host, unit) <= EXPOSURE_LIMIT, unit


def test_the_python_backend_stub_is_roots_and_not_writable_by_the_service(host):
    """Every model instance runs the stub: the service must not be able to rewrite it. Root's, 0755,
    and still so once Triton has loaded the model under its unit (the backend chmods it only when it
    cannot run), with nothing of it writable for the triton user."""
    stub = host.check_output("find /opt/gpuprov/triton/venv -path '*backends/python/triton_python_backend_stub'")
    f = host.file(stub)
    assert (f.user, f.group, f.mode) == ("root", "root", 0o755)
    ready = host.run(f"python3 -c \"import urllib.request as u; print(u.urlopen('{API}/ready').status)\"")
    assert ready.stdout.strip() == "200", ready.stderr
    assert (host.file(stub).user, host.file(stub).mode) == ("root", 0o755)
    assert host.run(f"runuser -u triton -- test -w {stub}").rc != 0
    assert "ReadWritePaths" not in host.file("/etc/systemd/system/gpuprov-triton.service").content_string


def test_the_administrators_key_is_not_readable_by_other_users(host):
    """The key is on tritonserver's command line (Triton takes it no other way): root reads it
    there, another local user cannot see the process at all (base's /proc hidepid)."""
    key = _admin_key(host)
    pid = host.check_output("systemctl show --property=MainPID --value gpuprov-triton")
    assert int(pid) > 0
    assert key in host.file(f"/proc/{pid}/cmdline").content_string
    other = host.run("setpriv --reuid=nobody --regid=nogroup --clear-groups"
                     f" sh -c 'cat /proc/{pid}/cmdline; ps -eo args'")
    assert key not in other.stdout and "tritonserver" not in other.stdout, other.stdout


def test_generate_returns_text(host):
    [(status, body, seconds)] = _post(host, "generate", {"text_input": "What is Triton?", "max_tokens": 32})
    assert status == 200
    out = json.loads(body)
    assert out["model_name"] == "deepseek" and len(out["text_output"]) > 0
    print(f"one 32-token generate on the CPU: {seconds * 1000:.0f} ms")


def test_generate_stream_sends_several_chunks(host):
    # 256 tokens: a generation that outlasts several of the sender's rounds (it merges the tokens
    # that are ready into one response) however the machine's load spaces them.
    [(status, body, _)] = _post(host, "generate_stream", {"text_input": "Hello", "max_tokens": 256, "stream": True})
    assert status == 200
    chunks = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
    assert len(chunks) >= 3, body
    assert all("text_output" in c for c in chunks), body


def test_stop_words_and_limits(host):
    [(_, body, _)] = _post(host, "generate", {"text_input": "Hello", "max_tokens": 64, "stop_words": ["e"]})
    assert "e" not in json.loads(body)["text_output"]
    [(status, body, _)] = _post(host, "generate", {"text_input": "x", "max_tokens": 0})
    assert status == 400 and "max_tokens must be 1..4096" in body


def test_sixteen_concurrent_requests_are_batched(host):
    results = _post(host, "generate", {"text_input": "question {i}", "max_tokens": 16}, n=16)
    assert [s for s, _, _ in results] == [200] * 16
    # Triton's statistics are an administrator's API: read with the root-only key.
    status, body = _admin_call(host, "GET", "/v2/models/deepseek/stats", key=_admin_key(host))
    assert status == 200, body
    stats = json.loads(body)["model_stats"][0]
    sizes = [b["batch_size"] for b in stats["batch_stats"]]
    assert max(sizes) > 1, stats["batch_stats"]


def _samples(metrics: str, name: str) -> dict[frozenset, float]:
    """{labels: value} of one metric in Prometheus' text format."""
    out = {}
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", metrics, re.M):
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        out[labels] = float(m.group(2))
    return out


def test_metrics(host):
    metrics = host.check_output("python3 -c %s", "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8002/metrics').read().decode())")
    assert 'nv_inference_request_success{model="deepseek",version="1"}' in metrics
    assert "nv_inference_queue_duration_us" in metrics
    # The model's own latency histograms (the alert rules read them): every request answered so far
    # (19 generated at least one token; the max_tokens 0 one was refused) has its first token counted.
    model = frozenset({("model", "deepseek")})
    [count] = _samples(metrics, "gpuprov_time_to_first_token_seconds_count").values()
    assert count >= 19
    buckets = {dict(k)["le"]: v for k, v in _samples(metrics, "gpuprov_time_to_first_token_seconds_bucket").items()}
    assert buckets["+Inf"] == count
    finite = [buckets[le] for le in sorted((le for le in buckets if le != "+Inf"), key=float)]
    assert finite == sorted(finite) and finite[-1] <= count
    assert _samples(metrics, "gpuprov_time_to_first_token_seconds_sum")[model] > 0
    assert _samples(metrics, "gpuprov_time_per_output_token_seconds_count")[model] > 0
    assert _samples(metrics, "gpuprov_time_per_output_token_seconds_sum")[model] > 0


def test_a_zero_changes_in_check_mode(host):
    """The drift check on the converged host, before the tests below kill and stop Triton (a restart
    under way is a service not running, which check mode rightly reports)."""
    assert _ready(host)
    assert host.service("gpuprov-triton-canary.timer").is_running
    assert_no_changes_in_check_mode(units=TRITON_UNITS)


def test_the_roles_own_verify_passes(host):
    """The role's own checks (tasks/verify.yml: what `gpuprov verify` runs on a lab or fleet) with
    the scenario's settings, on the converged host, before the tests below kill, stop and restart
    Triton. It takes `host` for that order: pytest runs the tests of a module-scoped parametrised
    fixture (testinfra's `host`) together and moved this one, without it, after all of them, where it
    ran right after the lost-restart test's restart."""
    assert _ready(host)
    assert_role_verify("triton", [D12], {
        "Triton: service active": PASS,
        "Triton: model ready": PASS,
        "Triton: generate answers": PASS,
    })


def test_killed_server_comes_back(host):
    pid = host.check_output("systemctl show -p MainPID --value gpuprov-triton")
    host.check_output(f"kill -9 {pid}")
    time.sleep(1)
    assert _ready(host)
    assert host.check_output("systemctl show -p MainPID --value gpuprov-triton") != pid
    assert host.check_output("systemctl show -p NRestarts --value gpuprov-triton") != "0"


def _main_pid(host):
    return host.check_output("systemctl show -p MainPID --value gpuprov-triton")


def test_a_dead_stub_is_found_by_the_canary_and_triton_restarted(host):
    """The defect: with the stub killed, Triton still answers ready and every generate fails. The
    canary (every 10 s here) sees two failed generates 5 s apart and restarts Triton."""
    assert _ready(host)
    assert host.service("gpuprov-triton-canary.timer").is_running
    pid = _main_pid(host)
    since = float(host.check_output("date +%s"))
    # "[t]riton...": the pattern does not match the shell that runs pkill (its command line holds "[t]")
    assert host.run("pkill -KILL -f '[t]riton_python_backend_stub'").rc == 0
    time.sleep(1)
    [(status, body, _)] = _post(host, "generate", {"text_input": "hello", "max_tokens": 2})
    restarted = _main_pid(host) != pid
    assert status != 200 or restarted, body  # failing, unless the canary was already at work
    # The canary's period and retry, stopping a Triton whose stub is dead, and a cold start.
    deadline = time.monotonic() + 600
    ok = False
    while time.monotonic() < deadline and not ok:
        time.sleep(3)
        if _main_pid(host) != pid and _ready(host, timeout=5):
            [(status, _, _)] = _post(host, "generate", {"text_input": "hello", "max_tokens": 2})
            ok = status == 200
    assert ok, ("Triton was not restarted and serving within 600 s of the stub's death\n"
                + journal_since(D12, TRITON_UNITS, since))
    journal = host.check_output("journalctl -u gpuprov-triton-canary.service --no-pager -o cat")
    assert "fails every request; restarting it" in journal
    assert host.service("gpuprov-triton-canary.timer").is_running  # started again with Triton


def test_a_triton_stopped_on_purpose_stays_stopped(host):
    """The timer is bound to Triton: stopping Triton stops it, so nothing restarts a server that an
    operator (or the lab's alert test) stopped."""
    assert _ready(host)
    host.check_output("systemctl stop gpuprov-triton")
    try:
        assert not host.service("gpuprov-triton-canary.timer").is_running
        time.sleep(25)  # two and a half canary periods
        # nothing started it again ("failed" when tritonserver's exit at the stop was not clean)
        assert host.check_output("systemctl is-active gpuprov-triton || true") in ("inactive", "failed")
    finally:
        host.check_output("systemctl start gpuprov-triton")
    assert _ready(host)
    assert host.service("gpuprov-triton-canary.timer").is_running


def test_a_triton_started_again_stays_up(host):
    """After the start above, no restart follows over three canary periods: nothing (the canary, a
    crash) takes down a server that was just started and is ready. Stop 27's landing saw Triton not
    running about a minute after that start; its journal goes with a failure here."""
    assert _ready(host)
    since = float(host.check_output("date +%s"))
    before = host.check_output("systemctl show -p MainPID -p NRestarts --value gpuprov-triton")
    time.sleep(30)
    after = host.check_output("systemctl show -p MainPID -p NRestarts --value gpuprov-triton")
    active = host.check_output("systemctl is-active gpuprov-triton gpuprov-triton-canary.timer || true")
    ready = _ready(host, timeout=60)
    journal = journal_since(D12, TRITON_UNITS, since)
    assert (after, active, ready) == (before, "active\nactive", True), journal


def test_a_lost_restart_is_drift_and_the_next_apply_restarts_triton(host):
    """A run that rewrote the model's configuration and failed before its handlers left Triton serving
    the old one: check mode reports the restart (and restarts nothing), the next apply restarts
    Triton, and the check after it is clean (_common's unit_current)."""
    converge = yaml.safe_load((Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]) / "converge.yml").read_text())
    role_vars = next(r["vars"] for r in converge[0]["roles"] if r["role"] == "triton")
    assert _ready(host)
    assert_a_lost_restart_is_drift_and_applied(D12, "gpuprov-triton.service",
                                               "/var/lib/gpuprov/triton/models/deepseek/config.pbtxt", "triton",
                                               role_vars)
    assert _ready(host)


def test_debian13_is_refused():
    result, events = run_role("triton", {}, pre_roles=("gpu_facts", "models"), limit=D13)
    failures = failed_tasks(events)
    assert [t for _, t, _ in failures] == ["Check the host's Python can run Triton 2.51's Python backend"]
    assert "numpy 1.x has no wheel for Python 3.13" in failures[0][2]
    assert not instance(D13).file("/opt/gpuprov/triton").exists


@pytest.mark.parametrize("extra, task, words", [
    ({"triton_runtime": "vllm"}, "Validating arguments", "triton_runtime"),
    ({"triton_grpc_port": 8000}, "Check the settings", "three different ports"),
    ({"triton_model_path": "/nonexistent"}, "Check the model is in place", "No model at triton_model_path"),
    # The container runtime on a GPU host (the fact as recorded on an H200) without Docker.
    ({"triton_runtime": "container", "ansible_local": {"gpu": H200}, "triton_container_digest": "sha256:" + "ab" * 32},
     "Check Docker has the NVIDIA runtime", "Docker does not answer"),
    # A tag alone does not pin the image a host gets.
    ({"triton_runtime": "container", "ansible_local": {"gpu": H200}},
     "Check the container image is pinned by digest", "needs triton_container_digest"),
    ({"triton_runtime": "container"}, "Check the host has GPUs", "needs NVIDIA GPUs, and the gpu fact shows none"),
])
def test_bad_input_fails_before_any_change(extra, task, words):
    assert_fails_before_any_change("triton", extra, task, words, hosts=1, pre_roles=("gpu_facts", "models"),
                                   limit=D12)
