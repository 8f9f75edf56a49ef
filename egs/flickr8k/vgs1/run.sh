#!/usr/bin/env bash
# Flickr8k Audio Caption Corpus (8k images, 5 spoken captions each): FaST-VGS (default) or speech-guided MIM (--model vg_mim).
# Set the corpus root first: export FLICKR8K=/path/to/corpus (see local/data.sh).
#
# Fine-tuning a SpokenCOCO model on Flickr8k (the papers' starred rows: trained on SpokenCOCO, then Flickr8k):
#   ./run.sh --init_from ../../spokencoco/vgs1/exp/fast_vgs
# --init_from takes a SpokenCOCO experiment dir (its exported model/, written by that recipe's stage 6) or any
# model dir (config.yaml + model.safetensors, e.g. from vgs-convert of the official COCO checkpoint). Stage 5
# then starts from those weights (ESPnet's --init_param <dir>/model.safetensors::model) with this recipe's
# config; the model sizes must match it. The experiment is exp/<model>_ft_<name of the SpokenCOCO exp>.
# Stage 6 scores the first 10 s of each caption, as the official evaluation crops to audio_feat_len
# (the papers' setting; --eval_opts "" scores whole captions).
set -euo pipefail
cd "$(dirname "$0")"
. ./path.sh   # sets ${recipe}

init_from="" train_args="" tag="" model=fast_vgs args=()
while [ $# -gt 0 ]; do   # the options this script reads; the others (and --model) go to vgs.sh unchanged
    case "$1" in
        --init_from) init_from=$2; shift 2 ;;
        --train_args) train_args=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --model) model=$2; args+=("$1" "$2"); shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -n "${init_from}" ]; then
    init_from=${init_from%/}
    if [ -f "${init_from}/model.safetensors" ]; then
        init=${init_from}; name=$(basename "${init_from}")
        [ "${name}" = model ] && name=$(basename "$(dirname "${init_from}")")
    elif [ -f "${init_from}/model/model.safetensors" ]; then
        init=${init_from}/model; name=$(basename "${init_from}")
    else
        echo "$0: --init_from ${init_from}: no model.safetensors there or in ${init_from}/model (run stage 6 of the SpokenCOCO recipe, or vgs-export)" >&2
        exit 1
    fi
    if [ -z "${tag}" ]; then   # as vgs.sh names experiments: the overrides, then --train_args
        tag="${model}_ft_${name}$(echo "${train_args}" | sed -e "s/--/\_/g" -e "s/[ |=/]//g")"
    fi
    train_args="--init_param ${init}/model.safetensors::model ${train_args}"
fi
[ -n "${tag}" ] && args+=(--tag "${tag}")
[ -n "${train_args}" ] && args+=(--train_args "${train_args}")
exec "${recipe}/TEMPLATE/vgs1/vgs.sh" \
    --train_set train --valid_set dev --test_sets "test" \
    --eval_opts "--max-audio-sec 10" \
    ${args[@]+"${args[@]}"}
