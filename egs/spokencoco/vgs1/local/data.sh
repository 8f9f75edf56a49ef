#!/usr/bin/env bash
# Stage 1 for spokencoco: data dirs for every split vgs-prepare finds under the corpus root.
set -euo pipefail
corpus_root=${SPOKENCOCO:-}   # directory holding SpokenCOCO/ (SpokenCOCO_*_karpathy.json + wavs/) next to train2014/ and val2014/
datadir=data
nj=8                 # threads for the file checks
help_message="Usage: $0 [--corpus_root DIR] [--datadir DIR] [--nj N]   (or export SPOKENCOCO=DIR)"
. ./path.sh   # sets ${recipe}
. "${recipe}/TEMPLATE/vgs1/parse_options.sh"

if [ -z "${corpus_root}" ]; then
    echo "$0: set the spokencoco corpus root: export SPOKENCOCO=/path/to/corpus or --local_data_opts '--corpus_root DIR'" >&2
    exit 1
fi
vgs-prepare --corpus spokencoco --root "${corpus_root}" --out "${datadir}" --nj "${nj}"
