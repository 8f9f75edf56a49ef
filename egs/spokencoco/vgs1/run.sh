#!/usr/bin/env bash
# SpokenCOCO (Karpathy splits of COCO 2014, 5 spoken captions per image): FaST-VGS (default) or speech-guided MIM (--model vg_mim).
# Set the corpus root first: export SPOKENCOCO=/path/to/corpus (see local/data.sh).
# Stage 6 scores the first 10 s of each caption, as the official evaluation crops to audio_feat_len
# (the papers' setting; --eval_opts "" scores whole captions).
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh   # sets ${recipe}
exec "${recipe}/TEMPLATE/vgs1/vgs.sh" \
    --train_set train --valid_set val --test_sets "test" \
    --eval_opts "--max-audio-sec 10" \
    "$@"
