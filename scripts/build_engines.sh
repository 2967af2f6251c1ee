#!/usr/bin/env bash
# Build one TensorRT-LLM engine from a koserve recipe: the entrypoint of the Kubernetes build Job.
#
# Runs inside nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3 (TensorRT-LLM 1.2.1) with koserve
# installed. Settings come from the environment (or the first argument for the recipe):
#   RECIPE            recipe name or YAML path (required; `koserve build list` shows the built-ins)
#   CHECKPOINT_DIR    local Hugging Face checkpoint folder, or a Hub id (org/name): then it is downloaded
#                     with huggingface_hub into $HF_HOME (set HF_HOME on the persistent volume; HF_TOKEN if gated)
#   ENGINE_DIR        the engine folder                       (default $OUTPUT_DIR/<recipe name>)
#   OUTPUT_DIR        engines root, used when ENGINE_DIR is unset     (default /engines)
#   WORKDIR           checkpoints, logs and resume stamps (default <ENGINE_DIR's parent>/.koserve-build/<recipe>;
#                     keep it on the same persistent volume so a restarted Job resumes)
#   TRTLLM_EXAMPLES   TensorRT-LLM v1.2.1 examples/ folder           (default /app/examples, as in the image)
#   TRTLLM_CLONE=1    when that folder is missing, clone TensorRT-LLM $TRTLLM_REF (default v1.2.1) into
#                     <WORKDIR's parent>/TensorRT-LLM-$TRTLLM_REF and install its quantization requirements
#   KOSERVE_PYTHON    interpreter for quantize.py / convert_checkpoint.py (default python3)
#   DRY_RUN=1         print what would run;  FORCE=1  re-run every step
# Exit codes: 0 built (or up to date), 1 build failed, 2 bad settings / refused before any GPU work.
set -euo pipefail

RECIPE="${1:-${RECIPE:-}}"
OUTPUT_DIR="${OUTPUT_DIR:-/engines}"
TRTLLM_EXAMPLES="${TRTLLM_EXAMPLES:-/app/examples}"
TRTLLM_REF="${TRTLLM_REF:-v1.2.1}"
PY="${KOSERVE_PYTHON:-python3}"
# Installs go into $PY's environment: the image's python3 is a venv (/opt/venv-tritonserver), where `pip install
# --user` is refused; --user only for a system interpreter. TensorRT-LLM 1.2.1's published requirements
# are kept with the constraints file the image ships next to this script.
CONSTRAINTS="${KOSERVE_CONSTRAINTS:-$(cd "$(dirname "$0")/.." && pwd)/deploy/docker/constraints-trtllm-1.2.1.txt}"
pip_install() {
  local args=(-m pip install -q)
  "$PY" -c 'import sys; sys.exit(sys.prefix != sys.base_prefix)' && args+=(--user)
  [[ -f "$CONSTRAINTS" ]] && args+=(-c "$CONSTRAINTS")
  "$PY" "${args[@]}" "$@"
}

if [[ -z "$RECIPE" ]]; then
  echo "build_engines.sh: set RECIPE (a recipe name or YAML path), e.g. RECIPE=komt-13b-fp8-h100-tp1" >&2
  exit 2
fi
name="$(basename "$RECIPE")"
name="${name%.yaml}"
name="${name%.yml}"
ENGINE_DIR="${ENGINE_DIR:-$OUTPUT_DIR/$name}"
WORKDIR="${WORKDIR:-$(dirname "$ENGINE_DIR")/.koserve-build/$name}"

if command -v koserve >/dev/null 2>&1; then
  KOSERVE=(koserve)
else
  KOSERVE=("$PY" -m koserve)
fi

if [[ ! -f "$TRTLLM_EXAMPLES/quantization/quantize.py" && "${TRTLLM_CLONE:-0}" == "1" ]]; then
  src="$(dirname "$WORKDIR")/TensorRT-LLM-$TRTLLM_REF"
  if [[ ! -f "$src/examples/quantization/quantize.py" ]]; then
    echo "build_engines.sh: cloning TensorRT-LLM $TRTLLM_REF into $src"
    git clone --depth 1 --branch "$TRTLLM_REF" https://github.com/NVIDIA/TensorRT-LLM.git "$src"
    pip_install -r "$src/examples/quantization/requirements.txt"
  fi
  TRTLLM_EXAMPLES="$src/examples"
fi

# quantize.py imports ModelOpt and datasets (dependencies of the tensorrt_llm 1.2.1 wheel, so NVIDIA's image has
# them); install the example's requirements only when they are missing (docs/build.md, "Quantization requirements").
if [[ "${DRY_RUN:-0}" != "1" && -f "$TRTLLM_EXAMPLES/quantization/requirements.txt" ]] \
   && ! "$PY" -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("modelopt", "datasets")))' 2>/dev/null; then
  echo "build_engines.sh: installing $TRTLLM_EXAMPLES/quantization/requirements.txt (modelopt/datasets missing)"
  pip_install -r "$TRTLLM_EXAMPLES/quantization/requirements.txt"
fi

# A Hub id instead of a folder: download (resumable, cached in $HF_HOME) and build from the snapshot.
if [[ -n "${CHECKPOINT_DIR:-}" && ! -d "$CHECKPOINT_DIR" && "$CHECKPOINT_DIR" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
  echo "build_engines.sh: downloading $CHECKPOINT_DIR from the Hugging Face Hub (HF_HOME=${HF_HOME:-default})"
  CHECKPOINT_DIR="$("$PY" -c 'import sys
from huggingface_hub import snapshot_download
print(snapshot_download(sys.argv[1], allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))' "$CHECKPOINT_DIR" | tail -n 1)"
  echo "build_engines.sh: checkpoint at $CHECKPOINT_DIR"
fi

args=(build run "$RECIPE" --workdir "$WORKDIR" --output-dir "$ENGINE_DIR"
      --trtllm-examples "$TRTLLM_EXAMPLES" --python "$PY")
[[ -n "${CHECKPOINT_DIR:-}" ]] && args+=(--checkpoint-dir "$CHECKPOINT_DIR")
[[ "${DRY_RUN:-0}" == "1" ]] && args+=(--dry-run)
[[ "${FORCE:-0}" == "1" ]] && args+=(--force)

echo "build_engines.sh: recipe $RECIPE -> $ENGINE_DIR (work: $WORKDIR)"
"${KOSERVE[@]}" build plan "$RECIPE" || { echo "build_engines.sh: the planner refused $RECIPE" >&2; exit 2; }
set +e
"${KOSERVE[@]}" "${args[@]}"
rc=$?
set -e
if [[ $rc -ne 0 ]]; then
  echo "build_engines.sh: build of $RECIPE failed (exit $rc); logs in $WORKDIR/logs" >&2
  exit 1
fi
