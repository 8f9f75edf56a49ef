#!/usr/bin/env python3
"""Write the ESPnet inputs of one split from its data dir (recipe stage 4).

``OUT/wav.scp``    utterance -> wav (as in the data dir; sorted)
``OUT/image_id``   utterance -> integer image index (ESPnet type ``text_int``)
``OUT/images``     image index -> image id (to read ``image_id`` back)
``OUT/image.scp``  utterance -> image file (ESPnet type ``image``, MIM family)
``OUT/roi.scp``    utterance -> ``STORE.h5:IMAGE_ID`` (types ``roi_feats``/``roi_boxes``, FaST-VGS), with ``--roi``

Every utterance must have an image in ``utt2img`` and ``img.scp``, and in the
RoI store when one is given; otherwise all problems are listed and the exit
status is 1.

Example:
    python -m espnet_recipes.bin.vgs_dump --data data/train --roi dump/roi/train.h5 --out dump/espnet/train
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from s3prl_vgs.cli import console_script
from s3prl_vgs.data.datadir import DataDir, DataDirError, scp_text
from s3prl_vgs.io import atomic_dir

OUTPUTS = ("wav.scp", "image_id", "image.scp", "images", "roi.scp")


def dump(data: str, out: str, roi: Optional[str] = None) -> List[str]:
    """Write the files; return the problems found (nothing is written if there are any)."""
    try:
        d = DataDir.read(data)
    except DataDirError as e:
        return [str(e)]
    problems = []
    no_image = [u for u in d.utts if u not in d.utt2img]
    if no_image:
        problems.append(f"{data}/utt2img: no image for {len(no_image)} utterance(s), e.g. {no_image[:3]}")
    images = sorted({d.utt2img[u] for u in d.utts if u in d.utt2img})
    no_file = [i for i in images if i not in d.img]
    if no_file:
        problems.append(f"{data}/img.scp: no file for {len(no_file)} image id(s), e.g. {no_file[:3]}")
    if any(":" in i for i in images):
        problems.append(f"{data}/utt2img: image ids contain ':', which roi.scp uses as its separator")
    if roi is not None:
        from s3prl_vgs.features import RoIFeatureStore, StoreError

        try:
            store = RoIFeatureStore(roi)
        except StoreError as e:
            problems.append(str(e))
        else:
            lost = store.missing(images)
            if lost:
                utts = [u for u in d.utts if d.utt2img.get(u) in set(lost)]
                problems.append(f"{roi}: {len(lost)} image id(s) of {data} are not in this store, "
                                f"e.g. {lost[:3]} (utterances {utts[:3]}); rerun stage 3")
            else:
                try:  # every row training will read: shapes, dtypes, finite values (one pass over the store)
                    store.verify(images)
                except StoreError as e:
                    problems.append(f"{e}; rerun stage 3")
    if problems:
        return problems

    index = {img: i for i, img in enumerate(images)}
    out_dir = Path(out)
    texts = {
        "wav.scp": scp_text(out_dir / "wav.scp", d.wav),
        "image_id": scp_text(out_dir / "image_id", {u: str(index[d.utt2img[u]]) for u in d.utts}),
        "image.scp": scp_text(out_dir / "image.scp", {u: d.img[d.utt2img[u]] for u in d.utts}),
        "images": "".join(f"{i} {img}\n" for i, img in enumerate(images)),
    }
    if roi is not None:
        texts["roi.scp"] = scp_text(out_dir / "roi.scp", {u: f"{roi}:{d.utt2img[u]}" for u in d.utts})
    # The dir is replaced whole (a stale roi.scp of a FaST-VGS run goes with it); other files stay.
    others = [p.name for p in out_dir.iterdir() if p.name not in OUTPUTS] if out_dir.is_dir() else []
    with atomic_dir(out_dir, keep=others) as tmp:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
    return []


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data dir (wav.scp, utt2img, img.scp)")
    p.add_argument("--out", required=True, help="output dir, e.g. dump/espnet/train")
    p.add_argument("--roi", default=None, help="RoI feature store of this split (FaST-VGS), e.g. dump/roi/train.h5")
    return p


@console_script("vgs_dump")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    problems = dump(args.data, args.out, args.roi)
    if problems:
        for p in problems:
            print(f"vgs_dump: error: {' '.join(str(p).split())}", file=sys.stderr)
        return 1
    print(f"vgs_dump: wrote {args.out} from {args.data}" + (f" and {args.roi}" if args.roi else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
