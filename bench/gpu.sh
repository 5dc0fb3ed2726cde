#!/usr/bin/env bash
# Every GPU figure of issue 11 ("Performance") in one run, meant for one H200 in under 8 minutes:
#   (a) `chextriev bench features` on cuda: ResNet50 (random weights: ImageNet ones are not available
#       offline; speed does not depend on them) in bfloat16 with crops cut on the GPU, against the
#       research baseline (exact crops, float32, NCHW, eager) measured in the same run;
#   (b) exact search over 1M gallery vectors on cuda (PyTorch inner product + top-k: faiss-gpu is absent);
#   (a2) the fast path of (a) with the exact crops (model.crops) cut on the GPU: its speed and agreement;
#   (c) end-to-end HTTP search at 1M cases with CHEXTRIEV_DEVICE=cuda (`chextriev bench http`), in
#       whatever time the budget has left.
# A failing step is recorded (exit status, log tail) and the script goes on; the exit status is 1 then.
#
# Usage: bench/gpu.sh [RESULTS_DIR]     RESULTS_DIR defaults to $OUT, else bench/results.
# Writes RESULTS_DIR/gpu.json (atomically): each step's report, exit status, seconds and log tail.
#
# The machine needs no network: the repository runs from its working tree (PYTHONPATH), its
# `chextriev` entry points are declared by a generated dist-info (no pip install, whose Python may
# be newer than pyproject's requires-python), and Python packages it lacks are installed from the
# wheels in $WHEELS (default .whl; fetch them with bench/gpu-wheels.sh where pip has an index: 19
# wheels, 45 MB, which fit beside the working tree in the device tool's 64 MiB). With the device tool:
# here `echo /.whl/ >> .git/info/exclude; bench/gpu-wheels.sh .whl`, then run `bench/gpu.sh` with
# carry [".whl"] and timeout_s 600; gpu.json comes back from $OUT.
# Environment: CROSSVAL_RUNS (a runs file of bench/crossval-runs.sh: cross-validations run first, within
# CROSSVAL_CAP_S, default 300, CROSSVAL_PARALLEL at once, default 6; crossval-runs.tar.gz lands beside gpu.json);
# PYTHON (default python3); CHEXTRIEV_GPU_SMOKE=1 runs every step at a tiny size on the
# CPU, to check the script on a machine without a GPU; BUDGET_S (default 470) bounds the whole run.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
results=${1:-${OUT:-bench/results}}
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
budget_s=${BUDGET_S:-470}
smoke=${CHEXTRIEV_GPU_SMOKE:-0}
started=$(date +%s)
scratch=$(mktemp -d /tmp/chextriev-gpu.XXXXXX)
parts=$scratch/parts
site=$scratch/site
mkdir -p "$results" "$parts" "$site" || exit 2
trap 'rm -rf "$scratch"' EXIT

# --- setup: wheels, entry points, an import check that names what is missing ---------------------
if compgen -G "$wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
        || { echo "gpu.sh: installing the wheels of $wheels failed" >&2; exit 2; }
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$python" - "$site" <<'EOF' || exit 2
"""Declare the project's entry points (pyproject.toml) in a dist-info on PYTHONPATH."""
import pathlib, sys, tomllib
project = tomllib.loads(pathlib.Path("pyproject.toml").read_text())["project"]
info = pathlib.Path(sys.argv[1]) / f"chextriev-{project['version']}.dist-info"
info.mkdir(exist_ok=True)
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: chextriev\nVersion: {project['version']}\n")
groups = {**{"console_scripts": project["scripts"]}, **project["entry-points"]}
(info / "entry_points.txt").write_text("".join(
    f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items()) + "\n"
    for group, entries in groups.items()))
EOF
if ! missing=$("$python" -m service.cli bench --help 2>&1 >/dev/null); then
    echo "gpu.sh: the chextriev command cannot start here:" >&2
    echo "$missing" | tail -5 >&2
    echo "gpu.sh: carry the missing packages as wheels in $wheels (bench/gpu-wheels.sh fetches them)" >&2
    exit 2
fi

# --- the steps -------------------------------------------------------------------------------------
if [ "$smoke" = 1 ]; then
    device=cpu backbone=efficientnet_lite0 weights=default dtype=float32
    images=6 baseline_images=3 warmup=1 batch=2 baseline_batch=2 workers=1 exact_images=3
    gallery=20000 repeats=3 http_gallery=1000 http_args=(--requests 2 --clients 1)
else
    device=cuda backbone=resnet50 weights=random dtype=bfloat16
    images=20000 baseline_images=3000 warmup=512 batch=256 baseline_batch=64 workers=$(($(nproc) - 2))
    exact_images=5000 gallery=1000000 repeats=20 http_gallery=1000000 http_args=()
fi

step() {  # step NAME SECONDS_CAP COMMAND...: run it within the cap and what is left of the budget
    local name=$1 cap=$2; shift 2
    local left=$((budget_s - ($(date +%s) - started)))
    local limit=$((cap < left ? cap : left))
    local begun=$(date +%s) status
    if [ "$limit" -le 10 ]; then
        echo "skipped: no time left in the budget of ${budget_s} s" >"$parts/$name.log"; status=124
    else
        echo "gpu.sh: $name (at most $limit s)" >&2
        timeout --signal=INT --kill-after=20 "$limit" "$@" >"$parts/$name.log" 2>&1
        status=$?
    fi
    echo "$status $(($(date +%s) - begun))" >"$parts/$name.status"
    tail -n 5 "$parts/$name.log" >&2
}

# Cross-validations first when asked for (CROSSVAL_RUNS: a runs file of bench/crossval-runs.sh); their
# archive comes back beside gpu.json.
if [ -n "${CROSSVAL_RUNS:-}" ]; then
    step crossval "${CROSSVAL_CAP_S:-300}" env PYTHON="$python" OMP_NUM_THREADS=2 bench/crossval-runs.sh "$CROSSVAL_RUNS" \
        "$scratch/crossval" "${CROSSVAL_PARALLEL:-6}"
    cp "$scratch/crossval/crossval-runs.tar.gz" "$results/" 2>/dev/null
fi
step features 200 "$python" -m service.cli bench features --device "$device" --backbone "$backbone" \
    --weights "$weights" --dtype "$dtype" --crops device --images "$images" --baseline-images "$baseline_images" \
    --warmup-images "$warmup" --batch-size "$batch" --baseline-batch-size "$baseline_batch" --workers "$workers" \
    --out "$parts/features.json"
step search 100 "$python" -m service.cli bench search --device "$device" --sizes "$gallery" --factory Flat \
    --repeats "$repeats" --out "$parts/search.json"
step features_exact_crops 60 "$python" -m service.cli bench features --device "$device" --backbone "$backbone" \
    --weights "$weights" --dtype "$dtype" --crops device-exact --images "$exact_images" \
    --baseline-images "$baseline_batch" --warmup-images "$warmup" --batch-size "$batch" \
    --baseline-batch-size "$baseline_batch" --workers "$workers" --out "$parts/features_exact_crops.json"
step http 600 env CHEXTRIEV_DEVICE="$device" "$python" -m service.cli bench http --work-dir "$scratch/http" \
    --backbone "$backbone" --extra-gallery "$http_gallery" "${http_args[@]}" --out "$parts/http.json"

# --- one JSON of everything ------------------------------------------------------------------------
"$python" - "$parts" "$results/gpu.json" "$smoke" <<'EOF'
import datetime, json, os, pathlib, platform, sys
parts, out, smoke = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
steps = {}
for status in sorted(parts.glob("*.status")):
    name = status.stem
    code, seconds = (int(field) for field in status.read_text().split())
    report = parts / f"{name}.json"
    steps[name] = {"exit_status": code, "ok": code == 0, "seconds": seconds,
                   "report": json.loads(report.read_text()) if report.is_file() else None,
                   "log_tail": (parts / f"{name}.log").read_text(errors="replace").splitlines()[-30:]}
try:
    import torch
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
except Exception as error:  # the summary is written whatever torch does
    gpu = f"unknown ({error})"
summary = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "smoke": smoke, "machine": {"gpu": gpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
                                       "python": platform.python_version()},
           "steps": steps}
features = (steps.get("features") or {}).get("report")
if features:
    summary["headline"] = {"baseline_images_per_s": features["baseline"]["images_per_s"],
                           "fast_images_per_s": features["fast"]["images_per_s"], "speedup": features["speedup"]}
temporary = out.with_name(f".{out.name}.tmp")
temporary.write_text(json.dumps(summary, indent=2))
os.replace(temporary, out)
print(f"gpu.sh: wrote {out}", file=sys.stderr)
sys.exit(0 if all(step["ok"] for step in steps.values()) else 1)
EOF
