"""The inference stack as its users meet it: an allowed client talks to the API gateway (and so to
Triton) only over TLS 1.3 through the front, Triton's own routes are refused there, an outsider cannot connect at all, metrics are reachable only from the
monitoring host, and Prometheus scrapes every target and raises the seed's alerts.

Real processes throughout: nginx, nftables, Triton with tiny-deepseek, Prometheus, the blackbox
exporter, curl and openssl as clients, on a private Docker network. Each role's own failure paths
(bad input, refused configurations, renewal) are in its own scenario, roles/<role>/molecule/."""

from __future__ import annotations

import json
import time

from gpuprov_molecule import assert_no_changes_in_check_mode, instance, s_client

GPU, MON, CLIENT, OUTSIDER = (instance(f"gpuprov-stack-{n}") for n in ("gpu", "mon", "client", "outsider"))
CA = "/root/gpuprov-ca.crt"
KEY = "stack-test-user-key-000000000000000000"  # molecule/stack/converge.yml (a throwaway)
CHAT = {"model": "deepseek-chat", "max_tokens": 32, "messages": [{"role": "user", "content": "What is Triton?"}]}


def _ip(host) -> str:
    return host.check_output("hostname -I").split()[0]


GPU_IP = _ip(GPU)
API = f"https://{GPU_IP}:8443/v1/chat/completions"
AUTH = ("-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json")


def _curl(host, url: str, *args: str, data: dict | None = None, timeout: int = 5):
    body = ["--data", json.dumps(data)] if data is not None else []
    cmd = ["curl", "-sS", "--connect-timeout", str(timeout), "--max-time", "120", "--cacert", CA, *args, *body, url]
    return host.run(" ".join(f"'{c}'" for c in cmd))


def _handshake(host, port: int, version: str):
    return s_client(host, f"-connect {GPU_IP}:{port} -{version} -CAfile {CA} -verify_return_error")


def _prometheus(path: str) -> dict:
    return json.loads(MON.check_output(f"curl -sS 'http://127.0.0.1:9090/api/v1/{path}'"))


def test_a_zero_changes_in_check_mode():
    assert_no_changes_in_check_mode()


# --- TLS front ---

def test_allowed_client_completes_over_https_verifying_the_ca():
    out = _curl(CLIENT, API, "-D", "-", *AUTH, data=CHAT)
    assert out.rc == 0, out.stderr
    headers, _, body = out.stdout.partition("\r\n\r\n")
    assert headers.startswith("HTTP/1.1 200"), headers
    assert "Strict-Transport-Security: max-age=63072000" in headers
    answer = json.loads(body)
    assert answer["object"] == "chat.completion" and answer["usage"]["completion_tokens"] > 0


def test_a_stream_through_the_front():
    out = _curl(CLIENT, API, "-N", *AUTH, data={**CHAT, "stream": True})
    assert out.rc == 0, out.stderr
    lines = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]" and len(lines) > 2
    assert all(json.loads(c)["object"] == "chat.completion.chunk" for c in lines[:-1])


def test_no_key_is_refused_and_tritons_routes_stay_inside():
    out = _curl(CLIENT, API, "-o", "/dev/null", "-w", "%{http_code}", "-H", "Content-Type: application/json", data=CHAT)
    assert out.stdout == "401", out.stdout
    for path in ("models/stats", "models/deepseek/config", "systemsharedmemory/status"):
        out = _curl(CLIENT, f"https://{GPU_IP}:8443/v2/{path}", "-o", "/dev/null", "-w", "%{http_code}")
        assert out.stdout == "403", (path, out.stdout)
    out = _curl(CLIENT, f"https://{GPU_IP}:8443/v2/health/ready", "-o", "/dev/null", "-w", "%{http_code}")
    assert out.stdout == "200"


def test_only_tls13_is_spoken():
    ok = _handshake(CLIENT, 8443, "tls1_3")
    assert ok.rc == 0 and "Verify return code: 0 (ok)" in ok.stdout
    assert "TLSv1.3" in ok.stdout
    refused = _handshake(CLIENT, 8443, "tls1_2")
    assert refused.rc != 0
    assert "alert protocol version" in refused.stdout or "no protocols available" in refused.stdout
    grpc = _handshake(CLIENT, 8444, "tls1_2")
    assert grpc.rc != 0


def test_grpc_port_speaks_http2_over_tls13():
    out = s_client(CLIENT, f"-connect {GPU_IP}:8444 -tls1_3 -alpn h2 -CAfile {CA} -verify_return_error")
    assert out.rc == 0 and "ALPN protocol: h2" in out.stdout


def test_certificate_names_and_key_mode():
    text = GPU.check_output("openssl x509 -in /etc/gpuprov/tls/server.crt -noout -text")
    assert f"IP Address:{GPU_IP}" in text and "DNS:gpuprov-stack-gpu" in text
    assert GPU.file("/etc/gpuprov/tls/server.key").mode == 0o600
    assert GPU.file("/etc/gpuprov/tls/server.key").user == "root"


def test_triton_itself_is_not_reachable_from_outside():
    assert GPU.socket("tcp://127.0.0.1:8000").is_listening
    assert not GPU.socket(f"tcp://{GPU_IP}:8000").is_listening
    assert CLIENT.run(f"curl -sS --connect-timeout 3 http://{GPU_IP}:8000/v2/health/ready").rc != 0


# --- firewall ---

def _reaches(host, port: int) -> bool:
    """A TCP connection completes (curl exit 28 is a timeout: the packet was dropped)."""
    out = host.run(f"curl -sS -o /dev/null --connect-timeout 3 http://{GPU_IP}:{port}/")
    return out.rc != 28 and out.rc != 7


def _firewall_holds():
    assert _curl(CLIENT, API, *AUTH, data=CHAT).rc == 0
    denied = _curl(OUTSIDER, API, *AUTH, data=CHAT, timeout=3)
    assert denied.rc == 28, (denied.rc, denied.stderr)  # dropped, not refused
    assert _reaches(MON, 8002) and _reaches(MON, 9100)
    assert not _reaches(CLIENT, 8002) and not _reaches(CLIENT, 9100)


def test_outsider_is_dropped_and_metrics_only_reach_monitoring():
    _firewall_holds()


def test_firewall_survives_an_nftables_restart():
    # Debian's nftables.service flushes the whole ruleset; the gpuprov unit loads its table again.
    GPU.check_output("systemctl restart nftables")
    # gpuprov-firewall restarts with it (PartOf), as a job of its own that may still be running.
    deadline = time.time() + 15
    while time.time() < deadline and "table inet gpuprov" not in GPU.check_output("nft list tables"):
        time.sleep(0.5)
    assert "table inet gpuprov" in GPU.check_output("nft list tables")
    _firewall_holds()
    GPU.check_output("systemctl restart gpuprov-firewall")
    _firewall_holds()


# --- monitoring ---

def _targets() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for t in _prometheus("targets")["data"]["activeTargets"]:
        out.setdefault(t["labels"]["job"], []).append(t["health"])
    return out


def test_every_target_is_up():
    deadline = time.time() + 60
    while time.time() < deadline:
        targets = _targets()
        if all(h == ["up"] for j, h in targets.items() if j in ("node", "triton", "triton_ready")) and len(targets) >= 4:
            break
        time.sleep(3)
    assert targets["node"] == ["up"]
    assert targets["triton"] == ["up"]
    assert targets["triton_ready"] == ["up"]  # readiness through the TLS front, CA verified
    assert targets["prometheus"] == ["up"]
    # No GPU exporter target: the gpu fact shows no GPU on this host, and the role said so.
    assert "gpu" not in targets
    assert MON.file("/etc/prometheus/file_sd/gpu.yml").content_string.strip().endswith("[]")
    assert not GPU.service("gpuprov-gpu-exporter").is_running


def test_stopping_triton_fires_its_alert():
    GPU.check_output("systemctl stop gpuprov-triton")
    try:
        deadline, firing = time.time() + 120, []
        while time.time() < deadline:
            firing = [a["labels"]["alertname"] for a in _prometheus("alerts")["data"]["alerts"] if a["state"] == "firing"]
            if "TritonNotReady" in firing:
                break
            time.sleep(3)
        assert "TritonNotReady" in firing
    finally:
        GPU.check_output("systemctl start gpuprov-triton")
        GPU.check_output("for i in $(seq 1 60); do curl -sf http://127.0.0.1:8000/v2/health/ready && exit 0; sleep 2; done; exit 1")
