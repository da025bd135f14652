#!/usr/bin/env bash
# Runs the test suite once per Keras backend (tensorflow, jax, torch). Extra arguments go to pytest.
# Installs into .venv first (scripts/setup.sh) unless SKIP_SETUP=1. TEST_WORKERS (default 2)
# pytest-xdist processes per pass: many tests wait on subprocesses and imports, so two overlap
# well even on 2 cores; TEST_WORKERS=0 runs in one process.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${SKIP_SETUP:-0}" != 1 ]; then
    bash scripts/setup.sh || exit 1
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
# JAX's persistent compilation cache, for this run only: the many tests (and their subprocesses)
# that compile the same tiny models compile them once (measured: a training test 96 s -> 53 s).
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
    export JAX_COMPILATION_CACHE_DIR=$(mktemp -d -t keras_convnext_jax_cache.XXXXXX)
    trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
fi
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.2}
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=${JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES:-0}
status=0
for backend in ${BACKENDS:-tensorflow jax torch}; do
    echo "=== KERAS_BACKEND=$backend"
    KERAS_BACKEND=$backend .venv/bin/python -m pytest -n "${TEST_WORKERS:-2}" "$@" || status=1
done
exit $status
