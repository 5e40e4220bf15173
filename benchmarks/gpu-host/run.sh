#!/usr/bin/env bash
# gpuprov's roles on a real GPU host with no network and no systemd (the project's H200 device
# machine: Ubuntu 24.04, driver 580, Python 3.12), repeatable next month or on another GPU host.
# Needs the bundle of scripts/gpu-host-bundle (ansible-core wheels, the collections) in
# GPUPROV_GPU_BUNDLE (default .gpuprov/gpu-host/bundle). Writes to $OUT (default
# .gpuprov/gpu-host/out): each step's log, the gpu fact, summary.json and summary.md.
#
# Steps: the gpu fact on the real GPU (compared with tests/fixtures/gpu/h200-x1.expected.json);
# gpu_facts + nvidia_driver + cuda (cuda_method none) applied, then the same in check mode, which
# must report zero changes. Not run here, and said so in the summary: what needs systemd
# (nvidia-persistenced, every service unit), the firewall, nginx, apt (no network).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BUNDLE=${GPUPROV_GPU_BUNDLE:-$ROOT/.gpuprov/gpu-host/bundle}
OUT=${OUT:-$ROOT/.gpuprov/gpu-host/out}
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$BUNDLE" && sha256sum -c --quiet SHA256SUMS) || { echo "bundle does not match its SHA256SUMS" >&2; exit 1; }
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q --no-index --find-links "$BUNDLE/wheels" \
  "$(grep -E '^ansible-core==' "$ROOT/constraints.txt")" || exit 1
mkdir -p "$work/collections" && tar -xzf "$BUNDLE/collections.tar.gz" -C "$work/collections"

cat > "$work/hosts.yml" <<INV
all:
  children:
    gpu_servers:
      hosts:
        $(hostname -s):
          ansible_connection: local
          ansible_python_interpreter: $work/venv/bin/python
INV
export ANSIBLE_COLLECTIONS_PATH="$work/collections" ANSIBLE_ROLES_PATH="$ROOT/roles" \
  ANSIBLE_LOCAL_TEMP="$work/tmp" ANSIBLE_REMOTE_TEMP="$work/tmp" ANSIBLE_NOCOLOR=1 \
  ANSIBLE_CALLBACKS_ENABLED=ansible.builtin.profile_tasks ANSIBLE_FORCE_COLOR=0
# No systemd here: nvidia-persistenced cannot be started (it is not faked: the step is listed as not run).
vars='{"nvidia_driver_persistenced": false}'
id -u | grep -qx 0 || echo "not root: the roles write /etc (facts.d, profile.d); expect failures" >&2

step() {  # NAME ARGS...: one ansible-playbook run, its log and its recap line
  local name=$1; shift
  local t0=$SECONDS
  "$work/venv/bin/ansible-playbook" -i "$work/hosts.yml" "$ROOT/benchmarks/gpu-host/site.yml" -e "$vars" "$@" \
    > "$OUT/$name.log" 2>&1
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
not_run = ["nvidia-persistenced and every systemd unit (no systemd on this machine)",
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
