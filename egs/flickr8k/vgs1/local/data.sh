#!/usr/bin/env bash
# Stage 1 for flickr8k: data dirs for every split vgs-prepare finds under the corpus root.
set -euo pipefail
corpus_root=${FLICKR8K:-}   # directory holding flickr_audio/ (wav2capt.txt, wav2spk.txt, wavs/), the Flickr_8k.*Images.txt lists and Flicker8k_Dataset/
datadir=data
nj=8                 # threads for the file checks
help_message="Usage: $0 [--corpus_root DIR] [--datadir DIR] [--nj N]   (or export FLICKR8K=DIR)"
. ./path.sh   # sets ${recipe}
. "${recipe}/TEMPLATE/vgs1/parse_options.sh"

if [ -z "${corpus_root}" ]; then
    echo "$0: set the flickr8k corpus root: export FLICKR8K=/path/to/corpus or --local_data_opts '--corpus_root DIR'" >&2
    exit 1
fi
vgs-prepare --corpus flickr8k --root "${corpus_root}" --out "${datadir}" --nj "${nj}"
