#!/usr/bin/env python3
"""Quick learning-curve runs of the demo's design levers (the curves in the README's Demo section).

Trains the real model classes (``s3prl_vgs.build_model``) with their own training
forward in a plain loop, and every ``--eval-every`` seconds measures coarse
retrieval R@1/5/10 on held-out images whose captions are spoken by voices the
training captions never use. Prints one JSON line per evaluation (step,
training seconds, recalls), so levers compare by steps and by minutes on the
same contended machine.

Example (after stage 1 and 3 of the recipe):
    local/lever_sweep.py --model fast_vgs --corpus corpus --roi dump/roi \
        --conf '{"preset": "tiny", "visual_feat_dim": 2048, "visual_feat_mvn": true,
                 "speech": {"conv_init": "synth_conv32"}}' --minutes 6
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml

from s3prl_vgs.models import build_model
from s3prl_vgs.retrieval import recall_at_k


def load_split(corpus: Path, split: str, n_images: int | None = None):
    data = json.loads((corpus / "SpokenCOCO" / f"SpokenCOCO_{split}_karpathy.json").read_text())["data"]
    if n_images is not None:
        data = data[:n_images]
    images = [Path(e["image"]).stem for e in data]
    caps = [(str(corpus / "SpokenCOCO" / c["wav"]), i) for i, e in enumerate(data) for c in e["captions"]]
    caps = [c for c in caps if Path(c[0]).is_file()]  # a corpus still being written: the captions so far
    return images, caps


def read_wav(path: str, crop: int | None, rng: random.Random | None) -> np.ndarray:
    x, _ = sf.read(path, dtype="float32")
    if crop and len(x) > crop:
        start = rng.randint(0, len(x) - crop) if rng else 0
        x = x[start:start + crop]
    return x


def pad(wavs):
    lengths = torch.tensor([len(w) for w in wavs])
    out = torch.zeros(len(wavs), int(lengths.max()))
    for i, w in enumerate(wavs):
        out[i, :len(w)] = torch.from_numpy(w)
    return out, lengths


class Images:
    """RoI features (FaST-VGS) or normalised pixels (MIM) of one split, all in memory."""

    def __init__(self, kind: str, model, ids, corpus: Path, split: str, roi_dir: Path | None):
        self.kind = kind
        if kind == "fast_vgs":
            from s3prl_vgs.features.store import RoIFeatureStore

            store = RoIFeatureStore(roi_dir / f"{split}.h5")
            recs = [store[i] for i in ids]
            self.feats = torch.from_numpy(np.stack([r["features"] for r in recs])).float()
            self.boxes = torch.from_numpy(np.stack([r["boxes"] for r in recs])).float()
        else:
            from PIL import Image

            tf = model.image_transform(train=False)
            self.pix = torch.stack([tf(Image.open(corpus / "images" / split / f"{i}.png").convert("RGB")) for i in ids])

    def batch(self, idx):
        if self.kind == "fast_vgs":
            return self.feats[idx], self.boxes[idx]
        return (self.pix[idx],)


@torch.no_grad()
def evaluate(model, kind, images: Images, caps, batch_size=64):
    model.eval()
    a_vecs = []
    for s in range(0, len(caps), batch_size):
        wavs, lengths = pad([read_wav(p, None, None) for p, _ in caps[s:s + batch_size]])
        a_vecs.append(model.encode_audio(wavs, lengths).coarse)
    n = len(images.feats if kind == "fast_vgs" else images.pix)
    v_vecs = [model.encode_image(*images.batch(torch.arange(s, min(s + batch_size, n)))).coarse
              for s in range(0, n, batch_size)]
    scores = model.coarse_scores(torch.cat(a_vecs), torch.cat(v_vecs))
    r = recall_at_k(scores, torch.tensor([i for _, i in caps]), ks=(1, 5, 10))
    model.train()
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["fast_vgs", "vg_mim"], required=True)
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--roi", type=Path, help="dir with {train,test}.h5 (FaST-VGS)")
    p.add_argument("--conf", default="{}", help="model_conf as YAML/JSON (preset + overrides)")
    p.add_argument("--eval-split", default="test")
    p.add_argument("--eval-images", type=int, default=300)
    p.add_argument("--train-images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--crop-sec", type=float, default=4.0)
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget (evaluation excluded)")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--eval-every", type=float, default=90.0, help="training seconds between evaluations")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch-len", type=int, default=0, help="steps per 'epoch' (MIM schedule; 0 = no epochs)")
    p.add_argument("--tag", default="")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)

    conf = yaml.safe_load(a.conf) or {}
    model = build_model(a.model, conf.pop("preset", "tiny"), **conf)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train_ids, train_caps = load_split(a.corpus, "train", a.train_images)
    eval_ids, eval_caps = load_split(a.corpus, a.eval_split, a.eval_images)
    if getattr(model.config, "visual_feat_mvn", False):  # as the ESPnet task does: the train store's statistics
        from s3prl_vgs.features.store import RoIFeatureStore

        mean, std = RoIFeatureStore(a.roi / "train.h5").feature_stats(train_ids)
        model.set_visual_feat_stats(torch.from_numpy(mean).float(), torch.from_numpy(std).float())
    train_img = Images(a.model, model, train_ids, a.corpus, "train", a.roi)
    eval_img = Images(a.model, model, eval_ids, a.corpus, a.eval_split, a.roi)
    schedule = model.training_schedule()
    schedule.set_total_steps(a.max_steps)
    crop = int(a.crop_sec * 16000) if a.crop_sec else None

    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr, weight_decay=0.01, eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup_steps))
    print(json.dumps({"tag": a.tag, "model": a.model, "conf": yaml.safe_load(a.conf), "params": n_params,
                      "train_captions": len(train_caps), "eval_images": len(eval_ids), "batch": a.batch_size,
                      "lr": a.lr}), flush=True)
    model.train()
    step, train_s, next_eval, order = 0, 0.0, 0.0, []
    budget = a.minutes * 60
    while True:
        if train_s >= next_eval or train_s >= budget or step >= a.max_steps:
            t0 = time.time()
            r = evaluate(model, a.model, eval_img, eval_caps)
            print(json.dumps({"tag": a.tag, "step": step, "train_min": round(train_s / 60, 2),
                              "eval_s": round(time.time() - t0, 1),
                              **{f"{d}_R@{k}": round(v, 1) for d in r for k, v in r[d].items()}}), flush=True)
            next_eval += a.eval_every
            if train_s >= budget or step >= a.max_steps:
                break
        t0 = time.time()
        if len(order) < a.batch_size:
            order = list(range(len(train_caps)))
            rng.shuffle(order)
        idx, order = order[:a.batch_size], order[a.batch_size:]
        wavs, lengths = pad([read_wav(train_caps[i][0], crop, rng) for i in idx])
        img_idx = torch.tensor([train_caps[i][1] for i in idx])
        same = img_idx[:, None] == img_idx[None, :]
        schedule.set_epoch(step // a.epoch_len if a.epoch_len else 0)
        out = model(wavs, lengths, *train_img.batch(img_idx), same_image=same, **schedule.forward_kwargs())
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        schedule.after_optimizer_step(model)
        step += 1
        train_s += time.time() - t0
    return 0


if __name__ == "__main__":
    sys.exit(main())
