#!/usr/bin/env bash
# Synthetic spoken-caption corpus: the demo and the recipe that CI runs.
# No pretrained detector can be downloaded here, so stage 3 pools a seeded random
# ResNet-50 at the corpus's ground-truth boxes (colour and shape survive random conv features).
# Training uses conf/train_<model>_tiny.yaml (--config_suffix _debug: a few iterations only).
set -euo pipefail
cd "$(dirname "$0")"
recipe=$(python3 -c 'import espnet_recipes, os; print(os.path.dirname(espnet_recipes.__file__))' 2>/dev/null || echo ../../../espnet_recipes)
exec "${recipe}/TEMPLATE/vgs1/vgs.sh" \
    --train_set train --valid_set val --test_sets test --config_suffix _tiny \
    --roi_opts "--boxes corpus/boxes.json --weights random --min-size 224 --max-size 224" \
    "$@"
