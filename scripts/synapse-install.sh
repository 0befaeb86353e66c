#!/usr/bin/env bash
# Installs the reference homeserver (Synapse, from PyPI) into a local virtualenv for the e2e tests.
#
#   scripts/synapse-install.sh            # venv at <repo>/.synapse-venv
#   HIVE_MATRIX_SYNAPSE_VENV=/x scripts/synapse-install.sh
#
# Idempotent: a marker file in the venv records the installed version; when it matches the pin
# below nothing is done. A different (or missing) marker reinstalls. The last line of output is
# the venv path.
set -euo pipefail

SYNAPSE_VERSION="1.163.2"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${HIVE_MATRIX_SYNAPSE_VENV:-$repo/.synapse-venv}"
marker="$venv/.hive-matrix-synapse-version"
python="${PYTHON:-python3}"

if [[ -x "$venv/bin/python" && -f "$marker" && "$(cat "$marker")" == "$SYNAPSE_VERSION" ]]; then
  echo "$venv"
  exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
  echo "synapse-install: $python not found; Synapse $SYNAPSE_VERSION needs Python >= 3.10" >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
  echo "synapse-install: $("$python" --version 2>&1) is too old; Synapse $SYNAPSE_VERSION needs Python >= 3.10" >&2
  exit 1
fi

echo "synapse-install: installing matrix-synapse==$SYNAPSE_VERSION into $venv" >&2
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
fi
rm -f "$marker"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "matrix-synapse==$SYNAPSE_VERSION" >&2
"$venv/bin/python" -c 'import synapse, sys; sys.exit(0 if synapse.__version__.split()[0] == sys.argv[1] else 1)' "$SYNAPSE_VERSION" || {
  echo "synapse-install: installed synapse does not report version $SYNAPSE_VERSION" >&2
  exit 1
}
echo "$SYNAPSE_VERSION" >"$marker"
echo "$venv"
