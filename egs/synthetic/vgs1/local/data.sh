#!/usr/bin/env bash
# Stage 1 for the synthetic corpus: generate it (deterministic), then prepare data dirs.
set -euo pipefail
n_train=200     # images in each split (5 spoken captions each)
n_val=40
n_test=40
seed=1
corpus=corpus   # where the generated corpus goes
datadir=data
help_message="Usage: $0 [--n_train N] [--n_val N] [--n_test N] [--seed S] [--corpus DIR] [--datadir DIR]"
recipe=$(python3 -c 'import espnet_recipes, os; print(os.path.dirname(espnet_recipes.__file__))' 2>/dev/null || echo ../../../espnet_recipes)
. "${recipe}/TEMPLATE/vgs1/parse_options.sh"

if [ -f "${corpus}/.done" ]; then
    echo "synthetic corpus already in ${corpus}"
else
    vgs-synth --out "${corpus}" --n-train "${n_train}" --n-val "${n_val}" --n-test "${n_test}" --seed "${seed}"
    touch "${corpus}/.done"
fi
vgs-prepare --corpus spokencoco --root "${corpus}" --out "${datadir}"
