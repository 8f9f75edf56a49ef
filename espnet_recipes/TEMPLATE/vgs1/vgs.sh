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
dumpdir=dump         # features, formatted audio and ESPnet inputs (stages 2-4)
expdir=exp           # models and results
nj=1                 # parallel jobs for audio formatting, RoI extraction (stage 3) and collect-stats
eval_nj=""           # stage 6: evaluation jobs, each encoding 1/eval_nj of a test set (default: --ngpu if > 0, else --nj)
min_wav_sec=0.1      # stage 2: train/valid utterances shorter than this are dropped (listed in <dir>/dropped)
max_wav_sec=inf      # stage 2: ... and longer than this (test sets are never filtered)
ngpu=0               # GPUs for training (0 = CPU; >1 = DDP, one process per GPU), RoI extraction and evaluation
dist_backend=""      # stage 5: ESPnet's --dist_backend (default nccl); gloo without CUDA: --ngpu N runs N CPU processes
roi_opts=""          # extra options of vgs-extract-roi (e.g. "--boxes corpus/boxes.json")
local_data_opts=""   # options of local/data.sh
train_config=""      # ESPnet training config (default: conf/train_${model}${config_suffix}.yaml)
config_suffix=""     # picks conf/train_<model><suffix>.yaml, e.g. _tiny or _debug
tag=""               # experiment name: ${expdir}/<tag> (default: the config's name without train_)
train_args=""        # extra options of espnet_recipes.bin.vgs_train (e.g. "--max_epoch 1")
checkpoint=""        # stages 6-7: ESPnet checkpoint to export (default: best by the config's criterion)
eval_opts=""         # extra options of vgs-evaluate
eval_means=""        # stage 6: NAME=SET1,SET2 ...: those test sets side by side and their mean in decode/NAME (Places: dev_seen + dev_unseen)
plots=true           # stage 6: also draw pictures (vgs-plots) into ${exp}/plots
probe_tasks="fluent_commands"  # stage 8: s3prl downstream tasks (-d) to probe
probe_data=""        # stage 8: TASK=DIR data roots (default for fluent_commands: corpus/fluent_commands of the synthetic recipe)
probe_steps=""       # stage 8: training steps per probe (default: the task config's; 300 on the synthetic corpus)
probe_opts=""        # stage 8: extra options of python -m s3prl_vgs.upstream.probe run (e.g. "--batch_size 16 --lr 1e-4")
zr2021_dir=""        # stage 9: ZeroSpeech 2021 dataset root (default: the tiny espeak-ng set of vgs-synth-zr2021, in dumpdir)
zerospeech_opts=""   # stage 9: extra options of vgs-zerospeech (e.g. "--phonetic-layer all" or "--pooling mean")
python=python3

help_message="Usage: $0 [--stage N] [--stop_stage M] [--model fast_vgs|vg_mim] [--nj N] [--ngpu N] ...
Stages: 1 data prep, 2 audio formatting (16 kHz mono, duration limits), 3 image features, 4 collect stats, 5 training,
        6 retrieval evaluation, 7 S3PRL upstream export, 8 probing, 9 ZeroSpeech 2021
Training: --train_config FILE (or --config_suffix _tiny|_debug), --tag NAME, --train_args '...'"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "${here}/parse_options.sh"

# --ngpu N --dist_backend gloo where CUDA is missing: stage 5 trains with N CPU processes (DDP over gloo, started
# by torchrun), and every other stage runs on the CPU. A multi-process setup can so be checked without GPUs.
cpu_ranks=0
if [ "${dist_backend}" = gloo ] && [ "${ngpu}" -gt 1 ] && \
    ! ${python} -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    cpu_ranks=${ngpu}; ngpu=0
fi

# As ESPnet's path.sh: one OpenMP thread per process (data workers, DDP ranks);
# several threads fighting over busy cores make small CPU models many times slower.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

train_config=${train_config:-conf/train_${model}${config_suffix}.yaml}
if [ -z "${tag}" ]; then
    tag=$(basename "${train_config}" .yaml); tag=${tag#train_}
    # As ESPnet's asr.sh: overriding options name a different experiment ("--max_epoch 1" -> _max_epoch1),
    # so --resume never continues a differently configured run.
    if [ -n "${train_args}" ]; then
        tag+="$(echo "${train_args}" | sed -e "s/--/\_/g" -e "s/[ |=/]//g")"
    fi
fi
formatted=${dumpdir}/formatted    # stage 2's data dirs (16 kHz mono): what every later stage reads
espnet_dump=${dumpdir}/espnet     # per-set wav.scp, image_id, roi.scp / image.scp (stage 4)
stats_dir=${expdir}/stats_${model}
exp=${expdir}/${tag}
model_dir=${exp}/model           # full exported model dir (stage 6: retrieval)
upstream=${exp}/upstream          # speech-only S3PRL upstream dir (stage 7; stages 8-9 read it)

missing() { log "Stage $1: $2 is not implemented yet in this version of s3prl-vgs; skipping."; }

# As Kaldi's "run.pl JOB=1:N LOG CMD" (ESPnet's ${decode_cmd}; not in the espnet wheel): run_jobs N LOG FUNC
# runs "FUNC J" for J=1..N in the background, J's output in LOG with JOB replaced by J; waits for every job,
# shows the end of each failed job's log, and fails if any did. No job outlives this script.
job_pids=()
run_jobs() {
    local n=$1 logpat=$2 fn=$3 j failed=0
    job_pids=()
    trap 'kill "${job_pids[@]}" 2>/dev/null' INT TERM EXIT
    for j in $(seq 1 "${n}"); do
        "${fn}" "${j}" > "${logpat//JOB/${j}}" 2>&1 &
        job_pids+=($!)
    done
    for j in $(seq 1 "${n}"); do
        wait "${job_pids[$((j - 1))]}" || { log "Error: job ${j}/${n} failed; see ${logpat//JOB/${j}}:"; tail -n 20 "${logpat//JOB/${j}}"; failed=1; }
    done
    trap - INT TERM EXIT
    return "${failed}"
}
# The device of job J (1-based): GPUs in turn when --ngpu > 0, else the CPU.
job_device() { if [ "${ngpu}" -gt 0 ]; then echo "cuda:$((($1 - 1) % ngpu))"; else echo cpu; fi; }

# ESPnet data options of one split: <train|valid> <set>
data_opts() {
    local phase=$1 dir=${espnet_dump}/$2
    echo "--${phase}_data_path_and_name_and_type ${dir}/wav.scp,speech,sound"
    echo "--${phase}_data_path_and_name_and_type ${dir}/image_id,image_id,text_int"
    if [ "${model}" = fast_vgs ]; then
        echo "--${phase}_data_path_and_name_and_type ${dir}/roi.scp,roi_feats,roi_feats"
        echo "--${phase}_data_path_and_name_and_type ${dir}/roi.scp,roi_boxes,roi_boxes"
    else
        echo "--${phase}_data_path_and_name_and_type ${dir}/image.scp,image,image"
    fi
}

# What collect-stats' output depends on: the train/valid ESPnet inputs (stage 4) and utterance lengths (stage 2),
# one "<phase> <file> <sha256>" line per file. Stage 4 stores it with the stats and collects again when the data
# changed; stage 5 refuses stats of other data.
data_fingerprint() {
    local phase dset f
    for phase in train valid; do
        dset=${train_set}; [ "${phase}" = valid ] && dset=${valid_set}
        for f in "${espnet_dump}/${dset}"/* "${formatted}/${dset}/utt2num_samples"; do
            [ -f "${f}" ] && echo "${phase} ${f} $(sha256sum < "${f}" | cut -d' ' -f1)"
        done
    done
    return 0
}
fingerprint_file=${stats_dir}/data_fingerprint
# Empty when ${stats_dir} was collected from the current data, else what changed.
stats_mismatch() {
    [ -f "${fingerprint_file}" ] || { echo "${fingerprint_file} is missing (stats of an unknown data state)"; return 0; }
    local changed
    changed=$(diff <(data_fingerprint) "${fingerprint_file}" | awk '/^[<>]/ { print $3 }' | sort -u | tr '\n' ' ')
    [ -z "${changed}" ] || echo "the data changed since they were collected: ${changed% }"
}

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 4 ]; then
    [ -f "${train_config}" ] || { log "Error: no training config ${train_config} (see --train_config)"; exit 1; }
    # One-line error for a non-mapping config, an unknown model or a bad model_conf (keys, types).
    config_model=$(${python} -m espnet_recipes.bin.vgs_train --check_config "${train_config}") || exit 1
    if [ "${config_model}" != "${model}" ]; then
        log "Error: ${train_config} trains '${config_model}' but the recipe runs --model ${model}"; exit 1
    fi
fi

if [ "${stage}" -le 1 ] && [ "${stop_stage}" -ge 1 ]; then
    log "Stage 1: data preparation -> ${datadir}/{${train_set},${valid_set},${test_sets// /,}}"
    # shellcheck disable=SC2086
    local/data.sh ${local_data_opts}   # writes and validates the data dirs
fi

if [ "${stage}" -le 2 ] && [ "${stop_stage}" -ge 2 ]; then
    # As ESPnet's format_wav_scp.sh + its stage 4: resample, mix to mono, run wav.scp pipes, and drop
    # train/valid utterances outside the duration limits. 16 kHz mono files are referenced, not copied.
    for dset in ${train_set} ${valid_set} ${test_sets}; do
        limits=""
        case " ${train_set} ${valid_set} " in
            *" ${dset} "*) limits="--min_wav_sec ${min_wav_sec} --max_wav_sec ${max_wav_sec}" ;;
        esac
        log "Stage 2: formatting ${datadir}/${dset} -> ${formatted}/${dset} ${limits}"
        # shellcheck disable=SC2086
        ${python} -m espnet_recipes.bin.vgs_format --data "${datadir}/${dset}" --out "${formatted}/${dset}" \
            --nj "${nj}" --quiet ${limits}
        vgs-validate "${formatted}/${dset}"
    done
fi

if [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    if [ "${model}" = fast_vgs ]; then
        for dset in ${train_set} ${valid_set} ${test_sets}; do
            out="${dumpdir}/roi/${dset}.h5"
            mkdir -p "$(dirname "${out}")"
            roi_device=""; [ "${ngpu}" -gt 0 ] && roi_device="--device cuda"
            if [ "${nj}" -le 1 ]; then
                log "Stage 3: RoI features of ${formatted}/${dset} -> ${out}"
                # shellcheck disable=SC2086
                vgs-extract-roi --data "${formatted}/${dset}" --out "${out}" ${roi_device} ${roi_opts}
            else
                # Job J extracts chunks J-1, J-1+nj, ... into ${out}.parts/ (resumable); --merge writes ${out},
                # the same bytes as one job's.
                roi_logdir=${dumpdir}/roi/log; mkdir -p "${roi_logdir}"
                log "Stage 3: RoI features of ${formatted}/${dset} -> ${out} (${nj} jobs, logs: ${roi_logdir}/${dset}.*.log)"
                # shellcheck disable=SC2086
                roi_job() {   # with --ngpu 0 the extractor picks its device itself, as one job does
                    local dev=(); [ "${ngpu}" -gt 0 ] && dev=(--device "$(job_device "$1")")
                    vgs-extract-roi --data "${formatted}/${dset}" --out "${out}" --nj "${nj}" --job "$1" \
                        ${dev[@]+"${dev[@]}"} --no-progress ${roi_opts}; }
                run_jobs "${nj}" "${roi_logdir}/${dset}.JOB.log" roi_job || exit 1
                # shellcheck disable=SC2086
                vgs-extract-roi --data "${formatted}/${dset}" --out "${out}" --nj "${nj}" --merge ${roi_opts}
            fi
        done
    else
        log "Stage 3: ${model} reads images directly (img.scp); nothing to extract"
    fi
fi

if [ "${stage}" -le 4 ] && [ "${stop_stage}" -ge 4 ]; then
    for dset in ${train_set} ${valid_set}; do
        roi=""; [ "${model}" = fast_vgs ] && roi="--roi ${dumpdir}/roi/${dset}.h5"
        log "Stage 4: ESPnet inputs of ${formatted}/${dset} -> ${espnet_dump}/${dset}"
        # shellcheck disable=SC2086
        ${python} -m espnet_recipes.bin.vgs_dump --data "${formatted}/${dset}" --out "${espnet_dump}/${dset}" ${roi}
    done
    why=""
    if [ -f "${stats_dir}/train/speech_shape" ] && [ -f "${stats_dir}/valid/speech_shape" ]; then
        why=$(stats_mismatch)
        [ -z "${why}" ] || { log "Stage 4: collecting the stats in ${stats_dir} again: ${why}"; rm -rf "${stats_dir}"; }
    fi
    if [ -f "${stats_dir}/train/speech_shape" ] && [ -f "${stats_dir}/valid/speech_shape" ]; then
        log "Stage 4: stats already in ${stats_dir}, collected from this data (remove it to collect again)"
    else
        log "Stage 4: collect stats (${nj} job(s)) -> ${stats_dir}"
        logdir=${stats_dir}/logdir
        mkdir -p "${logdir}"
        if [ "${nj}" -gt 1 ]; then
            for phase_set in "train ${train_set}" "valid ${valid_set}"; do
                set -- ${phase_set}
                ${python} -m espnet2.bin.split_scps --scps "${espnet_dump}/$2/wav.scp" --num_splits "${nj}" \
                    --output_dir "${logdir}/$1" --log_level WARNING
            done
        fi
        pids=()
        trap 'kill "${pids[@]}" 2>/dev/null' INT TERM EXIT   # no orphaned jobs if this script dies
        for i in $(seq 0 $((nj - 1))); do
            if [ "${nj}" -gt 1 ]; then
                keys="--train_shape_file ${logdir}/train/wav.scp/split.${i} --valid_shape_file ${logdir}/valid/wav.scp/split.${i}"
            else
                keys="--train_shape_file ${espnet_dump}/${train_set}/wav.scp --valid_shape_file ${espnet_dump}/${valid_set}/wav.scp"
            fi
            # shellcheck disable=SC2046,SC2086
            ${python} -m espnet_recipes.bin.vgs_train --collect_stats true --ngpu 0 --config "${train_config}" \
                $(data_opts train "${train_set}") $(data_opts valid "${valid_set}") ${keys} \
                --output_dir "${logdir}/stats.${i}" > "${logdir}/stats.${i}.log" 2>&1 &
            pids+=($!)
        done
        failed=0
        for i in "${!pids[@]}"; do
            wait "${pids[$i]}" || { log "Error: collect-stats job ${i} failed; see ${logdir}/stats.${i}.log:"; tail -n 20 "${logdir}/stats.${i}.log"; failed=1; }
        done
        trap - INT TERM EXIT
        [ "${failed}" -eq 0 ] || exit 1
        # shellcheck disable=SC2046
        ${python} -m espnet2.bin.aggregate_stats_dirs $(for i in $(seq 0 $((nj - 1))); do echo "--input_dir ${logdir}/stats.${i}"; done) \
            --output_dir "${stats_dir}" --log_level WARNING
        data_fingerprint > "${fingerprint_file}.tmp" && mv "${fingerprint_file}.tmp" "${fingerprint_file}"
        log "Stage 4: wrote ${stats_dir}/{train,valid}/speech_shape (data fingerprint: ${fingerprint_file})"
    fi
fi

# One line per epoch from ESPnet's "Nepoch results" (the full lines are in train.log).
# shellcheck disable=SC2016
epoch_summary='
function get(s, k) { return match(s, "[ ,]" k "=[-0-9.e+]+") ? substr(s, RSTART + length(k) + 2, RLENGTH - length(k) - 2) : "-" }
/epoch results/ { n = index($0, "[valid]"); tr = substr($0, 1, n); va = substr($0, n)
    ep = $0; sub(/epoch results.*/, "", ep); sub(/.* /, "", ep)
    printf "epoch %s: train loss %s | valid loss %s, in-batch R@1 audio->image %s, image->audio %s\n",
        ep, get(tr, "loss"), get(va, "loss"), get(va, "batch_r1_a2i"), get(va, "batch_r1_i2a"); fflush() }'

if [ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 5 ]; then
    [ -f "${stats_dir}/train/speech_shape" ] || { log "Error: stage 5: no stats in ${stats_dir}; run stage 4 first"; exit 1; }
    if [ ! -f "${fingerprint_file}" ]; then   # stats of an earlier version: usable, but unchecked
        log "Warning: stage 5: ${fingerprint_file} is missing, so the stats cannot be checked against the data (rerun stage 4 to tie them)"
    else
        why=$(stats_mismatch)
        [ -z "${why}" ] || { log "Error: stage 5: the stats in ${stats_dir} do not belong to this data (${why}); rerun stage 4"; exit 1; }
    fi
    dist=""; [ "${ngpu}" -gt 1 ] && dist="--multiprocessing_distributed true"
    [ -n "${dist_backend}" ] && dist+=" --dist_backend ${dist_backend}"
    train=(${python} -m espnet_recipes.bin.vgs_train); where="${ngpu} GPU(s)"
    if [ "${cpu_ranks}" -gt 1 ]; then   # ESPnet spawns processes only for GPUs: torchrun starts the CPU ranks
        train=(${python} -m torch.distributed.run --standalone --nproc_per_node "${cpu_ranks}" -m espnet_recipes.bin.vgs_train)
        where="${cpu_ranks} CPU processes (DDP, gloo)"
    fi
    mkdir -p "${exp}"
    valid_opts=""   # a valid set of subsets (Places dev: dev_seen + dev_unseen): each validated with its own gallery
    if [ -f "${datadir}/${valid_set}/utt2subset" ]; then   # restricted to the utterances stage 2 kept
        awk 'NR == FNR { keep[$1]; next } $1 in keep' "${espnet_dump}/${valid_set}/wav.scp" \
            "${datadir}/${valid_set}/utt2subset" > "${exp}/valid_utt2subset"
        valid_opts="--valid_utt2subset ${exp}/valid_utt2subset"
    fi
    log "Stage 5: training ${model} with ${train_config} on ${where} -> ${exp} (log: ${exp}/train.log)"
    # shellcheck disable=SC2046,SC2086
    if ! "${train[@]}" --config "${train_config}" --ngpu "${ngpu}" ${dist} \
        $(data_opts train "${train_set}") $(data_opts valid "${valid_set}") \
        --train_shape_file "${stats_dir}/train/speech_shape" --valid_shape_file "${stats_dir}/valid/speech_shape" \
        ${valid_opts} --resume true --output_dir "${exp}" ${train_args} 2>&1 | tee "${exp}/train.log" \
        | awk "${epoch_summary}"; then
        log "Error: training failed; the end of ${exp}/train.log:"; tail -n 30 "${exp}/train.log"; exit 1
    fi
    log "Stage 5: trained; checkpoints in ${exp} ($(cd "${exp}" && ls -- *.best.pth latest.pth 2>/dev/null | tr '\n' ' '))"
fi

# The model directory that vgs-evaluate, s3prl_vgs.load_model and the S3PRL entries read:
# export_model OUT_DIR [--speech_only]
export_model() {
    # shellcheck disable=SC2086
    ${python} -m espnet_recipes.bin.vgs_export --exp "${exp}" --out "$1" ${checkpoint:+--checkpoint "${checkpoint}"} "${@:2}"
}

if [ "${stage}" -le 6 ] && [ "${stop_stage}" -ge 6 ]; then
    if command -v vgs-evaluate >/dev/null; then
        log "Stage 6: exporting ${exp} -> ${model_dir} for evaluation"
        export_model "${model_dir}"
        n_eval=${eval_nj}; [ -n "${n_eval}" ] || { [ "${ngpu}" -gt 0 ] && n_eval=${ngpu} || n_eval=${nj}; }
        for dset in ${test_sets}; do
            out=${exp}/decode/${dset}/results.json
            roi=""; [ "${model}" = fast_vgs ] && roi="--roi ${dumpdir}/roi/${dset}.h5"
            mkdir -p "$(dirname "${out}")"
            if [ "${n_eval}" -le 1 ]; then
                log "Stage 6: retrieval on ${formatted}/${dset} -> ${out} ($(job_device 1))"
                # shellcheck disable=SC2086
                vgs-evaluate --model "${model_dir}" --data "${formatted}/${dset}" ${roi} --out "${out}" \
                    --device "$(job_device 1)" ${eval_opts}
            else
                # Job J encodes 1/n_eval of the captions and images (on GPU (J-1) % ngpu); --merge scores
                # everything and writes the results that one job would.
                log "Stage 6: retrieval on ${formatted}/${dset} -> ${out} (${n_eval} jobs, logs: ${exp}/decode/${dset}/eval.*.log)"
                # shellcheck disable=SC2086
                eval_job() { vgs-evaluate --model "${model_dir}" --data "${formatted}/${dset}" ${roi} --out "${out}" \
                    --nj "${n_eval}" --job "$1" --device "$(job_device "$1")" --quiet ${eval_opts}; }
                run_jobs "${n_eval}" "${exp}/decode/${dset}/eval.JOB.log" eval_job || exit 1
                # shellcheck disable=SC2086
                vgs-evaluate --model "${model_dir}" --data "${formatted}/${dset}" ${roi} --out "${out}" \
                    --nj "${n_eval}" --merge --device "$(job_device 1)" ${eval_opts}
            fi
        done
        for spec in ${eval_means}; do   # e.g. dev=dev_seen,dev_unseen: each set with its own gallery, and the mean
            name=${spec%%=*}; sets=()
            for s in $(echo "${spec#*=}" | tr ',' ' '); do sets+=("${s}=${exp}/decode/${s}/results.json"); done
            log "Stage 6: $(echo "${spec#*=}" | sed 's/,/ and /g') and their mean -> ${exp}/decode/${name}/results.json"
            mkdir -p "${exp}/decode/${name}"
            if ! ${python} -m espnet_recipes.bin.vgs_mean_results --out "${exp}/decode/${name}/results.json" "${sets[@]}" \
                2> "${exp}/decode/${name}/mean.log"; then
                log "Error: stage 6: averaging ${spec} failed:"; cat "${exp}/decode/${name}/mean.log"; exit 1
            fi
            grep -F '**mean**' "${exp}/decode/${name}/mean.log" || true
        done
        if [ "${plots}" = true ]; then   # training curves, retrieval examples (and MIM reconstructions) of the first test set
            dset=${test_sets%% *}
            roi=""; [ "${model}" = fast_vgs ] && roi="--roi ${dumpdir}/roi/${dset}.h5"
            log "Stage 6: pictures -> ${exp}/plots"
            # shellcheck disable=SC2086
            vgs-plots --exp "${exp}" --model "${model_dir}" --data "${formatted}/${dset}" ${roi} --out "${exp}/plots"
        fi
    else
        missing 6 "retrieval evaluation (vgs-evaluate)"
    fi
fi

if [ "${stage}" -le 7 ] && [ "${stop_stage}" -ge 7 ]; then
    log "Stage 7: exporting the speech branch of ${exp} -> ${upstream}"
    export_model "${upstream}" --speech_only
    log "Stage 7: S3PRL upstream ready: s3prl.nn.S3PRLUpstream(\"${model}_local\", path_or_url=\"${upstream}\")"
fi

# Stage 8: SUPERB-style probing with s3prl's own runner (s3prl-vgs-downstream): for each task the
# exported upstream, the same architecture randomly initialised, and s3prl's fbank, same probe and
# budget; weighted sum over all hidden layers; best dev checkpoint evaluated on test.
if [ "${stage}" -le 8 ] && [ "${stop_stage}" -ge 8 ]; then
    [ -f "${upstream}/config.yaml" ] || { log "Error: stage 8: no exported upstream in ${upstream}; run stage 7 first"; exit 1; }
    probe_device=cpu; [ "${ngpu}" -gt 0 ] && probe_device=cuda
    mkdir -p "${exp}/probe"
    for task in ${probe_tasks}; do
        data=""
        for pair in ${probe_data}; do [ "${pair%%=*}" = "${task}" ] && data=${pair#*=}; done
        budget=""
        if [ -z "${data}" ] && [ "${task}" = fluent_commands ] && [ -f corpus/synth_info.json ]; then
            data=corpus/fluent_commands   # the synthetic corpus's spoken commands (vgs-synth): a small budget
            budget="--steps 300 --eval_step 50 --batch_size 8 --num_workers 0 --lr 1e-3"
        fi
        [ -n "${data}" ] || { log "Error: stage 8: no data for probe task ${task}; pass --probe_data '${task}=DIR'"; exit 1; }
        [ -n "${probe_steps}" ] && budget="${budget} --steps ${probe_steps}"
        out=${exp}/probe/${task}
        log "Stage 8: probing ${upstream} on ${task} (${data}): trained, random-init, fbank -> ${out} (log: ${out}.log)"
        # shellcheck disable=SC2086
        if ! ${python} -m s3prl_vgs.upstream.probe run --upstream "${upstream}" --task "${task}" --data "${data}" \
            --out "${out}" --device "${probe_device}" ${budget} ${probe_opts} 2>&1 | tee "${out}.log" \
            | awk '/^\[probe\]|^vgs-probe: error/ { print; fflush() }'; then
            log "Error: probing ${task} failed; the end of ${out}.log:"; tail -n 30 "${out}.log"; exit 1
        fi
    done
    log "Stage 8: probe rows of ${expdir} (also in ${expdir}/probe_rows.json):"
    ${python} -m s3prl_vgs.upstream.probe rows --exp "${expdir}"
fi
# Stage 9: ZeroSpeech 2021 phonetic ABX (zerospeech-libriabx2) and semantic sSIMI of the exported upstream
# and of the same architecture randomly initialised (vgs-zerospeech); on --zr2021_dir if given, else on a
# tiny espeak-ng set. Each run: ${exp}/zerospeech/<run>/{submission/,scores.json,scores.md}; both:
# ${exp}/zerospeech/scores.{json,md}. Reruns resume (features already written are kept).
if [ "${stage}" -le 9 ] && [ "${stop_stage}" -ge 9 ]; then
    [ -f "${upstream}/config.yaml" ] || { log "Error: stage 9: no exported upstream in ${upstream}; run stage 7 first"; exit 1; }
    zr_dir=${zr2021_dir}
    if [ -z "${zr_dir}" ]; then
        zr_dir=${dumpdir}/zr2021_synthetic
        if [ ! -f "${zr_dir}/synth_zr2021.json" ]; then
            log "Stage 9: no --zr2021_dir; writing the tiny espeak-ng ZeroSpeech 2021 set -> ${zr_dir}"
            ${python} -m s3prl_vgs.zerospeech.synthetic --out "${zr_dir}"
        fi
    fi
    zr_device=cpu; [ "${ngpu}" -gt 0 ] && zr_device=cuda
    zs=${exp}/zerospeech
    for run in trained random_init; do
        init=""; [ "${run}" = random_init ] && init="--random-init 1"
        log "Stage 9: ZeroSpeech 2021 of ${upstream} (${run}) on ${zr_dir} -> ${zs}/${run}"
        # --overwrite: new weights (a retrained model) replace old features; the same weights resume.
        # shellcheck disable=SC2086
        ${python} -m s3prl_vgs.zerospeech.cli --model "${upstream}" --dataset "${zr_dir}" --out "${zs}/${run}" \
            --device "${zr_device}" --overwrite ${init} ${zerospeech_opts} > /dev/null
    done
    log "Stage 9: ZeroSpeech 2021 scores (${zs}/scores.json):"
    ${python} -m s3prl_vgs.zerospeech.report trained="${zs}/trained/scores.json" \
        random_init="${zs}/random_init/scores.json" --out "${zs}/scores.json"
fi
log "Done: stages ${stage}-${stop_stage}"
