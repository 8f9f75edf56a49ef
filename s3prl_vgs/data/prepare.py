"""``vgs-prepare``: a corpus root -> validated data dirs, one per split (recipe stage 1).

Writes ``OUT/<split>/{wav.scp,utt2img,img.scp,text,utt2spk}`` with absolute
paths for every split the reader finds. Everything is checked before anything
is written: the corpus entries (an entry that is malformed, a duplicate id, an
empty transcript is named by file and entry), then every split's wavs and
images as ``vgs-validate`` would. If any split has a problem, all problems are
listed, no data dir is written and the exit status is 1. Each data dir is
written to a temporary sibling and renamed into place whole. Root layouts:
see :mod:`s3prl_vgs.data.corpora`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from ..cli import console_script
from .corpora import READERS, read_corpus
from .validate import Problem, print_problems, validate_data

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
    """Check every split, then write one data dir per split under ``out``.

    Returns ``{split: problems}``; when any list is non-empty nothing was written.
    Raises CorpusError / DataDirError (before writing) for a malformed corpus.
    """
    found = read_corpus(corpus, root, image_root=image_root, audio_root=audio_root)
    out = Path(out)
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    for split, data in found.splits.items():
        data.texts(out / split)  # every entry writable (DataDirError otherwise), before any file check
    results: Dict[str, List[Problem]] = {
        split: validate_data(data, out / split, nj=nj, progress=progress) if validate else []
        for split, data in found.splits.items()
    }
    if any(results.values()):
        return results
    for split, data in found.splits.items():
        d = data.write(out / split)
        n_img = len(set(data.utt2img.values()))
        srcs = ", ".join(str(s) for s in found.sources.get(split, []))
        print(f"wrote {d}: {len(data)} utterances, {n_img} images (from {srcs})", file=sys.stderr)
    return results


@console_script("vgs-prepare")
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

    results = prepare(
        args.corpus, args.root, args.out, image_root=args.image_root, audio_root=args.audio_root,
        validate=not args.skip_validate, nj=args.nj, progress=not args.quiet,
    )
    bad = 0
    for split, problems in results.items():
        if problems:
            print_problems(problems, limit=SHOWN_PER_SPLIT)
            print(f"{Path(args.out) / split}: {len(problems)} problem(s)", file=sys.stderr)
            bad += 1
    if bad:
        print(f"vgs-prepare: error: {args.out}: nothing written: {bad} of {len(results)} split(s) have problems "
              "(listed above; --skip-validate writes without the file checks)", file=sys.stderr)
        return 1
    if not args.skip_validate:
        print(f"all {len(results)} data dir(s) valid: {', '.join(results)}", file=sys.stderr)
    return 0


__all__ = ["prepare", "main"]

if __name__ == "__main__":
    sys.exit(main())
