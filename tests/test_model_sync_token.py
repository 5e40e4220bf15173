"""The models role's sync module and the Hugging Face token: run by a real ansible-playbook against
stand-ins on loopback (the hub, and a CDN on another address that it redirects to), as the hub's
resolve URLs do. The token reaches the hub's host only; a plain-http hub gets no token at all."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from conftest import ROOT, write_local_inventory

from gpuprov.runner import RunRequest, run

TOKEN = "hf_do-not-leak-this-token"
BODY = b"weights " * 1000


@contextmanager
def _server(address: str, redirect_to: str | None, seen: list[dict]) -> Iterator[str]:
    """Serves BODY under /blob/<name>; /resolve/<name> redirects to `redirect_to` (or to its own /blob/)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            name = self.path.rsplit("/", 1)[-1]
            if self.path.startswith("/resolve/"):
                self.send_response(302)
                self.send_header("Location", f"{redirect_to or ''}/blob/{name}")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer((address, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{address}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _sync(tmp_path: Path, base_url: str) -> tuple[int, list[dict]]:
    play_dir = tmp_path / "play"
    play_dir.mkdir(exist_ok=True)
    (play_dir / "library").mkdir(exist_ok=True)
    link = play_dir / "library" / "gpuprov_model_sync.py"
    if not link.exists():
        link.symlink_to(ROOT / "roles/models/library/gpuprov_model_sync.py")
    files = [{"path": "model.bin", "size": len(BODY), "sha256": hashlib.sha256(BODY).hexdigest()}]
    (play_dir / "play.yml").write_text(yaml.safe_dump([{
        "name": "Sync", "hosts": "all", "gather_facts": False, "tasks": [{
            "name": "Fetch the model", "gpuprov_model_sync": {
                "dest": str(tmp_path / "model"), "revision": "r1", "files": files, "source": "http",
                "base_url": f"{base_url}/resolve", "bearer_token": TOKEN,
                "owner": "root", "group": "root", "free_margin_bytes": 0}}]}]))
    inv = write_local_inventory(tmp_path / "hosts.yml")
    events: list[dict] = []
    result = run(RunRequest(command="test-model-sync", playbook=str(play_dir / "play.yml"), inventories=[str(inv)]),
                 on_event=lambda _t, e: events.append(e))
    return result.rc, events


def test_the_token_reaches_the_hub_but_not_the_host_it_redirects_to(tmp_path):
    hub_seen: list[dict] = []
    cdn_seen: list[dict] = []
    with _server("127.0.0.2", None, cdn_seen) as cdn, _server("127.0.0.1", cdn, hub_seen) as hub:
        rc, events = _sync(tmp_path, hub)
    assert rc == 0, [e["event_data"].get("res", {}).get("msg") for e in events if e.get("event") == "runner_on_failed"]
    assert (tmp_path / "model" / "current" / "model.bin").read_bytes() == BODY
    assert [s["authorization"] for s in hub_seen] == [f"Bearer {TOKEN}"]
    assert cdn_seen and all(s["authorization"] is None for s in cdn_seen), cdn_seen
    assert TOKEN not in json.dumps(events)


def test_a_redirect_on_the_hubs_own_host_keeps_the_token(tmp_path):
    seen: list[dict] = []
    with _server("127.0.0.1", None, seen) as hub:
        rc, _ = _sync(tmp_path, hub)
    assert rc == 0
    assert [s["path"].split("/")[1] for s in seen] == ["resolve", "blob"]
    assert all(s["authorization"] == f"Bearer {TOKEN}" for s in seen)


def test_no_token_over_plain_http_to_another_host(tmp_path):
    seen: list[dict] = []
    with _server("127.0.0.2", None, seen) as plain:  # not loopback's usual name: treated as any host
        rc, events = _sync(tmp_path, plain)
    assert rc != 0 and seen == []
    msg = [e["event_data"]["res"]["msg"] for e in events if e.get("event") == "runner_on_failed"][0]
    assert "refusing to send the token" in msg and "nothing was changed" in msg
    assert not (tmp_path / "model").exists()
