#!/usr/bin/env bash
# Creates (once) the project's virtual environment outside the clone, keyed by a hash of
# the lock files, so CI runs and later sessions reuse the multi-GB torch
# install; a new machine builds it from scratch. Every package comes from
# requirements/*.txt at its locked version and hash (`make lock` refreshes them); nothing
# is resolved here. The project itself is (re)installed editable from the current
# checkout on every call, which takes a second. Prints the venv path on stdout.
#
# KAITO_UPGRADE=1 instead resolves the newest release of everything (hack/lock.sh into a
# scratch folder) and builds a venv from that: the check that the suite still passes on
# what a fresh unlocked install would get (`make test UPGRADE=1`).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
layout=3  # bump when the install steps below change
python=${PYTHON:-python3}
cache=${XDG_CACHE_HOME:-$HOME/.cache}
locks=$root/requirements
if [ "${KAITO_UPGRADE:-}" = 1 ]; then
  locks=$cache/kaito-upgrade-lock/$(date +%Y%m%d)
  [ -f "$locks/nodeps.txt" ] || bash "$root/hack/lock.sh" "$locks"
fi
# Not pyproject.toml: what it adds beyond the lock (entry points, package data) comes with
# the editable install below; a dependency it adds must come through `make lock`
# (tests/unit/test_lock.py fails until it does).
key=$( (cat "$locks/dev.txt" "$locks/nodeps.txt" "$locks/build.txt"; echo "$layout") \
  | sha256sum | cut -c1-16)
venv=${KAITO_VENV:-$cache/kaito-venv/$key}

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # concurrent callers wait for one install instead of racing it

if [ ! -f "$venv/.complete" ]; then
  echo "venv: creating $venv from $locks (first run installs torch and friends: several minutes)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # --no-deps: the lock is already the whole closure, and nodeps.txt holds packages whose
  # declared requirements we deliberately leave out (see requirements/nodeps.in).
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$locks/dev.txt" -r "$locks/nodeps.txt" -r "$locks/build.txt" >&2
  touch "$venv/.complete"
fi
if ! out=$("$venv/bin/pip" install -q --disable-pip-version-check --no-deps \
    --no-build-isolation -e "$root" 2>&1); then
  echo "$out" >&2
  exit 1
fi
echo "$venv"
