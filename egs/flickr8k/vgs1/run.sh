#!/usr/bin/env bash
# Flickr8k Audio Caption Corpus (8k images, 5 spoken captions each): FaST-VGS (default) or speech-guided MIM (--model vg_mim).
# Set the corpus root first: export FLICKR8K=/path/to/corpus (see local/data.sh).
set -euo pipefail
cd "$(dirname "$0")"
recipe=$(python3 -c 'import espnet_recipes, os; print(os.path.dirname(espnet_recipes.__file__))' 2>/dev/null || echo ../../../espnet_recipes)
exec "${recipe}/TEMPLATE/vgs1/vgs.sh" \
    --train_set train --valid_set dev --test_sets "test" \
    "$@"
