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

# ESPnet validates on one set: dev = dev_seen + dev_unseen (training's valid loss over both), and
# dev/utt2subset names each utterance's set, so training's validation recall scores dev_seen and
# dev_unseen each with its own gallery and selects on their mean, as the official code does. Stage 6
# evaluates them the same way and reports both and their mean (run.sh: --test_sets and --eval_means).
if [ -d "${datadir}/dev_seen" ] && [ -d "${datadir}/dev_unseen" ]; then
    python3 - "${datadir}" <<'PY'
import sys
from pathlib import Path
from s3prl_vgs.data.datadir import DataDir, write_scp
root = Path(sys.argv[1])
seen, unseen = DataDir.read(root / "dev_seen"), DataDir.read(root / "dev_unseen")
both = set(seen.wav) & set(unseen.wav)
if both:
    sys.exit(f"{root}/dev_seen and dev_unseen share utterance ids (e.g. {sorted(both)[0]}); cannot make {root}/dev")
clash = [i for i in set(seen.img) & set(unseen.img) if seen.img[i] != unseen.img[i]]
if clash:
    sys.exit(f"{root}/dev_seen and dev_unseen give image id {clash[0]} different files; cannot make {root}/dev")
dev = DataDir(**{a: {**getattr(seen, a), **getattr(unseen, a)} for a in DataDir._NAMES})
dev.write(root / "dev")
write_scp(root / "dev" / "utt2subset", {**{u: "dev_seen" for u in seen.wav}, **{u: "dev_unseen" for u in unseen.wav}})
print(f"wrote {root}/dev = dev_seen + dev_unseen ({len(dev.wav)} utterances) and {root}/dev/utt2subset", file=sys.stderr)
PY
    vgs-validate "${datadir}/dev"
fi
