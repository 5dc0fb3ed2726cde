#!/usr/bin/env bash
# The trainer container: the offline pipeline, publishing into the volume the api reads.
#
#   entrypoint-trainer.sh train-index FEATURES_OPTIONS...
#       features -> train -> checkpoint published as $CHEXTRIEV_CHECKPOINTS_DIR/$RUN
#       -> gallery embeddings -> index snapshot $RUN published into $CHEXTRIEV_INDEX_STORE
#   entrypoint-trainer.sh index FEATURES_OPTIONS...
#       the same without training: the gallery embedded with the model in service, $CHEXTRIEV_CHECKPOINT,
#       so the api can activate the snapshot without a restart (POST /admin/index/activate)
#   entrypoint-trainer.sh COMMAND [ARGUMENT...]
#       any other chextriev command, e.g. `evaluate ...` or `index list --store /data/index`
#
# FEATURES_OPTIONS are those of `chextriev features` except --out: the backbone, the dataset and
# e.g. --batch-size or --dtype, as in `--backbone resnet50 --manifest /datasets/gallery.csv`.
# Environment:
#   CHEXTRIEV_RUN              name of the run, of its checkpoint and of its snapshot (default: UTC time);
#                              running the same name again resumes it (features, training, checkpoint)
#   CHEXTRIEV_TRAIN_OPTIONS    further `chextriev train` options, e.g. "--variant V6 --accelerator gpu"
#   CHEXTRIEV_INDEX_OPTIONS    further `chextriev index build` options, e.g. "--factory IVF1024,SQ8"
#   CHEXTRIEV_GALLERY_SPLIT    split to put in the index (default: all)
#   CHEXTRIEV_RUNS_DIR         work directory of the runs (features, training logs, embeddings)
#   CHEXTRIEV_CHECKPOINTS_DIR, CHEXTRIEV_INDEX_STORE   where checkpoints and snapshots are published
#   CHEXTRIEV_PATIENT_SALT(_FILE)   salt of the snapshot's patient keys: the api's own
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  echo "usage: $ENTRYPOINT_NAME train-index|index FEATURES_OPTIONS... | COMMAND [ARGUMENT...]" >&2
  exit 2
}

# Copy a checkpoint directory to `target` atomically (a partial copy under a hidden name, flushed,
# then renamed); an identical checkpoint already there is kept, a different one is refused.
publish_checkpoint() {
  local source="$1" target="$2" partial
  if [ -e "$target" ]; then
    diff -rq "$source" "$target" >/dev/null ||
      fail "$target already holds another checkpoint: choose another CHEXTRIEV_RUN"
    return 0
  fi
  partial="$(dirname "$target")/.partial-$(basename "$target")-$$"
  mkdir -p "$(dirname "$target")"
  cp -R "$source" "$partial"
  sync "$partial" "$partial"/*
  mv -T "$partial" "$target"
  sync "$(dirname "$target")"
}

load_secret_files
[ "$#" -gt 0 ] || usage
role="$1"
case "$role" in
  train-index | index) shift ;;
  *) exec chextriev "$@" ;;
esac

run="${CHEXTRIEV_RUN:-$(date -u +%Y%m%dT%H%M%SZ)}"
[[ "$run" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || fail "CHEXTRIEV_RUN=$run: use letters, digits, '.', '_' and '-'"
work="${CHEXTRIEV_RUNS_DIR:?set CHEXTRIEV_RUNS_DIR}/$run"
store="${CHEXTRIEV_INDEX_STORE:?set CHEXTRIEV_INDEX_STORE}"
read -r -a train_options <<< "${CHEXTRIEV_TRAIN_OPTIONS:-}"
read -r -a index_options <<< "${CHEXTRIEV_INDEX_OPTIONS:-}"
echo "$ENTRYPOINT_NAME: $role run $run in $work" >&2

chextriev features --out "$work/features" "$@"
if [ "$role" = train-index ]; then
  checkpoint="${CHEXTRIEV_CHECKPOINTS_DIR:?set CHEXTRIEV_CHECKPOINTS_DIR}/$run"
  if [ ! -e "$work/training/checkpoint" ]; then
    chextriev train --features "$work/features" --out "$work/training" "${train_options[@]}"
  fi
  publish_checkpoint "$work/training/checkpoint" "$checkpoint"
else
  checkpoint="${CHEXTRIEV_CHECKPOINT:?set CHEXTRIEV_CHECKPOINT to the checkpoint of the model in service}"
fi
chextriev embed --features "$work/features" --checkpoint "$checkpoint" \
  --split "${CHEXTRIEV_GALLERY_SPLIT:-all}" --out "$work/gallery.npz"
chextriev index build --embeddings "$work/gallery.npz" --store "$store" --version "$run" "${index_options[@]}"
echo "$ENTRYPOINT_NAME: published snapshot $run of model $checkpoint into $store" >&2
