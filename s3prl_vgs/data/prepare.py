"""``vgs-prepare``: a corpus root -> validated data dirs, one per split (recipe stage 1).

Writes ``OUT/<split>/{wav.scp,utt2img,img.scp,text,utt2spk}`` with absolute
paths for every split the reader finds, then validates each dir and lists its
problems. The dirs are written even when they have problems so that they can
be inspected; the exit status is 1 in that case. Root layouts: see
:mod:`s3prl_vgs.data.corpora`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .corpora import READERS, CorpusError, read_corpus
from .datadir import DataDirError
from .validate import Problem, print_problems, validate_data_dir

SHOWN_PER_SPLIT = 20


def prepare(
    corpus: str,
    root,
    out,
    *,
    image_root=None,
    audio_root=None,
    validate: bool = True,
    nj: int = 4,
    progress: bool = True,
) -> Dict[str, List[Problem]]:
    """Write one data dir per split under ``out``; return ``{split: problems}`` (empty lists when clean)."""
    found = read_corpus(corpus, root, image_root=image_root, audio_root=audio_root)
    out = Path(out)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    results: Dict[str, List[Problem]] = {}
    for split, data in found.splits.items():
        d = data.write(out / split)
        n_img = len(set(data.utt2img.values()))
        srcs = ", ".join(str(s) for s in found.sources.get(split, []))
        print(f"wrote {d}: {len(data)} utterances, {n_img} images (from {srcs})", file=sys.stderr)
        results[split] = validate_data_dir(d, nj=nj, progress=progress) if validate else []
    return results


def main(argv: Optional[Iterable[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vgs-prepare",
        description="Turn a SpokenCOCO, Places Audio 2020 or Flickr8k Audio corpus into Kaldi-style data dirs "
        "(wav.scp, utt2img, img.scp, text, utt2spk), one per split, and validate them. Root layouts are "
        "documented in s3prl_vgs/data/corpora.py.",
    )
    parser.add_argument("--corpus", required=True, choices=sorted(READERS))
    parser.add_argument("--root", required=True, help="directory the corpus was unpacked into")
    parser.add_argument("--out", required=True, help="output dir; gets one sub-dir per split")
    parser.add_argument("--image-root", default=None, help="image base dir, if not where the layout puts it")
    parser.add_argument("--audio-root", default=None, help="audio base dir, if not where the layout puts it")
    parser.add_argument("--skip-validate", action="store_true", help="write the data dirs without checking files")
    parser.add_argument("--nj", type=int, default=4, help="threads for the validation header reads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(None if argv is None else list(argv))

    try:
        results = prepare(
            args.corpus, args.root, args.out, image_root=args.image_root, audio_root=args.audio_root,
            validate=not args.skip_validate, nj=args.nj, progress=not args.quiet,
        )
    except (CorpusError, DataDirError) as e:
        print(f"vgs-prepare: error: {e}", file=sys.stderr)
        return 1
    bad = 0
    for split, problems in results.items():
        if problems:
            print_problems(problems, limit=SHOWN_PER_SPLIT)
            d = Path(args.out) / split
            print(f"{d}: {len(problems)} problem(s); `vgs-validate {d}` lists all", file=sys.stderr)
            bad += 1
    if not args.skip_validate and not bad:
        print(f"all {len(results)} data dir(s) valid: {', '.join(results)}", file=sys.stderr)
    return 1 if bad else 0


__all__ = ["prepare", "main"]

if __name__ == "__main__":
    sys.exit(main())
