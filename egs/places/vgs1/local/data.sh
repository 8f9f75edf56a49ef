#!/usr/bin/env bash
# Stage 1 for places: data dirs for every split vgs-prepare finds under the corpus root.
set -euo pipefail
corpus_root=${PLACES:-}   # directory holding metadata/{train,dev_seen,dev_unseen,test_seen,test_unseen}_2020.json, the wavs and images/
datadir=data
nj=8                 # threads for the file checks
help_message="Usage: $0 [--corpus_root DIR] [--datadir DIR] [--nj N]   (or export PLACES=DIR)"
. ./path.sh   # sets ${recipe}
. "${recipe}/TEMPLATE/vgs1/parse_options.sh"

if [ -z "${corpus_root}" ]; then
    echo "$0: set the places corpus root: export PLACES=/path/to/corpus or --local_data_opts '--corpus_root DIR'" >&2
    exit 1
fi
vgs-prepare --corpus places --root "${corpus_root}" --out "${datadir}" --nj "${nj}"
