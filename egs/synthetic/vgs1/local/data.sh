#!/usr/bin/env bash
# Stage 1 for the synthetic corpus: generate it (deterministic), then prepare data dirs.
# Train captions use the train voices only; val and test captions the test voices only
# (s3prl_vgs.data.synthetic.DEMO_TRAIN_VOICES / DEMO_TEST_VOICES), so recall is on unseen speakers.
set -euo pipefail
n_train=1500    # images in each split (5 spoken captions each)
n_val=100
n_test=500      # chance R@10 = 2%
seed=1
corpus=corpus   # where the generated corpus goes
datadir=data
train_voices="en-us+m1 en-us+m2 en-us+m3 en-us+m5 en-us+m6 en-us+m7 en-us+f1 en-us+f2 en-us+f4 en-gb+m1 en-gb+f1 en-gb+m3"
test_voices="en-us+m4 en-us+f3 en-us+m8 en-gb+f2"
jobs=2          # espeak-ng processes at once
help_message="Usage: $0 [--n_train N] [--n_val N] [--n_test N] [--seed S] [--corpus DIR] [--datadir DIR] [--train_voices 'V ...'] [--test_voices 'V ...'] [--jobs N]"
. ./path.sh   # sets ${recipe}
. "${recipe}/TEMPLATE/vgs1/parse_options.sh"

if [ -f "${corpus}/.done" ]; then
    echo "synthetic corpus already in ${corpus}"
else
    # shellcheck disable=SC2086
    vgs-synth --out "${corpus}" --n-train "${n_train}" --n-val "${n_val}" --n-test "${n_test}" --seed "${seed}" \
        --voices ${train_voices} --test-voices ${test_voices} --jobs "${jobs}"
    touch "${corpus}/.done"
fi
vgs-prepare --corpus spokencoco --root "${corpus}" --out "${datadir}"
