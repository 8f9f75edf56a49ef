#!/usr/bin/env bash
# Places Audio Captions 2020 (400k spoken captions of Places205 images): FaST-VGS (default) or speech-guided MIM (--model vg_mim).
# Set the corpus root first: export PLACES=/path/to/corpus (see local/data.sh).
# Splits of the 2020 metadata; with the older metadata/{train,val}.json use --valid_set val --test_sets val.
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh   # sets ${recipe}
exec "${recipe}/TEMPLATE/vgs1/vgs.sh" \
    --train_set train --valid_set dev_seen --test_sets "test_seen test_unseen" \
    "$@"
