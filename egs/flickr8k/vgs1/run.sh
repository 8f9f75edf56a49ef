#!/usr/bin/env bash
# Flickr8k Audio Caption Corpus (8k images, 5 spoken captions each): FaST-VGS (default) or speech-guided MIM (--model vg_mim).
# Set the corpus root first: export FLICKR8K=/path/to/corpus (see local/data.sh).
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh   # sets ${recipe}
exec "${recipe}/TEMPLATE/vgs1/vgs.sh" \
    --train_set train --valid_set dev --test_sets "test" \
    "$@"
