#!/usr/bin/env bash
# Run several cross-validations (`chextriev evaluate --folds ...`) side by side, e.g. on a GPU machine.
#
# Usage: bench/crossval-runs.sh RUNS_FILE OUT_DIR [PARALLEL]
#   RUNS_FILE: one run per line, "NAME ARGUMENTS...", the arguments those of `chextriev evaluate`
#   without --out (each run writes OUT_DIR/NAME/ and OUT_DIR/NAME.log). Lines starting with # are skipped.
#   PARALLEL: how many runs at once (default 4).
# Then OUT_DIR/crossval-runs.tar.gz holds every run's crossval.json and .md and each fold's
# training.json and training_curves.png (no checkpoints), and the exit status is that of the worst run.
# Environment: PYTHON (default python3), with the repository importable (PYTHONPATH or an install).
set -uo pipefail
runs=$1 out=$2 parallel=${3:-4}
python=${PYTHON:-python3}
mkdir -p "$out" || exit 2
export out python
# The archive is written however the runs end (also when a time limit interrupts them).
trap '(cd "$out" && tar -czf crossval-runs.tar.gz --exclude=checkpoint --exclude=lightning_logs \
      --exclude="*.tar.gz" -- *)' EXIT
grep -v '^\s*\(#\|$\)' "$runs" | xargs -P "$parallel" -L 1 bash -c '
    name=$0
    echo "crossval-runs: $name started" >&2
    "$python" -m service.cli evaluate "$@" --out "$out/$name" >"$out/$name.log" 2>&1
    status=$?
    echo "crossval-runs: $name finished with status $status" >&2
    exit $((status == 0 ? 0 : 255 - 1))'
status=$?
exit $((status == 0 ? 0 : 1))
