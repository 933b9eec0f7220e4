#!/usr/bin/env bash
# The two set-up commands of the README, on a fresh machine:
#   bash dev.sh demo   set everything up, then run the main job on this machine: `autoglm pipeline`
#                      (latency model, search on digits, train, export, compile for host, verify, bench vs onnxruntime)
#   bash dev.sh test   set everything up, then run the whole test suite (what CI runs)
# Anything after the verb is passed on (to `autoglm pipeline` or to pytest).
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(g++ cmake g++-aarch64-linux-gnu g++-arm-linux-gnueabihf qemu-user-static file)

install_system_packages() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "dev.sh: not root (or no apt-get): not installing ${APT_PACKAGES[*]}; tests that need them will skip" >&2
    return
  fi
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "dev.sh: apt-get install ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

find_python() {
  for py in python3.11 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      echo "$py"; return
    fi
  done
  echo "dev.sh: Python 3.11 is required (apt-get install python3.11 python3.11-venv, or pyenv install 3.11)" >&2
  exit 1
}

install_python_packages() {
  local stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test]"
    rm -f .venv/.installed-*
    touch "$stamp"
  fi
}

verb=${1:-}
shift || true
case "$verb" in
  demo)
    install_system_packages
    install_python_packages
    exec .venv/bin/autoglm pipeline --dataset digits --target host "$@"
    ;;
  test)
    install_system_packages
    install_python_packages
    # pytest exits 5 when it collected no test: that fails this script like any other failure.
    # Two workers (AUTOGLM_TEST_WORKERS), a test file each at a time: most tests are one busy core (a compile,
    # an emulated run), so two cores finish the suite in ~60% of the time (27 -> 16 min here). Tests assert no
    # wall-clock times; the latency measurements in them compare nets measured in the same file.
    exec .venv/bin/python -m pytest -n "${AUTOGLM_TEST_WORKERS:-2}" --dist loadfile "$@"
    ;;
  *)
    echo "usage: bash dev.sh demo|test [args...]" >&2
    exit 2
    ;;
esac
