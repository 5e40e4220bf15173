# shellcheck shell=bash
# Create or refresh the project's virtual environment (.venv) from the pins in pyproject.toml and
# constraints.txt. A stamp of those pins is kept in the venv: when it matches, nothing is installed.
#
# usage (sourced): bootstrap_venv [runtime|test]
GPUPROV_ROOT="${GPUPROV_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
VENV="${GPUPROV_VENV:-$GPUPROV_ROOT/.venv}"

_bootstrap_python() {
  local py
  py=$(command -v python3 || true)
  if [ -z "$py" ] || ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "gpuprov: installing python3 and python3-venv with apt-get" >&2
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
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

bootstrap_venv() {
  local extra=${1:-runtime} stamp want py reqs
  want=$(cat "$GPUPROV_ROOT/pyproject.toml" "$GPUPROV_ROOT/constraints.txt" | sha256sum | cut -c1-32)
  want="$want $extra"
  stamp="$VENV/.gpuprov-stamp"
  # A test venv also serves the runtime.
  if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$want" ] ||
      { [ "$extra" = runtime ] && [ "$(cat "$stamp")" = "${want% *} test" ]; }; }; then
    return 0
  fi
  py=$(_bootstrap_python) || return 1
  [ -x "$VENV/bin/python" ] || "$py" -m venv "$VENV" || return 1
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
  # shellcheck disable=SC2086
  printf '%s\n' "$reqs" >"$VENV/requirements.txt"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$VENV/requirements.txt" -c "$GPUPROV_ROOT/constraints.txt" 2> >(grep -v "is ignored: it is neither" >&2) || return 1
  echo "$want" >"$stamp"
}
