#!/usr/bin/env bash
# One session of a training run kept in this repository (runs/<name>/), for machines that keep nothing
# between sessions: unpack the committed state into a work dir, train for a while, pack it back.
#
#   bash runs/session.sh <name> [minutes=120] [threads=1] [train_tiny.py flags...]
#
# Flags after the threads go to train_tiny.py after the recipe's and win over them (e.g. --device cuda
# continues a CPU run on a GPU; flags that shape the model or data cannot change, --resume refuses).
# recipe.args holds plain flags separated by blanks ('#' comments allowed; no quoting).
# Then commit runs/<name>/state.packed.pt (see runs/README.md).
#
# The committed state is the truth: the work dir, under $WORK_ROOT (default /tmp/delta-cache-runs), is
# named after the packed file's content, so a session that was interrupted resumes its own work dir,
# and a newer commit gets a fresh one. $RUNS_DIR replaces runs/ (tests).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: bash runs/session.sh <name> [minutes] [threads] [train_tiny.py flags...]}
minutes=${2:-120}
threads=${3:-1}
extra=("${@:4}")
run=${RUNS_DIR:-runs}/$name
packed=$run/state.packed.pt
if [ ! -f "$run/recipe.args" ]; then
    echo "runs/session.sh: no run '$name' ($run/recipe.args is missing)" >&2
    exit 2
fi
tag=start
if [ -f "$packed" ]; then
    tag=$(sha256sum "$packed" | cut -c1-12)
fi
root=${WORK_ROOT:-/tmp/delta-cache-runs}
work=$root/$name-$tag.work
out=$root/$name-$tag
read -r -a recipe <<< "$(sed 's/#.*//' "$run/recipe.args" | tr '\n' ' ')"
resume=()
if [ -f "$work/state.pt" ]; then
    resume=(--resume)
elif [ -f "$packed" ]; then
    python scripts/train_tiny.py --unpack_state "$packed" --work_dir "$work"
    resume=(--resume)
fi
status=0
python scripts/train_tiny.py "${recipe[@]}" --out "$out" --work_dir "$work" --threads "$threads" \
    --stop_after_minutes "$minutes" "${resume[@]}" "${extra[@]}" || status=$?
if [ -f "$work/state.pt" ]; then  # (none when the run failed before its first checkpoint)
    python scripts/train_tiny.py --pack_state "$packed" --work_dir "$work"
fi
if [ "$status" -eq 0 ] && [ -d "$out" ]; then
    echo "runs/session.sh: the run is complete: its checkpoint is $out"
fi
exit "$status"
