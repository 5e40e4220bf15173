# shellcheck shell=bash
# ensure_docker: make sure a Docker engine answers and debootstrap and the SSH client (the lab's hosts
# are reached over SSH) are installed. On a fresh Debian
# machine (as root) it installs docker.io and debootstrap and starts dockerd itself (through systemd
# when systemd runs, otherwise as a background process logging to /var/log/gpuprov-dockerd.log).
ensure_docker() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v docker >/dev/null || missing+=(docker.io)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "gpuprov: missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
      return 1
    fi
    echo "gpuprov: installing ${missing[*]}" >&2
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" >/dev/null || return 1
  fi
  docker info >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || { echo "gpuprov: the Docker engine is not running" >&2; return 1; }
  if [ -d /run/systemd/system ] && systemctl start docker 2>/dev/null; then
    :
  else
    echo "gpuprov: starting dockerd (log: /var/log/gpuprov-dockerd.log)" >&2
    nohup dockerd >/var/log/gpuprov-dockerd.log 2>&1 &
  fi
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "gpuprov: dockerd did not come up; last log lines:" >&2
  tail -20 /var/log/gpuprov-dockerd.log >&2 2>/dev/null
  return 1
}
