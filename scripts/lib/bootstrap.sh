# shellcheck shell=bash
# Create or refresh the project's virtual environment from the pins in pyproject.toml and
# constraints.txt. A stamp of those pins is kept in the venv: when it matches, nothing is installed.
# The venv lives outside the checkout, in a cache keyed by the hash of those pins
# (GPUPROV_VENV_CACHE, default ~/.cache/gpuprov/venvs), so a fresh clone with the same pins installs
# nothing; `.venv` in the checkout is a link to it. GPUPROV_VENV names a venv directory instead.
#
# usage (sourced): bootstrap_venv [runtime|test]
GPUPROV_ROOT="${GPUPROV_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
VENV="${GPUPROV_VENV:-$GPUPROV_ROOT/.venv}"
# Every wheel of the controller's venv, pinned by its sha256 (scripts/lock writes it).
_WHEEL_LOCK=scripts/data/controller-wheels.sha256

_bootstrap_python() {
  local py
  py=$(command -v python3 || true)
  if [ -z "$py" ] || ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "gpuprov: installing python3 and python3-venv with apt-get" >&2
      { apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 || true; } && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq python3 python3-venv >/dev/null
      py=$(command -v python3)
    else
      echo "gpuprov: python3 with the venv module is required (Debian: apt-get install python3-venv)" >&2
      return 1
    fi
  fi
  if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "gpuprov: Python >= 3.11 is required, found $("$py" --version)" >&2
    return 1
  fi
  echo "$py"
}

# The wheels' lock is part of the key: a changed lock checks the wheels again in a new venv.
_pins_hash() {
  cat "$GPUPROV_ROOT/pyproject.toml" "$GPUPROV_ROOT/constraints.txt" "$GPUPROV_ROOT/$_WHEEL_LOCK" | sha256sum | cut -c1-32
}

# The keyed venv for these pins: a test venv also serves the runtime, so take it when it exists.
_keyed_venv() {
  local extra=$1 base hash
  base="${GPUPROV_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuprov/venvs}"
  hash=$(_pins_hash)
  if [ "$extra" = runtime ] && [ -f "$base/gpuprov-${hash:0:16}-test/.gpuprov-stamp" ]; then
    echo "$base/gpuprov-${hash:0:16}-test"
  else
    echo "$base/gpuprov-${hash:0:16}-$extra"
  fi
}

bootstrap_venv() {
  local extra=${1:-runtime} stamp want
  want="$(_pins_hash) $extra"
  if [ -z "${GPUPROV_VENV:-}" ]; then
    VENV=$(_keyed_venv "$extra")
    if ! mkdir -p "$(dirname "$VENV")" 2>/dev/null || [ ! -w "$(dirname "$VENV")" ]; then
      VENV="$GPUPROV_ROOT/.venv"  # no writable cache: a venv inside the checkout, as before
    fi
  fi
  stamp="$VENV/.gpuprov-stamp"
  if ! { [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$want" ] ||
      { [ "$extra" = runtime ] && [ "$(cat "$stamp")" = "${want% *} test" ]; }; }; }; then
    # One installer at a time per venv (two checkouts may bootstrap together); the stamp is written
    # last, so a venv whose install broke off is built again from scratch.
    exec 8>"$VENV.lock" && flock 8 || return 1
    if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
      _install_venv "$extra" "$want" || { flock -u 8; return 1; }
    fi
    flock -u 8
  fi
  # The checkout's .venv points at the venv in use (a real .venv directory is left alone).
  if [ "$VENV" != "$GPUPROV_ROOT/.venv" ] && { [ -L "$GPUPROV_ROOT/.venv" ] || [ ! -e "$GPUPROV_ROOT/.venv" ]; }; then
    ln -sfn "$VENV" "$GPUPROV_ROOT/.venv"
  fi
}

_install_venv() {
  local extra=$1 want=$2 py reqs
  py=$(_bootstrap_python) || return 1
  if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "gpuprov: $VENV exists and is not a virtual environment; move it away" >&2
    return 1
  fi
  rm -rf "$VENV"
  "$py" -m venv "$VENV" || return 1
  reqs=$("$VENV/bin/python" - "$GPUPROV_ROOT/pyproject.toml" "$extra" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
deps = list(project["dependencies"])
if sys.argv[2] == "test":
    deps += project["optional-dependencies"]["test"]
print("\n".join(deps))
PY
) || return 1
  echo "gpuprov: installing pinned dependencies into $VENV ($extra)" >&2
  printf '%s\n' "$reqs" >"$VENV/requirements.txt"
  # Downloaded first and checked against the repository's lock, then installed from that directory
  # only: a wheel whose sha256 is not the pinned one is refused before anything is installed.
  local wheels
  wheels=$(mktemp -d) || return 1
  if ! "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
      --dest "$wheels" -r "$VENV/requirements.txt" -c "$GPUPROV_ROOT/constraints.txt" 2> >(grep -v "is ignored: it is neither" >&2) ||
    ! "$VENV/bin/python" "$GPUPROV_ROOT/roles/_common/files/check_wheels.py" "$GPUPROV_ROOT/$_WHEEL_LOCK" "$wheels" \
      $([ "${GPUPROV_WHEELS_RECORD:-}" = 1 ] && echo --record) ||
    ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" \
      -r "$VENV/requirements.txt" -c "$GPUPROV_ROOT/constraints.txt"; then
    rm -rf "$wheels"
    echo "gpuprov: the controller's venv was not installed: its wheels must download for this Python" \
      "($("$VENV/bin/python" -c 'import platform; print(platform.python_version(), platform.machine())')) and match" \
      "$_WHEEL_LOCK (Python 3.11 and 3.12 on x86_64 are locked; scripts/lock adds others)" >&2
    return 1
  fi
  rm -rf "$wheels"
  echo "$want" >"$VENV/.gpuprov-stamp"
}
