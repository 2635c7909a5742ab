#!/usr/bin/env bash
# Build (once) the environment the vLLM conformance tier runs in, and print its python.
#
#   conformance/setup_env.sh            -> prints e.g. ~/.cache/disagg/vllm-0.33.0-venv/bin/python
#   conformance/setup_env.sh 0.26.0     -> the same for another supported version
#   conformance/setup_env.sh --versions -> prints the versions the tier checks, one per line
#
# The versions are read from operator/disagg/api/versions.py, the one place they are written:
# VLLM_VERSION (the pinned default) and TESTED_VLLM_VERSIONS (every version the operator renders
# for, each checked with its own parser).  Each venv lives OUTSIDE the repository, in
# ${DISAGG_CACHE:-~/.cache/disagg}/vllm-<version>-venv, so the main .venv stays light and every
# checkout (including CI's fresh clone) shares one copy.  It holds vLLM with its full dependency
# set (the CUDA build of torch: PyPI has no CPU-only torch for Linux, and that torch does not
# import without its CUDA libraries) plus pytest; NOT our package: the tier's conftest puts the
# checkout's operator/ first on sys.path, so the venv never pins one checkout.
#
# Idempotent: a stamp written last records what was installed; while it matches, the script only
# prints the path.  An interrupted build leaves no stamp and the next run starts over.  A lock
# keeps two concurrent runs from building into the same directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS="$ROOT/operator/disagg/api/versions.py"
PINNED="$(sed -n 's/^VLLM_VERSION = "\([^"]*\)"$/\1/p' "$VERSIONS")"
TESTED="$(sed -n 's/^TESTED_VLLM_VERSIONS = (\(.*\))$/\1/p' "$VERSIONS" | tr -d '"' | tr ',' ' ')"
if [ -z "$PINNED" ] || [ -z "$TESTED" ]; then
    echo "setup_env.sh: no VLLM_VERSION = \"...\" or TESTED_VLLM_VERSIONS = (...) line in $VERSIONS" >&2
    exit 2
fi
if [ "${1:-}" = "--versions" ]; then
    printf '%s\n' $TESTED
    exit 0
fi
VLLM_VERSION="${1:-$PINNED}"
case " $TESTED " in
    *" $VLLM_VERSION "*) ;;
    *) echo "setup_env.sh: vLLM $VLLM_VERSION is not one of TESTED_VLLM_VERSIONS ($TESTED)" >&2
       exit 2 ;;
esac

PYTHON="${PYTHON:-python3}"
CACHE="${DISAGG_CACHE:-$HOME/.cache/disagg}"
VENV="$CACHE/vllm-$VLLM_VERSION-venv"
STAMP="$VENV/.disagg-conformance"
# Everything besides vLLM that the tier imports.  Change this line and the venv is rebuilt.
TIER_REQUIREMENTS="pytest>=8 pytest-asyncio>=0.23 PyYAML>=6"
WANT="vllm==$VLLM_VERSION $TIER_REQUIREMENTS python=$("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"

log() { echo "setup_env.sh: $*" >&2; }

mkdir -p "$CACHE"
exec 9>"$CACHE/vllm-$VLLM_VERSION-venv.lock"
flock 9

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    echo "$VENV/bin/python"
    exit 0
fi

log "building $VENV ($WANT); a cold build downloads several GB and takes minutes"
start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip uv >&2
# uv resolves and downloads in parallel (pip takes ~3x longer on vLLM's ~200 packages); it reads
# the same certificate bundle pip is configured with.
export SSL_CERT_FILE="${SSL_CERT_FILE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}"
# shellcheck disable=SC2086  # the requirement list is split into words on purpose
"$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" \
    "vllm==$VLLM_VERSION" $TIER_REQUIREMENTS >&2
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm"))')"
if [ "$installed" != "$VLLM_VERSION" ]; then
    log "installed vllm $installed, wanted $VLLM_VERSION"
    exit 1
fi
echo "$WANT" >"$STAMP"
log "built in $(($(date +%s) - start)) s, $(du -sh "$VENV" | cut -f1)"
echo "$VENV/bin/python"
