#!/usr/bin/env bash
# The GPU tier on the GPU machine: one entry per device call (docs/gpu.md).
#
#   bash bench/gpu/device.sh 1     append bundle chunk 1, probe the machine          -> $OUT/call1.json
#   bash bench/gpu/device.sh 2     append chunk 2, unpack, protocol/fault/router suite -> $OUT/suite.json
#   bash bench/gpu/device.sh 3     H200 layer calibration, fidelity real vs sim      -> $OUT/fidelity.json
#   bash bench/gpu/device.sh x2    (nvidia-h200-x2) chunk 2, unpack, two-GPU run      -> $OUT/two_gpu.json
#   bash bench/gpu/device.sh kvprobe  KV events of a real engine vs the gateway's index -> $OUT/kvprobe.json
#   bash bench/gpu/device.sh simfit  chunk 2, unpack, the fidelity driver's simulator side
#                                  only (the calibrated H200 preset)      -> $OUT/fidelity-simfit.json
#   bash bench/gpu/device.sh fidelity-all  chunk 2, unpack, the timing engines started here, the
#                                  fidelity driver's real side (eager ITL in 3 passes), then the
#                                  simulators with the calibrated preset  -> $OUT/fidelity.json
#   bash bench/gpu/device.sh eager-pin  chunk 2, unpack, the eager engine alone, measured in
#                                  passes unpinned and pinned to CPUs     -> $OUT/eager-passes.json
#   bash bench/gpu/device.sh cpu-speed  (any fresh or warm machine, no bundle) a fixed Python
#                                  loop's speed, second by second, one CPU then all -> $OUT/cpu-speed.json
#
# Run from the repository root.  What travels (bench/gpu/prepare.py stages it): .gpu/c1 and .gpu/c2
# (bundle chunks, the checksum, the model folders).  Everything unpacked lives under
# $DISAGG_GPU_ROOT (default /tmp/disagg-gpu) and survives between calls while the machine stays
# warm; so do the engines, started in their own sessions.
# For the CPU proof: DISAGG_GPU_ENGINE=sim (disagg sim instead of vLLM), PYTHON=<a Python 3.12>,
# DISAGG_GPU_STAGE=<staged folder>, DISAGG_GPU_ROOT and OUT somewhere writable.
set -u
CALL="${1:?call: 1, 2, 3, x2, kvprobe, simfit, fidelity-all, eager-pin or cpu-speed}"
ROOT="${DISAGG_GPU_ROOT:-/tmp/disagg-gpu}"
STAGE="${DISAGG_GPU_STAGE:-.gpu}"
ENGINE="${DISAGG_GPU_ENGINE:-vllm}"
PY="${PYTHON:-python3}"
OUTD="${OUT:-$ROOT/out}"
export DISAGG_GPU_ROOT="$ROOT" PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT/site:$PWD/operator:$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$ROOT" "$OUTD"
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

append_chunks() {  # every staged part, once, in order; the models and the checksum
  for part in $(ls "$STAGE"/c*/site.tar.xz.part* 2>/dev/null | sort); do
    name=$(basename "$part")
    if grep -qx "$name" "$ROOT/chunks.done" 2>/dev/null; then say "$name already appended"; continue; fi
    cat "$part" >> "$ROOT/site.tar.xz" && echo "$name" >> "$ROOT/chunks.done"
    say "appended $name ($(stat -c %s "$part") bytes), total $(stat -c %s "$ROOT/site.tar.xz")"
  done
  for d in "$STAGE"/c*; do
    [ -f "$d/bundle.json" ] && cp "$d/bundle.json" "$ROOT/bundle.json"
    if [ -f "$d/models.tar.xz" ]; then
      rm -rf "$ROOT/models" && tar -C "$ROOT" -xJf "$d/models.tar.xz" && say "models -> $ROOT/models"
    fi
  done
  return 0
}

unpack() {  # once per machine: checksum, xz, compile byte-code
  [ -f "$ROOT/site/.done" ] && { say "bundle already unpacked"; return 0; }
  want=$("$PY" -c "import json;print(json.load(open('$ROOT/bundle.json'))['sha256'])") || return 3
  have=$(sha256sum "$ROOT/site.tar.xz" | cut -d' ' -f1)
  [ "$have" = "$want" ] || { say "CHECKSUM MISMATCH: have $have, want $want (a chunk missing?)"; return 3; }
  rm -rf "$ROOT/site" && mkdir -p "$ROOT/site"
  xz -dc -T0 "$ROOT/site.tar.xz" | tar -C "$ROOT/site" -xf - || return 4
  "$PY" -m compileall -q -j 0 "$ROOT/site" > /dev/null 2>&1
  touch "$ROOT/site/.done"
  say "unpacked and compiled: $(du -sh "$ROOT/site" | cut -f1)"
}

collect_logs() {  # the tails of every engine and service log, in one file (<= 16 MiB comes back)
  for f in "$ROOT"/logs/*.log; do
    [ -f "$f" ] || continue
    echo "===== $(basename "$f")"; tail -c 400000 "$f"
  done > "$OUTD/logs-call$CALL.txt" 2>/dev/null
}

case "$CALL" in
  1)
    append_chunks
    "$PY" -m bench.gpu.probe --out "$OUTD/call1.json"
    ;;
  2)
    append_chunks
    unpack || { collect_logs; exit 3; }
    "$PY" -m bench.gpu.suite --engine "$ENGINE" --out "$OUTD/suite.json" --budget "${BUDGET:-500}"
    collect_logs
    ;;
  3)
    if [ "$ENGINE" = vllm ]; then
      say "layer calibration of the H200 (bench/calibrate_gpu.py)"
      timeout 120 "$PY" bench/calibrate_gpu.py --gpu h200 --out-json "$OUTD/calibration-h200-layers.json" \
        > "$OUTD/calibrate.txt" 2>&1 || say "calibration failed (see calibrate.txt)"
    fi
    "$PY" -m bench.fidelity --program "$ENGINE" --out "$OUTD/fidelity.json" \
      --budget "$(( ${BUDGET:-540} - ($(date +%s) - T0) ))"
    collect_logs
    ;;
  kvprobe)  # after a call that unpacked the bundle (the machine still warm), or with part 2
    append_chunks
    unpack || { collect_logs; exit 3; }
    "$PY" -m bench.gpu.kvprobe --engine "$ENGINE" --out "$OUTD/kvprobe.json" --budget "${BUDGET:-200}"
    collect_logs
    ;;
  x2)
    append_chunks
    unpack || { collect_logs; exit 3; }
    "$PY" -m bench.gpu.two_gpu --engine "$ENGINE" --out "$OUTD/two_gpu.json" --budget "${BUDGET:-520}"
    collect_logs
    ;;
  simfit)
    append_chunks
    unpack || { collect_logs; exit 3; }
    "$PY" -m bench.fidelity --sides sim --label sim_calibrated --out "$OUTD/fidelity-simfit.json" \
      --budget "$(( ${BUDGET:-400} - ($(date +%s) - T0) ))"
    collect_logs
    ;;
  fidelity-all)  # one call after call 1: real engines and calibrated simulators, one file
    append_chunks
    unpack || { collect_logs; exit 3; }
    # The real side starts its engines (~2 min for vLLM) inside its share of the budget.
    "$PY" -m bench.fidelity --program "$ENGINE" --label sim_calibrated --real-share 0.72 \
      --out "$OUTD/fidelity.json" --budget "$(( ${BUDGET:-570} - ($(date +%s) - T0) ))"
    collect_logs
    ;;
  eager-pin)  # one call after call 1: is eager vLLM's pass-to-pass spread the host's CPUs?
    append_chunks
    unpack || { collect_logs; exit 3; }
    nproc; lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core|Socket|CPU MHz|CPU max MHz|Hypervisor)' || true
    "$PY" -m bench.gpu.eager_passes --engine "$ENGINE" --out "$OUTD/eager-passes.json" \
      --budget "$(( ${BUDGET:-540} - ($(date +%s) - T0) ))"
    collect_logs
    ;;
  cpu-speed)  # no bundle: the CPUs alone (bench/gpu/cpu_speed.py)
    "$PY" -m bench.gpu.cpu_speed --out "$OUTD/cpu-speed.json"
    ;;
  *) echo "unknown call $CALL"; exit 2 ;;
esac
say "done"
