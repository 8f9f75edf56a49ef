#!/usr/bin/env bash
# Visually grounded speech recipe: stage runner shared by every egs/<corpus>/vgs1.
# Usage: ./run.sh [--stage N] [--stop_stage M] [options]   (see --help)
set -euo pipefail

log() { echo -e "$(date '+%Y-%m-%dT%H:%M:%S') ($(basename "$0")) $*"; }

# Defaults. Every one can be set as --name value.
stage=1              # first stage to run
stop_stage=100       # last stage to run
model=fast_vgs       # fast_vgs | vg_mim
train_set=train      # data/<set> names
valid_set=val
test_sets="test"
datadir=data         # Kaldi-style data dirs (stage 1)
dumpdir=dump         # features and formatted audio (stages 2-3)
expdir=exp           # models and results
nj=1                 # parallel jobs for feature extraction
ngpu=0               # GPUs for training (0 = CPU)
roi_opts=""          # extra options of vgs-extract-roi (e.g. "--boxes corpus/boxes.json")
local_data_opts=""   # options of local/data.sh
python=python3

help_message="Usage: $0 [--stage N] [--stop_stage M] [--model fast_vgs|vg_mim] [--nj N] [--ngpu N] ...
Stages: 1 data prep, 2 audio check/format, 3 image features, 4 collect stats, 5 training,
        6 retrieval evaluation, 7 S3PRL upstream export, 8 probing, 9 ZeroSpeech 2021"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "${here}/parse_options.sh"

missing() { log "Stage $1: $2 is not implemented yet in this version of s3prl-vgs; skipping."; }

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "Stage 1: data preparation -> ${datadir}/{${train_set},${valid_set},${test_sets// /,}}"
    # shellcheck disable=SC2086
    local/data.sh ${local_data_opts}   # writes and validates the data dirs
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    log "Stage 2: audio check (16 kHz mono)"
    for dset in ${train_set} ${valid_set} ${test_sets}; do
        vgs-validate "${datadir}/${dset}"
    done
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    if [ "${model}" = fast_vgs ]; then
        for dset in ${train_set} ${valid_set} ${test_sets}; do
            out="${dumpdir}/roi/${dset}.h5"
            log "Stage 3: RoI features of ${datadir}/${dset} -> ${out}"
            mkdir -p "$(dirname "${out}")"
            # shellcheck disable=SC2086
            vgs-extract-roi --data "${datadir}/${dset}" --out "${out}" ${roi_opts}
        done
    else
        log "Stage 3: ${model} reads images directly (img.scp); nothing to extract"
    fi
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then missing 4 "ESPnet collect-stats"; fi
if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then missing 5 "training through ESPnet's trainer"; fi
if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then missing 6 "retrieval evaluation (vgs-evaluate)"; fi
if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ]; then missing 7 "S3PRL upstream export"; fi
if [ "${stage}" -le 8 ] && [ "${stop_stage}" -ge 8 ]; then missing 8 "SUPERB-style probing"; fi
if [ "${stage}" -le 9 ] && [ "${stop_stage}" -ge 9 ]; then missing 9 "ZeroSpeech 2021 evaluation"; fi
log "Done: stages ${stage}-${stop_stage}"
