#!/usr/bin/env bash
# Synthetic spoken-caption corpus: the demo (`make demo`) and the recipe that CI runs.
#
#   ./run.sh                      the demo: data, then FaST-VGS, speech-guided MIM and VG-HuBERT(M)
#                                 (conf/train_<run>_tiny.yaml), then one table -> exp/RESULTS.md
#   ./run.sh --model fast_vgs ... one model, as any egs/<corpus>/vgs1/run.sh (options: vgs.sh --help)
#   ./run.sh --config_suffix _debug --local_data_opts "--n_train 6 --n_val 2 --n_test 2"   CI size
#
# Captions of the train split are spoken by 12 espeak-ng voices and those of val and test by 4
# others (local/data.sh), so every reported recall is on unseen speakers.
# No pretrained detector can be downloaded here, so stage 3 pools the package's stand-in for
# bottom-up attention's detector at the corpus's ground-truth boxes: synth_roi128, a small CNN
# trained by vgs-pretrain-roi on another seed's drawn objects to name their shape, colour and size
# (as the real detector was trained on Visual Genome's objects and attributes).
set -euo pipefail
cd "$(dirname "$0")"
# The demo runs one process at a time, so it gives that process the cores (up to 4) instead of
# vgs.sh's one thread per process (right for parallel jobs and DDP ranks on busy cores).
nproc_=$(nproc 2>/dev/null || echo 1)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( nproc_ < 4 ? nproc_ : 4 ))}
. ./path.sh   # sets ${recipe}
vgs="${recipe}/TEMPLATE/vgs1/vgs.sh"
common=(--train_set train --valid_set val --test_sets test
        --roi_opts "--boxes corpus/boxes.json --weights synth_roi128 --min-size 224 --max-size 224")

# One model when asked for one (--model / --train_config): the plain recipe.
for arg in "$@"; do
    case "${arg}" in --model|--train_config) exec "${vgs}" "${common[@]}" --config_suffix _tiny "$@" ;; esac
done

# The demo: the three model runs share stages 1-2 (data) of the first one.
suffix=_tiny expdir=exp stage=1 stop_stage=100 train_args=""
args=("$@")
while [ $# -gt 0 ]; do   # the options this script itself needs; all are passed on to vgs.sh too
    case "$1" in
        --config_suffix) suffix=$2 ;; --expdir) expdir=$2 ;; --stage) stage=$2 ;; --stop_stage) stop_stage=$2 ;;
        --train_args) train_args=$2 ;;
    esac
    shift
done
runs=("FaST-VGS:fast_vgs:fast_vgs" "speech-guided MIM:vg_mim:vg_mim" "VG-HuBERT(M):vg_mim:vg_hubert")
mkdir -p "${expdir}"
timings=${expdir}/timings.tsv
if [ "${stage}" -le 1 ]; then : > "${timings}"; fi
first_stage=${stage}
table=()
for run in "${runs[@]}"; do
    IFS=: read -r label model name <<< "${run}"
    tag=${name}${suffix}
    # vgs.sh names the experiment after --train_args too (ESPnet's convention)
    if [ -n "${train_args}" ]; then tag+="$(echo "${train_args}" | sed -e "s/--/\_/g" -e "s/[ |=/]//g")"; fi
    start=${SECONDS}
    "${vgs}" "${common[@]}" --config_suffix "${suffix}" "${args[@]}" \
        --stage "${first_stage}" --model "${model}" --train_config "conf/train_${name}${suffix}.yaml"
    printf '%s\t%s\t%s\n' "${tag}" "${first_stage}-${stop_stage}" "$((SECONDS - start))" >> "${timings}"
    table+=(--run "${label}=${tag}")
    # the data (stages 1-2) are shared; the next models start at stage 3 unless told otherwise
    if [ "${first_stage}" -lt 3 ]; then first_stage=3; fi
done
if [ "${stop_stage}" -ge 6 ]; then
    python3 local/results_table.py --exp "${expdir}" --test_set test "${table[@]}"
    echo "(also in ${expdir}/RESULTS.md)"
fi
