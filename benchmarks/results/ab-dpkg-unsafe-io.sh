#!/bin/bash
# A/B: dpkg unpack of the cuda scenario's packages in a Debian 12 base container, with and without
# force-unsafe-io. Same .deb cache (copied), same image, one at a time on an otherwise idle machine.
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export PYTHONPATH=$PWD
PY=$PWD/.venv/bin/python
src=/var/cache/gpuprov/apt/gpuprov-cuda-debian12
for mode in default unsafe-io; do
  box=gpuprov-ab-$mode
  cache=$(mktemp -d /var/tmp/ab-apt.XXXX); cp -a "$src"/. "$cache"/
  mapfile -t args < <($PY gpuprov/systemd_container.py docker-run-args "$cache" gpuprov/debian12-base:latest)
  docker rm -f $box >/dev/null 2>&1 || true
  docker run -d --name $box "${args[@]}" >/dev/null
  sleep 3; docker exec $box sh -c 'systemctl is-system-running --wait >/dev/null 2>&1 || true'
  gw=$(docker exec $box ip -4 route show default | awk '{print $3}')
  docker exec $box sh -c "echo 'Acquire::http::Proxy::deb.debian.org \"http://$gw:3142\";' >/etc/apt/apt.conf.d/00p"
  [ $mode = unsafe-io ] && docker exec $box sh -c 'echo force-unsafe-io > /etc/dpkg/dpkg.cfg.d/gpuprov-test-unsafe-io'
  docker exec $box sh -c 'apt-get -qq update >/dev/null 2>&1 || true; apt-get -qq -y --download-only install --no-install-recommends nvidia-cuda-toolkit nvidia-cuda-toolkit-gcc g++ >/dev/null'
  s=$(date +%s.%N)
  docker exec $box sh -c 'DEBIAN_FRONTEND=noninteractive apt-get -qq -y install --no-install-recommends nvidia-cuda-toolkit nvidia-cuda-toolkit-gcc g++ >/dev/null'
  e=$(date +%s.%N)
  echo "$mode: install (downloads done before) $(echo "$e - $s" | bc) s"
  docker rm -f $box >/dev/null; rm -rf "$cache"
done
