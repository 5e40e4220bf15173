#!/usr/bin/env bash
# gpuprov's roles on a real GPU host with no network and no systemd (the project's H200 device
# machine: Ubuntu 24.04, driver 580, Python 3.12), repeatable next month or on another GPU host.
# Needs the bundle of scripts/gpu-host-bundle (ansible-core wheels, the collections) in
# GPUPROV_GPU_BUNDLE (default .gpuprov/gpu-host/bundle). Writes to $OUT (default
# .gpuprov/gpu-host/out): each step's log, the gpu fact, summary.json and summary.md.
#
# Steps: the gpu fact on the real GPU (compared with tests/fixtures/gpu/h200-x1.expected.json);
# gpu_facts + nvidia_driver + cuda (cuda_method none) applied, then the same in check mode, which
# must report zero changes; models with the path source over a 1.5B-shaped random model built on the
# GPU (applied, checked, then one changed byte refused); gpu_exporter from the bundle's wheelhouse,
# started with its unit's command line and user, its metric names against the recording. Not run
# here, and said so in the summary: what needs systemd (nvidia-persistenced, every service unit),
# the firewall, nginx, apt (no network).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUNDLE=${GPUPROV_GPU_BUNDLE:-$ROOT/.gpuprov/gpu-host/bundle}
OUT=${OUT:-$ROOT/.gpuprov/gpu-host/out}
mkdir -p "$OUT"
work=$(mktemp -d)
# The models step changes a byte of the model's config.json on purpose: an interrupted run puts it back.
trap '[ ! -f "$work/config.json" ] || cp "$work/config.json" "${MODEL:?}/config.json"; rm -rf "$work"' EXIT

(cd "$BUNDLE" && sha256sum -c --quiet SHA256SUMS) || { echo "bundle does not match its SHA256SUMS" >&2; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-index --find-links "$BUNDLE/wheels" \
  "$(grep -E '^ansible-core==' "$ROOT/constraints.txt")" || exit 1
mkdir -p "$work/collections" && tar -xzf "$BUNDLE/collections.tar.gz" -C "$work/collections"

# Modules run under the host's own Python when it has apt's bindings (as on a real host: the apt
# module needs them and cannot install them without network), else under the bundle's venv.
host_py=$work/venv/bin/python
if /usr/bin/python3 -c 'import apt_pkg' 2>/dev/null; then host_py=/usr/bin/python3; fi
cat > "$work/hosts.yml" <<INV
all:
  children:
    gpu_servers:
      hosts:
        $(hostname -s):
          ansible_connection: local
          ansible_python_interpreter: $host_py
INV
export ANSIBLE_COLLECTIONS_PATH="$work/collections" ANSIBLE_ROLES_PATH="$ROOT/roles" \
  ANSIBLE_LOCAL_TEMP="$work/tmp" ANSIBLE_REMOTE_TEMP="$work/tmp" ANSIBLE_NOCOLOR=1 \
  ANSIBLE_CALLBACKS_ENABLED=ansible.builtin.profile_tasks ANSIBLE_FORCE_COLOR=0
# No systemd here: nvidia-persistenced cannot be started (it is not faked: the step is listed as not run).
vars='{"nvidia_driver_persistenced": false}'
id -u | grep -qx 0 || echo "not root: the roles write /etc (facts.d, profile.d); expect failures" >&2

step() {  # NAME ARGS...: one ansible-playbook run (PLAYBOOK, default site.yml), its log and its recap line
  local name=$1; shift
  local t0=$SECONDS
  "$work/venv/bin/ansible-playbook" -i "$work/hosts.yml" "$ROOT/benchmarks/gpu-host/${PLAYBOOK:-site.yml}" \
    -e "$vars" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local recap
  recap=$(grep -A1 '^PLAY RECAP' "$OUT/$name.log" | tail -1 | tr -s ' ')
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$recap" >> "$OUT/steps.tsv"
  echo "$name: rc $rc, $((SECONDS - t0)) s: $recap"
}
: > "$OUT/steps.tsv"
step apply
step check --check --diff
step check-again --check --diff

# models, `path` source: the 1.5B-shaped random model of the engine's benchmarks (built on the GPU,
# bf16) with a manifest.json of its files; applied, checked (zero changes), then one byte of
# config.json changed: the run must fail naming the file and leave it as it found it.
MODEL=${GPUPROV_GPU_MODEL_DIR:-/tmp/gpuprov-ds15}
if python3 "$ROOT/packages/engine/benchmarks/make_model.py" --out "$MODEL" > "$OUT/make-model.log" 2>&1; then
  python3 - "$MODEL" <<'PY'
import hashlib, json, sys
from pathlib import Path
root = Path(sys.argv[1])
files = []
for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"):
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    files.append({"path": str(f.relative_to(root)), "size": f.stat().st_size, "sha256": h.hexdigest()})
(root / "manifest.json").write_text(json.dumps({"name": "deepseek-r1-distill-qwen-1.5b", "revision": "random-bf16",
                                               "files": files}, indent=1) + "\n")
PY
  mvars="{\"models_source\": \"path\", \"models_path\": \"$MODEL\", \"models_name\": \"deepseek-r1-distill-qwen-1.5b\", \"models_group\": \"root\"}"
  PLAYBOOK=models.yml step models-apply -e "$mvars"
  PLAYBOOK=models.yml step models-check -e "$mvars" --check --diff
  cp "$MODEL/config.json" "$work/config.json"
  printf ' ' >> "$MODEL/config.json"
  PLAYBOOK=models.yml step models-changed-file -e "$mvars"
  cmp -s "$MODEL/config.json" "$work/config.json" && echo "models-changed-file: the role changed config.json" >&2
  grep -o "file(s) in $MODEL are missing or do not match[^\"]*" "$OUT/models-changed-file.log" | head -1 \
    > "$OUT/models-changed-file.txt"
  cp "$work/config.json" "$MODEL/config.json" && rm "$work/config.json"
else
  printf 'models-apply\t1\t0\tmake_model.py failed (make-model.log)\n' >> "$OUT/steps.tsv"
fi

# gpu_exporter: installed from the bundle's wheelhouse (the role's own wheel check found it complete)
# and its unit written, checked (zero changes); the unit cannot be started here (no systemd), so the
# exporter runs with the unit's own ExecStart and User, read from the unit file; its metrics, read
# from the real NVML, against the names recorded in the repository.
# python3-packaging is in the role's Debian packages for the pip module; where the interpreter the
# modules run under imports packaging already (the bundle's venv does: ansible-core depends on it),
# dpkg need not have it, and this host (no network, no apt bindings) must not be asked to install it.
syspk='["python3-venv", "python3-packaging"]'
"$host_py" -c 'import packaging' 2>/dev/null && syspk='["python3-venv"]'
evars="{\"gpu_exporter_enabled\": true, \"gpu_exporter_controller_wheelhouse\": \"$BUNDLE/wheelhouse\", \"gpu_exporter_system_packages\": $syspk}"
PLAYBOOK=gpu_exporter.yml step gpu-exporter-apply -e "$evars" --tags gpu_exporter_install,gpu_exporter_configure
PLAYBOOK=gpu_exporter.yml step gpu-exporter-check -e "$evars" --tags gpu_exporter_install,gpu_exporter_configure --check --diff
unit=/etc/systemd/system/gpuprov-gpu-exporter.service
if [ -f "$unit" ]; then
  user=$(sed -n 's/^User=//p' "$unit")
  cmd=$(sed -n '/^ExecStart=/,/[^\\]$/p' "$unit" | sed 's/^ExecStart=//; s/\\$//' | tr '\n' ' ')
  echo "runuser -u $user -- $cmd" > "$OUT/gpu-exporter-command.txt"
  runuser -u "$user" -- $cmd > "$OUT/gpu-exporter.log" 2>&1 &
  exporter=$!
  port=$(grep -o -- '--port [0-9]*' <<<"$cmd" | cut -d' ' -f2)
  for _ in $(seq 1 60); do
    curl -sf "http://127.0.0.1:$port/metrics" > "$OUT/gpu-exporter.prom" 2>/dev/null && grep -q '^gpu_' "$OUT/gpu-exporter.prom" && break
    sleep 1
  done
  kill "$exporter" 2>/dev/null
  python3 - "$OUT/gpu-exporter.prom" "$ROOT/tests/fixtures/metrics/nvitop-exporter-1.7.2-h200.prom" \
    > "$OUT/gpu-exporter-names.txt" <<'PY'
import sys
def names(path):
    return {ln.split("{")[0].split()[0] for ln in open(path) if ln.strip() and not ln.startswith("#")}
here, recorded = names(sys.argv[1]), names(sys.argv[2])
gpu = lambda s: {n for n in s if n.startswith(("gpu_", "host_", "process_"))}
print(f"served {len(here)} names ({len(gpu(here))} gpu_/host_/process_), recorded {len(recorded)}")
print("recorded but not served:", sorted(gpu(recorded) - here) or "none")
print("served but not recorded:", sorted(gpu(here) - recorded) or "none")
PY
else
  echo "gpu-exporter: no unit written ($unit)" > "$OUT/gpu-exporter-names.txt"
fi

# The fact as the role installed it, read on the real GPU, against the recording in the repository.
/etc/ansible/facts.d/gpu.fact > "$OUT/gpu-fact.json" 2> "$OUT/gpu-fact.err"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
cat /etc/os-release > "$OUT/os-release.txt"
"$work/venv/bin/python" - "$OUT" "$ROOT/tests/fixtures/gpu/h200-x1.expected.json" <<'PY'
import json, re, sys
from pathlib import Path
out, recorded = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
fact = json.loads((out / "gpu-fact.json").read_text() or "{}")
# What identifies the hardware and the driver (not the board's UUID or bus address).
keys = ["status", "gpu_count", "cuda_version", "driver_version", "loaded_module_version",
        "module_matches_library", "nvswitch_count", "fabric_manager_needed", "schema"]
gpu_keys = ["name", "memory_total_mib", "compute_capability", "mig_mode"]
compare = {k: [fact.get(k), recorded.get(k)] for k in keys}
compare.update({f"gpus[0].{k}": [(fact.get("gpus") or [{}])[0].get(k), recorded["gpus"][0].get(k)] for k in gpu_keys})
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs, recap = line.split("\t")
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", recap))
    steps.append({"step": name, "rc": int(rc), "seconds": int(secs), **counts})
not_run = ["nvidia-persistenced and every systemd unit (no systemd on this machine; the GPU exporter ran with its unit's command line and user instead)",
           "apt installs (no network: the driver's install path, the CUDA toolkit methods)",
           "firewall (nftables), the TLS front (nginx), Prometheus, the exporters' units",
           "reboot handling"]
summary = {"fact_vs_recording": {k: {"here": a, "recorded": b, "same": a == b} for k, (a, b) in compare.items()},
           "steps": steps, "not_run": not_run}
(out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
md = ["| step | rc | seconds | ok | changed | failed | skipped |", "|---|---|---|---|---|---|---|"]
md += [f"| {s['step']} | {s['rc']} | {s['seconds']} | {s.get('ok', '?')} | {s.get('changed', '?')} | "
       f"{s.get('failed', '?')} | {s.get('skipped', '?')} |" for s in steps]
md += ["", "| fact | here | recorded | same |", "|---|---|---|---|"]
md += [f"| {k} | {v['here']} | {v['recorded']} | {'yes' if v['same'] else 'NO'} |"
       for k, v in summary["fact_vs_recording"].items()]
md += ["", "Not run here:", *[f"- {n}" for n in not_run]]
(out / "summary.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
PY
