#!/usr/bin/env python3
"""Recipe stage 2: format a data dir's audio to 16 kHz mono wav under dump/ (ESPnet's format step).

ESPnet's own ``scripts/audio/format_wav_scp.sh`` (with
``pyscripts/audio/format_wav_scp.py``) lives in the git repository, not in
the ``espnet`` wheel, so this is its counterpart for a pip install. For each
utterance of ``--data``'s ``wav.scp`` it

- reads the audio: a file, or a Kaldi pipe (``sox x.flac -t wav - |``: the
  command runs in a shell and its stdout is decoded; any format soundfile
  reads, wav or flac);
- mixes the channels to mono (their mean) and resamples to ``--fs`` (torchaudio);
- drops utterances shorter than ``--min_wav_sec`` or longer than
  ``--max_wav_sec`` (listed in ``<out>/dropped``, counted on stderr), as
  ESPnet's stage 4 does with ``utt2num_samples``;
- writes ``<out>/wav/<utt>.wav`` (PCM 16 bit) and a complete data dir at
  ``<out>``: ``wav.scp`` pointing at the new files, ``utt2num_samples``, and
  ``utt2img``, ``img.scp``, ``text``, ``utt2spk`` for the kept utterances.

Audio that is already a ``--fs`` mono file inside the duration limits is not
copied (its ``wav.scp`` line is kept) unless ``--copy_all``; on SpokenCOCO
that saves ~60 GB. The output directory is replaced as a whole only when
every utterance has been handled, so an interrupted run leaves no
complete-looking output behind; a rerun starts over.

Example:
    % python -m espnet_recipes.bin.vgs_format --data data/train --out dump/formatted/train --nj 8
"""

from __future__ import annotations

import argparse
import io
import math
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from s3prl_vgs.cli import console_script
from s3prl_vgs.data.audio import SAMPLE_RATE
from s3prl_vgs.data.datadir import DataDir, DataDirError, scp_text
from s3prl_vgs.errors import VGSError
from s3prl_vgs.io import atomic_dir


class FormatError(VGSError, ValueError):
    """An utterance that cannot be read or formatted; the message names the utterance and its wav.scp entry."""


@dataclass
class Result:
    utt: str
    num_samples: int  # at --fs, before any dropping
    wav: Optional[str]  # the wav.scp value to write (None when dropped)
    note: str = ""  # why it was dropped


def _read(utt: str, entry: str) -> Tuple[np.ndarray, int]:
    """(samples, channels) float32 and the sample rate of one wav.scp value."""
    import soundfile as sf

    if entry.endswith("|"):
        cmd = entry[:-1].strip()
        proc = subprocess.run(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            raise FormatError(f"utterance {utt}: pipe {cmd!r} failed (exit {proc.returncode}"
                              f"{': ' + err[-1] if err else ''})")
        source = io.BytesIO(proc.stdout)
    else:
        source = entry
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile's LibsndfileError and RuntimeError
        what = "the output of its pipe" if entry.endswith("|") else entry
        raise FormatError(f"utterance {utt}: unreadable audio in {what} ({str(e).strip()})") from None
    return data, rate


def _is_plain(entry: str, fs: int) -> bool:
    import soundfile as sf

    if entry.endswith("|"):
        return False
    try:
        info = sf.info(entry)
    except Exception:
        return False
    return info.samplerate == fs and info.channels == 1


def format_one(utt: str, entry: str, out_wav: str, fs: int, min_sec: float, max_sec: float, copy_all: bool) -> Result:
    """Format one utterance (runs in a worker process)."""
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    keep_as_is = not copy_all and _is_plain(entry, fs)
    if keep_as_is:
        n = sf.info(entry).frames
    else:
        data, rate = _read(utt, entry)
        wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
        if rate != fs:
            wav = AF.resample(wav, rate, fs)
        n = wav.numel()
    sec = n / fs
    if n == 0 or sec < min_sec:
        return Result(utt, n, None, f"{sec:.3f} s < --min_wav_sec {min_sec:g}")
    if sec > max_sec:
        return Result(utt, n, None, f"{sec:.3f} s > --max_wav_sec {max_sec:g}")
    if keep_as_is:
        return Result(utt, n, entry)
    peak = float(wav.abs().max())
    if peak > 1.0:  # resampling can overshoot a full-scale input; PCM_16 would clip
        wav = wav / peak
    Path(out_wav).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{out_wav}.tmp"
    sf.write(tmp, wav.numpy(), fs, subtype="PCM_16", format="WAV")
    os.replace(tmp, out_wav)
    return Result(utt, n, out_wav)


def _wav_name(utt: str) -> str:
    # Utterance ids have no whitespace but may contain '/': one flat file per id.
    return utt.replace(os.sep, "__") + ".wav"


def format_data_dir(data: str | os.PathLike, out: str | os.PathLike, fs: int = SAMPLE_RATE, min_sec: float = 0.0,
                    max_sec: float = math.inf, nj: int = 1, copy_all: bool = False, progress: bool = True) -> dict:
    """Format ``data`` into the data dir ``out``; returns counts (kept, converted, dropped)."""
    data, out = Path(data), Path(out)
    dd = DataDir.read(data)
    if not dd.wav:
        raise DataDirError(f"{data / 'wav.scp'}: no utterances")
    names = {}
    for utt in dd.utts:
        name = _wav_name(utt)
        if name in names:
            raise DataDirError(f"{data / 'wav.scp'}: utterances {names[name]!r} and {utt!r} map to one file name {name}")
        names[name] = utt
    results: List[Result] = []
    # The wavs go into the temporary dir first: the whole output appears at once.
    with atomic_dir(out) as tmp:
        # Paths in wav.scp are absolute only if --out is: keep them relative to the cwd as Kaldi does.
        final = {utt: str(out / "wav" / _wav_name(utt)) for utt in dd.utts}
        staged = {utt: str(tmp / "wav" / _wav_name(utt)) for utt in dd.utts}
        args = [(utt, dd.wav[utt], staged[utt], fs, min_sec, max_sec, copy_all) for utt in dd.utts]
        bar = dict(total=len(args), desc=f"format {data}", disable=not progress, leave=False)
        if nj > 1:
            with ProcessPoolExecutor(max_workers=nj) as pool:
                futures = [pool.submit(format_one, *a) for a in args]
                results = [f.result() for f in tqdm(futures, **bar)]
        else:
            results = [format_one(*a) for a in tqdm(args, **bar)]
        kept = {r.utt: r for r in results if r.wav is not None}
        if not kept:
            raise FormatError(f"{data}: every utterance is outside --min_wav_sec {min_sec:g} / --max_wav_sec {max_sec:g}")
        new = DataDir(
            wav={u: (final[u] if r.wav == staged[u] else r.wav) for u, r in kept.items()},
            utt2img={u: v for u, v in dd.utt2img.items() if u in kept},
            img=dict(dd.img),
            text={u: v for u, v in dd.text.items() if u in kept},
            utt2spk={u: v for u, v in dd.utt2spk.items() if u in kept},
        )
        for name, text in new.texts(out).items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / "utt2num_samples").write_text(scp_text(out / "utt2num_samples", {u: r.num_samples for u, r in kept.items()}),
                                             encoding="utf-8")
        dropped = {r.utt: r.note.replace(" ", "_") for r in results if r.wav is None}
        (tmp / "dropped").write_text(scp_text(out / "dropped", dropped) if dropped else "", encoding="utf-8")
    converted = sum(1 for u, r in kept.items() if r.wav == staged[u])
    return {"utterances": len(results), "kept": len(kept), "converted": converted, "dropped": len(dropped)}


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vgs-format", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="input data dir (wav.scp, utt2img, img.scp, ...)")
    p.add_argument("--out", required=True, help="output data dir (replaced as a whole), e.g. dump/formatted/train")
    p.add_argument("--fs", type=int, default=SAMPLE_RATE, help=f"output sample rate (default {SAMPLE_RATE})")
    p.add_argument("--min_wav_sec", type=float, default=0.0, help="drop shorter utterances (default 0)")
    p.add_argument("--max_wav_sec", type=float, default=math.inf, help="drop longer utterances (default: none)")
    p.add_argument("--nj", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--copy_all", action="store_true", help="rewrite audio that is already --fs mono too")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@console_script("vgs-format")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.nj < 1 or args.fs < 1 or args.min_wav_sec < 0 or args.max_wav_sec <= args.min_wav_sec:
        raise FormatError("need --nj >= 1, --fs >= 1 and 0 <= --min_wav_sec < --max_wav_sec")
    c = format_data_dir(args.data, args.out, args.fs, args.min_wav_sec, args.max_wav_sec, args.nj, args.copy_all,
                        progress=not args.quiet)
    print(f"vgs-format: {args.data} -> {args.out}: {c['kept']} of {c['utterances']} utterances kept "
          f"({c['converted']} converted to {args.fs} Hz mono, {c['dropped']} dropped by duration"
          f"{', see ' + str(Path(args.out) / 'dropped') if c['dropped'] else ''})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
