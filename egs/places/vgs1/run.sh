#!/usr/bin/env bash
# Places Audio Captions 2020 (400k spoken captions of Places205 images): FaST-VGS (default) or speech-guided MIM (--model vg_mim).
# Set the corpus root first: export PLACES=/path/to/corpus (see local/data.sh).
# Validation as the official code: on dev_seen and dev_unseen. ESPnet's validation (loss, whole-split recall,
# checkpoint selection) runs on dev = dev_seen + dev_unseen (local/data.sh); stage 6 evaluates dev_seen,
# dev_unseen, test_seen and test_unseen, each with its own gallery, and reports each pair and its mean
# (exp/<tag>/decode/{dev,test}/results.{json,md}), the numbers the papers give.
# With the older metadata/{train,val}.json use --valid_set val --test_sets val --eval_means "".
# Stage 6 scores the first 25 s of each caption, as the official evaluation crops to audio_feat_len
# (the papers' setting; --eval_opts "" scores whole captions).
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh   # sets ${recipe}
exec "${recipe}/TEMPLATE/vgs1/vgs.sh" \
    --train_set train --valid_set dev --test_sets "dev_seen dev_unseen test_seen test_unseen" \
    --eval_opts "--max-audio-sec 25" \
    --eval_means "dev=dev_seen,dev_unseen test=test_seen,test_unseen" \
    "$@"
