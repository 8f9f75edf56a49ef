"""Corpus readers: SpokenCOCO, Places Audio 2020 and Flickr8k Audio -> one DataDir per split.

Each reader takes the directory the corpus was unpacked into (``--root``) and
follows the official file formats (``reference/official-code.md`` section 3).
Image ids are the ones the official feature files are keyed by, so RoI HDF5
files made the official way line up with our data dirs:

- SpokenCOCO: the image file stem, ``COCO_val2014_000000325114``.
- Places: the relative ``image`` path string, ``r/runway/gsun_42....jpg``.
- Flickr8k: the image file name, ``1000268201_693b08cb0e.jpg``.

Root layouts (first match wins; ``image_root``/``audio_root`` override the
image and audio bases):

SpokenCOCO
    ``ROOT/SpokenCOCO/SpokenCOCO_*.json`` with wavs under ``ROOT/SpokenCOCO/wavs/``
    and the COCO images at ``ROOT/train2014/``, ``ROOT/val2014/`` (JSON ``image``
    paths are relative to the parent of the JSON dir, ``wav`` paths to the JSON
    dir, as in VG-HuBERT). ``ROOT`` may also be the ``SpokenCOCO/`` dir itself.
    JSON variants per split, best first: ``SpokenCOCO_{split}_unrolled_karpathy.json``,
    ``SpokenCOCO_{split}_karpathy.json`` (splits train/val/test); only when no
    Karpathy file exists, the original ``SpokenCOCO_{train,val}.json``. The two
    split schemes are never mixed: Karpathy val/test come from COCO val2014.
Places Audio 2020
    ``ROOT/metadata/{train,dev_seen,dev_unseen,test_seen,test_unseen}_2020.json``
    (or the older ``metadata/{train,val}.json``), wavs relative to ``ROOT``, images
    relative to ``ROOT/images`` or else the JSON's ``image_base_path``. The JSON's
    ``audio_base_path`` is ignored, as in both official repos.
Flickr8k Audio Caption Corpus
    ``ROOT/flickr_audio/{wav2capt.txt,wav2spk.txt,wavs/}``; ``Flickr_8k.{train,dev,
    test}Images.txt`` and ``Flickr8k.token.txt`` in ``ROOT`` or ``ROOT/Flickr8k_text/``;
    images in ``ROOT/Flicker8k_Dataset/`` (the zip's spelling), ``ROOT/Flickr8k_Dataset/``
    or ``ROOT/Images/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import VGSError
from ..io import TextFileError, load_json, read_lines
from .datadir import DataDir

MAX_LISTED = 20  # errors shown in one CorpusError message


class CorpusError(VGSError, ValueError):
    """A corpus that cannot be read; the message says which files were looked for or are bad."""


@dataclass
class Corpus:
    """What a reader found: one DataDir per split, the files it came from, and notes for the user."""

    name: str
    splits: Dict[str, DataDir] = field(default_factory=dict)
    sources: Dict[str, List[Path]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


def _abs(base: Path, rel: str) -> str:
    # abspath, not resolve: keep the user's symlinked dirs in the written paths.
    return os.path.abspath(base / rel)


def _load_json(path: Path):
    try:
        return load_json(path)
    except TextFileError as e:
        raise CorpusError(str(e)) from None


def _str_field(entry: dict, key: str, where: str) -> str:
    """A path field of a corpus JSON entry: a non-empty string, or a CorpusError naming the entry."""
    value = entry[key]
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise CorpusError(f"{where}: '{key}' must be a non-empty path string, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _data_list(path: Path, obj=None) -> list:
    obj = _load_json(path) if obj is None else obj
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise CorpusError(f"{path}: expected a JSON object with a 'data' list")
    return obj["data"]


class _SplitBuilder:
    """Collects one split's entries, and every inconsistency instead of only the first."""

    def __init__(self) -> None:
        self.data = DataDir()
        self.errors: List[str] = []
        self.where: Dict[str, str] = {}  # utt -> where it came from (file, entry), for messages

    def _key_ok(self, where: str, kind: str, key: object) -> bool:
        if not isinstance(key, str) or not key or any(c.isspace() for c in key):
            self.errors.append(f"{where}: {kind} {key!r} is empty or contains whitespace (data-dir keys cannot)")
            return False
        return True

    def add(self, where: str, utt: object, wav: str, image_id: object, image: str, text=None, speaker=None) -> None:
        if not (self._key_ok(where, "utterance id", utt) and self._key_ok(where, "image id", image_id)):
            return
        if utt in self.data.wav:
            self.errors.append(f"{where}: duplicate utterance id {utt!r}")
            return
        for name, value in (("text", text), ("speaker", speaker)):
            if value is not None and not isinstance(value, (str, int)) or isinstance(value, bool):
                self.errors.append(f"{where}: '{name}' must be a string, got {type(value).__name__}")
                return
        previous = self.data.img.setdefault(image_id, image)
        if previous != image:
            self.errors.append(f"{where}: image id {image_id!r} names two files, {previous} and {image}")
            return
        self.data.wav[utt] = wav
        self.data.utt2img[utt] = image_id
        self.where[utt] = where
        if text is not None and str(text).strip():
            self.data.text[utt] = " ".join(str(text).split())
        if speaker is not None and str(speaker).strip():
            spk = str(speaker).strip()
            if self._key_ok(where, "speaker", spk):
                self.data.utt2spk[utt] = spk

    def finish(self, split: str) -> DataDir:
        if self.data.text and len(self.data.text) != len(self.data.wav):
            # A data dir's text needs every utterance; say which captions lack one before anything is written.
            for utt in [u for u in self.where if u not in self.data.text]:
                self.errors.append(f"{self.where[utt]}: empty or missing transcript of utterance {utt!r} "
                                   "(other captions of this split have one)")
        if self.errors:
            # The first problem leads, so the message starts with its file.
            listed = "; ".join(self.errors[:MAX_LISTED])
            more = f"; ... and {len(self.errors) - MAX_LISTED} more" if len(self.errors) > MAX_LISTED else ""
            raise CorpusError(f"{listed}{more} ({len(self.errors)} bad entries in split {split!r}; nothing written)")
        if self.data.utt2spk and len(self.data.utt2spk) != len(self.data.wav):
            # Kaldi's convention for an unknown speaker: the utterance is its own speaker.
            for utt in self.data.wav:
                self.data.utt2spk.setdefault(utt, utt)
        return self.data


def _need(entry: object, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise CorpusError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise CorpusError(f"{where}: missing key(s) {missing}")


# ---------------------------------------------------------------- SpokenCOCO

COCO_KARPATHY_SPLITS = ("train", "val", "test")
COCO_ORIGINAL_SPLITS = ("train", "val")


def _spokencoco_files(json_dir: Path) -> Dict[str, Path]:
    karpathy = {}
    for split in COCO_KARPATHY_SPLITS:
        for name in (f"SpokenCOCO_{split}_unrolled_karpathy.json", f"SpokenCOCO_{split}_karpathy.json"):
            if (json_dir / name).is_file():
                karpathy[split] = json_dir / name
                break
    if karpathy:
        return karpathy
    original = {s: json_dir / f"SpokenCOCO_{s}.json" for s in COCO_ORIGINAL_SPLITS}
    return {s: p for s, p in original.items() if p.is_file()}


def read_spokencoco(root: str | os.PathLike, image_root=None, audio_root=None) -> Corpus:
    """SpokenCOCO per-image (``captions``) or unrolled (``caption``) JSON -> data dirs."""
    root = Path(root)
    candidates = [root / "SpokenCOCO", root]
    for json_dir in candidates:
        files = _spokencoco_files(json_dir)
        if files:
            break
    else:
        looked = ", ".join(str(c) for c in candidates)
        raise CorpusError(
            f"no SpokenCOCO JSON found: looked in {looked} for SpokenCOCO_{{train,val,test}}_unrolled_karpathy.json, "
            "SpokenCOCO_{train,val,test}_karpathy.json and SpokenCOCO_{train,val}.json"
        )
    audio_base = Path(audio_root) if audio_root else json_dir
    image_base = Path(image_root) if image_root else json_dir.parent
    corpus = Corpus("spokencoco")
    for split, path in files.items():
        builder = _SplitBuilder()
        for i, entry in enumerate(_data_list(path)):
            where = f"{path} data[{i}]"
            _need(entry, ["image"], where)
            if "captions" in entry:
                captions = entry["captions"]
            elif "caption" in entry:
                captions = [entry["caption"]]
            else:
                raise CorpusError(f"{where}: expected a 'captions' list or a 'caption' object")
            if not isinstance(captions, list):
                raise CorpusError(f"{where}: 'captions' must be a list, got {type(captions).__name__}")
            # NOTE(original): FaST-VGS keys images by the file stem of 'image'.
            rel_image = _str_field(entry, "image", where)
            image_id = Path(rel_image).stem
            image = _abs(image_base, rel_image)
            for j, cap in enumerate(captions):
                _need(cap, ["uttid", "wav"], f"{where} caption {j}")
                wav = _str_field(cap, "wav", f"{where} caption {j}")
                builder.add(
                    f"{where} caption {j}", cap["uttid"], _abs(audio_base, wav), image_id, image,
                    text=cap.get("text"), speaker=cap.get("speaker"),
                )
        corpus.splits[split] = builder.finish(split)
        corpus.sources[split] = [path]
    return corpus


# ---------------------------------------------------------------- Places

PLACES_SPLITS = ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen")
PLACES_OLD_SPLITS = ("train", "val")


def read_places(root: str | os.PathLike, image_root=None, audio_root=None) -> Corpus:
    """Places Audio 2020 ``metadata/{split}_2020.json`` -> data dirs named after the splits."""
    root = Path(root)
    meta_candidates = [root / "metadata"] + ([root] if root.name == "metadata" else [])
    files: Dict[str, Path] = {}
    for meta in meta_candidates:
        files = {s: meta / f"{s}_2020.json" for s in PLACES_SPLITS if (meta / f"{s}_2020.json").is_file()}
        if not files:
            files = {s: meta / f"{s}.json" for s in PLACES_OLD_SPLITS if (meta / f"{s}.json").is_file()}
        if files:
            break
    else:
        looked = ", ".join(str(m) for m in meta_candidates)
        raise CorpusError(
            f"no Places metadata found: looked in {looked} for {{{','.join(PLACES_SPLITS)}}}_2020.json "
            "and {train,val}.json"
        )
    data_root = meta.parent
    audio_base = Path(audio_root) if audio_root else data_root
    corpus = Corpus("places")
    for split, path in files.items():
        obj = _load_json(path)
        entries = _data_list(path, obj)
        if image_root:
            image_base = Path(image_root)
        else:
            tried = [data_root / "images"]
            if isinstance(obj.get("image_base_path"), str):
                tried.append(Path(obj["image_base_path"]))
            image_base = next((t for t in tried if t.is_dir()), None)
            if image_base is None:
                raise CorpusError(
                    f"Places images not found for {path}: looked for {', '.join(map(str, tried))}; pass --image-root"
                )
        builder = _SplitBuilder()
        for i, entry in enumerate(entries):
            where = f"{path} data[{i}]"
            _need(entry, ["uttid", "wav", "image"], where)
            wav, rel_image = _str_field(entry, "wav", where), _str_field(entry, "image", where)
            # NOTE(original): Places image ids are the relative image path itself.
            builder.add(
                where, entry["uttid"], _abs(audio_base, wav), rel_image, _abs(image_base, rel_image),
                text=entry.get("asr_text"), speaker=entry.get("speaker"),
            )
        corpus.splits[split] = builder.finish(split)
        corpus.sources[split] = [path]
    return corpus


# ---------------------------------------------------------------- Flickr8k

FLICKR_SPLITS = ("train", "dev", "test")


def _first(candidates: Sequence[Path], test: Callable[[Path], bool]) -> Optional[Path]:
    return next((c for c in candidates if test(c)), None)


def _read_lines(path: Path) -> List[str]:
    try:
        return read_lines(path)
    except TextFileError as e:
        raise CorpusError(str(e)) from None


def read_flickr8k(root: str | os.PathLike, image_root=None, audio_root=None) -> Corpus:
    """FACC ``wav2capt.txt`` + ``wav2spk.txt`` + Flickr8k split lists and captions -> data dirs."""
    root = Path(root)
    audio_candidates = [Path(audio_root)] if audio_root else [root / "flickr_audio", root]
    audio_dir = _first(audio_candidates, lambda d: (d / "wav2capt.txt").is_file())
    if audio_dir is None:
        looked = ", ".join(map(str, audio_candidates))
        raise CorpusError(f"no Flickr8k audio found: looked for wav2capt.txt in {looked}")
    text_candidates = [root, root / "Flickr8k_text", audio_dir]
    split_files: Dict[str, Path] = {}
    for split in FLICKR_SPLITS:
        name = f"Flickr_8k.{split}Images.txt"
        found = _first([d / name for d in text_candidates], Path.is_file)
        if found is not None:
            split_files[split] = found
    if not split_files:
        raise CorpusError(
            f"no Flickr8k split lists found: looked for Flickr_8k.{{train,dev,test}}Images.txt in "
            f"{', '.join(map(str, text_candidates))}"
        )
    image_candidates = (
        [Path(image_root)] if image_root
        else [root / "Flicker8k_Dataset", root / "Flickr8k_Dataset", root / "Images", root / "images"]
    )
    image_dir = _first(image_candidates, Path.is_dir)
    if image_dir is None:
        raise CorpusError(f"no Flickr8k image dir found: looked for {', '.join(map(str, image_candidates))}")
    corpus = Corpus("flickr8k")

    token_file = _first([d / "Flickr8k.token.txt" for d in text_candidates], Path.is_file)
    captions: Dict[str, str] = {}
    if token_file is None:
        corpus.notes.append("Flickr8k.token.txt not found: data dirs have no 'text'")
    else:
        for n, line in enumerate(_read_lines(token_file), 1):
            if not line.strip():
                continue
            key, sep, caption = line.partition("\t")
            if not sep:
                raise CorpusError(f"{token_file}:{n}: expected '<image>.jpg#<k><TAB><caption>', got {line!r}")
            captions[key.strip()] = caption.strip()

    speakers: Dict[str, str] = {}
    spk_file = audio_dir / "wav2spk.txt"
    if spk_file.is_file():
        for n, line in enumerate(_read_lines(spk_file), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise CorpusError(f"{spk_file}:{n}: expected '<wav> <speaker>', got {line!r}")
            speakers[parts[0]] = parts[1]
    else:
        corpus.notes.append(f"{spk_file} not found: each utterance is its own speaker")

    image2split: Dict[str, str] = {}
    for split, path in split_files.items():
        for line in _read_lines(path):
            if line.strip():
                image2split[line.strip()] = split

    capt_file = audio_dir / "wav2capt.txt"
    builders = {split: _SplitBuilder() for split in split_files}
    unassigned = 0
    for n, line in enumerate(_read_lines(capt_file), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[2].startswith("#"):
            raise CorpusError(f"{capt_file}:{n}: expected '<wav> <image>.jpg #<k>', got {line!r}")
        wav, image, k = parts
        split = image2split.get(image)
        if split is None:
            unassigned += 1
            continue
        # NOTE(original): Flickr8k image ids are the image file name; utterance ids the wav stem.
        builders[split].add(
            f"{capt_file}:{n}", Path(wav).stem, _abs(audio_dir / "wavs", wav), image, _abs(image_dir, image),
            text=captions.get(f"{image}{k}"), speaker=speakers.get(wav),
        )
    if unassigned:
        corpus.notes.append(f"{unassigned} captions of {capt_file} belong to images in no split list; left out")
    if token_file is not None:
        missing = sum(len(b.data.wav) for b in builders.values()) - sum(len(b.data.text) for b in builders.values())
        if missing:
            corpus.notes.append(f"{missing} utterances have no caption in {token_file}")
    for split, builder in builders.items():
        data = builder.finish(split)
        if not data.wav:
            corpus.notes.append(f"split {split!r}: no wav2capt.txt entry for the images of {split_files[split]}")
            continue
        corpus.splits[split] = data
        corpus.sources[split] = [capt_file, split_files[split]] + ([token_file] if token_file else [])
    return corpus


READERS: Dict[str, Callable[..., Corpus]] = {
    "spokencoco": read_spokencoco,
    "places": read_places,
    "flickr8k": read_flickr8k,
}


def read_corpus(name: str, root: str | os.PathLike, image_root=None, audio_root=None) -> Corpus:
    """Dispatch to the reader for ``name`` (one of ``READERS``)."""
    if name not in READERS:
        raise CorpusError(f"unknown corpus {name!r}; choose from {sorted(READERS)}")
    if not Path(root).is_dir():
        raise CorpusError(f"{root}: corpus root is not a directory")
    return READERS[name](root, image_root=image_root, audio_root=audio_root)


__all__ = ["Corpus", "CorpusError", "READERS", "read_corpus", "read_spokencoco", "read_places", "read_flickr8k"]
