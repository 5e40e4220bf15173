# shellcheck shell=bash
# ensure_apt_cache: one package cache for every test and lab container. Debian's apt-cacher-ng runs
# on this machine (installed when missing, started through systemd when systemd runs, otherwise as a
# daemon of its own) and listens on GPUPROV_APT_CACHE_PORT (default 3142). Containers reach it at
# their network's gateway (this machine): Molecule's shared prepare step and `gpuprov lab up` write
# an apt proxy setting for the Debian archive alone when GPUPROV_APT_CACHE_PORT is set, so a package
# any container downloaded once is served locally to every other one, in parallel, and no other
# repository (NVIDIA's, the tests' stand-in mirrors) goes through it.
# Prints nothing and returns 0 when the cache answers; on failure says why and returns 1 (the
# caller carries on without a cache: slower, never wrong).
ensure_apt_cache() {
  local port=${GPUPROV_APT_CACHE_PORT:-3142} i
  _apt_cache_answers() { curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/acng-report.html"; }
  _apt_cache_answers && return 0
  if ! command -v apt-cacher-ng >/dev/null && [ ! -x /usr/sbin/apt-cacher-ng ]; then
    [ "$(id -u)" = 0 ] || { echo "gpuprov: apt-cacher-ng is not installed (apt-get install apt-cacher-ng)" >&2; return 1; }
    echo "gpuprov: installing apt-cacher-ng (one package cache for the test containers)" >&2
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq apt-cacher-ng >/dev/null || return 1
  fi
  # The Debian archive's backend is the host the containers name (deb.debian.org): the package's
  # default picks a mirror from a built-in list, which may not resolve where only that host does.
  echo "${GPUPROV_DEBIAN_MIRROR:-http://deb.debian.org/debian}/" >/etc/apt-cacher-ng/backends_debian
  echo "Port: $port" >/etc/apt-cacher-ng/zz-gpuprov.conf
  if [ -d /run/systemd/system ] && systemctl start apt-cacher-ng 2>/dev/null; then
    :
  else
    install -d -o apt-cacher-ng -g apt-cacher-ng /run/apt-cacher-ng
    start-stop-daemon --start --quiet --chuid apt-cacher-ng --group apt-cacher-ng \
      --pidfile /run/apt-cacher-ng/pid --exec /usr/sbin/apt-cacher-ng -- -c /etc/apt-cacher-ng \
      pidfile=/run/apt-cacher-ng/pid SocketPath=/run/apt-cacher-ng/socket foreground=0 || true
  fi
  for i in $(seq 1 30); do
    _apt_cache_answers && return 0
    sleep 0.5
  done
  echo "gpuprov: apt-cacher-ng did not answer on port $port; containers download directly" >&2
  return 1
}
