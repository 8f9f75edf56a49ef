"""``vgs-import-tsv``: LXMERT / bottom-up-attention TSV features -> our HDF5 store.

So users can start from the released COCO features (``train2014_obj36.tsv``,
``val2014_obj36.tsv``) or from TSVs made with the Caffe docker
(official-code.md 3.4). Each line holds the tab-separated fields of
``FIELDNAMES``; the array fields are base64 of raw little-endian arrays
(``boxes``/``features`` float32, ids int64, confidences float32), boxes in
original pixels.

Per image, rows are re-ordered by descending ``objects_conf`` (stable), as
the official loader did through its ``*_imgid2ordered_indices.pkl``, the first
``--num-boxes`` (36) are kept, boxes are divided by ``img_w``/``img_h``, and
an image with fewer boxes gets zero rows with ``valid`` False. ``attrs_*``
are not kept (FaST-VGS does not read them).

Two passes: the first reads only the ``img_id`` field and the line offsets, so
malformed lines, duplicates and ids missing for ``--data`` are reported
before any decoding, and a resumed import seeks straight to its next chunk.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..cli import console_script
from ..data.datadir import read_scp
from ..errors import VGSError
from .store import NUM_BOXES, ChunkedStoreWriter, StoreError, check_rows, empty_record

FIELDNAMES = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
              "num_boxes", "boxes", "features")
DTYPES = {
    "objects_id": np.int64,
    "objects_conf": np.float32,
    "attrs_id": np.int64,
    "attrs_conf": np.float32,
    "boxes": np.float32,
    "features": np.float32,
}
BOX_SLACK = 1e-3  # normalised boxes may overshoot [0, 1] by rounding only


class TsvError(VGSError, ValueError):
    """A malformed TSV line; the message names the file and line number."""


def _b64(field: bytes, dtype, where: str, name: str) -> np.ndarray:
    if field[:2] in (b"b'", b'b"'):  # written with str(bytes) by some Python 3 ports
        field = field[2:-1]
    try:
        raw = base64.b64decode(field, validate=True)
    except (binascii.Error, ValueError) as e:
        raise TsvError(f"{where}: field {name} is not valid base64 ({e})") from None
    if len(raw) % np.dtype(dtype).itemsize:
        raise TsvError(f"{where}: field {name} has {len(raw)} bytes, not a whole number of {np.dtype(dtype).name}")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


def _int(field: bytes, where: str, name: str) -> int:
    try:
        return int(field)
    except ValueError:
        raise TsvError(f"{where}: field {name} is not an integer: {field[:40]!r}") from None


def parse_line(line: bytes, where: str, num_boxes: int = NUM_BOXES) -> Dict[str, Any]:
    """One TSV line -> a store record (rows by descending confidence, boxes in [0, 1])."""
    fields = line.rstrip(b"\r\n").split(b"\t")
    if len(fields) != len(FIELDNAMES):
        raise TsvError(f"{where}: {len(fields)} tab-separated fields, expected {len(FIELDNAMES)} ({', '.join(FIELDNAMES)})")
    raw = dict(zip(FIELDNAMES, fields))
    try:
        img_id = raw["img_id"].decode("utf-8")
    except UnicodeDecodeError:
        raise TsvError(f"{where}: img_id {raw['img_id'][:40]!r} is not UTF-8") from None
    where = f"{where} (img_id {img_id})"
    h, w, nb = (_int(raw[k], where, k) for k in ("img_h", "img_w", "num_boxes"))
    if h <= 0 or w <= 0 or nb < 0:
        raise TsvError(f"{where}: img_h={h}, img_w={w}, num_boxes={nb} must be positive")
    arr = {k: _b64(raw[k], DTYPES[k], where, k) for k in ("objects_id", "objects_conf", "boxes", "features")}
    for k, size in (("objects_id", nb), ("objects_conf", nb), ("boxes", 4 * nb)):
        if arr[k].size != size:
            raise TsvError(f"{where}: {k} has {arr[k].size} values, expected {size} for num_boxes={nb}")
    if nb == 0 or arr["features"].size % nb or arr["features"].size == 0:
        raise TsvError(f"{where}: features has {arr['features'].size} values, not a multiple of num_boxes={nb}")
    feats = arr["features"].reshape(nb, -1)
    boxes = arr["boxes"].reshape(nb, 4) / np.array([w, h, w, h], np.float32)
    if (boxes < -BOX_SLACK).any() or (boxes > 1 + BOX_SLACK).any():
        raise TsvError(f"{where}: boxes lie outside the {w}x{h} image")
    # NOTE(original): rows by descending objects_conf before taking the first 36.
    order = np.argsort(-arr["objects_conf"], kind="stable")[:num_boxes]
    n = len(order)
    rec = empty_record(img_id, h, w, num_boxes, feats.shape[1])
    rec["features"][:n] = feats[order]
    rec["boxes"][:n] = np.clip(boxes[order], 0.0, 1.0)
    rec["objects_conf"][:n] = arr["objects_conf"][order]
    rec["objects_id"][:n] = arr["objects_id"][order]
    rec["valid"][:n] = True
    try:
        check_rows(rec, num_boxes, feats.shape[1], where)
    except StoreError as e:
        raise TsvError(str(e)) from None
    return rec


def index_tsv(paths: Sequence[str | os.PathLike]) -> List[Tuple[str, int, int, int]]:
    """First pass: ``(img_id, file index, byte offset, line number)`` per line.

    Checks the field count of every line and that no img_id repeats.
    """
    rows: List[Tuple[str, int, int, int]] = []
    seen: Dict[str, str] = {}
    for fi, path in enumerate(paths):
        try:
            f = open(path, "rb")
        except OSError as e:
            raise TsvError(f"{path}: cannot open ({e.strerror})") from None
        with f:
            lineno = 0
            while True:
                pos = f.tell()
                line = f.readline()
                if not line:
                    break
                lineno += 1
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                n_fields = line.count(b"\t") + 1
                if n_fields != len(FIELDNAMES):
                    raise TsvError(f"{where}: {n_fields} tab-separated fields, expected {len(FIELDNAMES)}")
                img_id = line.split(b"\t", 1)[0].decode("utf-8", "replace")
                if lineno == 1 and img_id == "img_id":
                    continue  # a header line
                if img_id in seen:
                    raise TsvError(f"{where}: img_id {img_id!r} repeats {seen[img_id]}")
                seen[img_id] = where
                rows.append((img_id, fi, pos, lineno))
    return rows


def import_tsv(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    image_ids: Optional[Sequence[str]] = None,
    num_boxes: int = NUM_BOXES,
    chunk_size: int = 256,
    progress: bool = True,
    log=print,
) -> Path:
    """Import TSV files into a store at ``out``, resumably.

    Args:
        paths: TSV files, read in this order.
        image_ids: keep only these images (e.g. a split's ``img.scp``); every
            one must be in the TSVs.
    """
    paths = [Path(p) for p in paths]
    rows = index_tsv(paths)
    if image_ids is not None:
        wanted = set(image_ids)
        have = {r[0] for r in rows}
        missing = sorted(wanted - have)
        if missing:
            raise TsvError(f"{len(missing)} image id(s) are in no TSV file ({', '.join(map(str, paths))}), "
                           f"e.g. {missing[:3]}")
        rows = [r for r in rows if r[0] in wanted]
    if not rows:
        raise TsvError(f"no TSV lines to import from {', '.join(map(str, paths))}")
    settings = {
        "mode": "tsv",
        "num_boxes": num_boxes,
        "sources": [{"name": p.name, "bytes": p.stat().st_size} for p in paths],
        "order": "descending objects_conf (stable), then zero rows (valid=False)",
    }
    writer = ChunkedStoreWriter(out, [r[0] for r in rows], chunk_size, settings)
    if writer.finished():
        log(f"{out}: already complete ({len(rows)} images), nothing to do")
        return Path(out)
    writer.start()
    todo = [k for k in range(writer.num_chunks) if not writer.is_done(k)]
    n_todo = sum(len(writer.chunk_ids(k)) for k in todo)
    log(f"{out}: {n_todo} of {len(rows)} images to import ({writer.num_chunks - len(todo)} chunks already done)")
    files = [open(p, "rb") for p in paths]
    try:
        with tqdm(total=n_todo, unit="img", desc=f"import {Path(out).name}", disable=not progress) as bar:
            for k in todo:
                records = []
                for img_id, fi, pos, lineno in rows[k * chunk_size : (k + 1) * chunk_size]:
                    files[fi].seek(pos)
                    records.append(parse_line(files[fi].readline(), f"{paths[fi]}:{lineno}", num_boxes))
                    bar.update(1)
                writer.write_chunk(k, records)
    finally:
        for f in files:
            f.close()
    writer.merge()
    log(f"wrote {out} ({len(rows)} images)")
    return Path(out)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vgs-import-tsv",
        description="Import LXMERT / bottom-up-attention TSV region features into an HDF5 store "
                    "(rows by descending confidence, boxes normalised), resumable.",
    )
    p.add_argument("--tsv", nargs="+", required=True, help="TSV file(s), e.g. train2014_obj36.tsv val2014_obj36.tsv")
    p.add_argument("--out", required=True, help="output HDF5 store")
    p.add_argument("--data", default=None, help="data dir: keep only the images of its img.scp (all must be found)")
    p.add_argument("--num-boxes", type=int, default=NUM_BOXES, help="rows per image (default 36)")
    p.add_argument("--chunk-size", type=int, default=256, help="images per resumable chunk file (default 256)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@console_script("vgs-import-tsv")
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.num_boxes < 1 or args.chunk_size < 1:
        get_parser().error("--num-boxes and --chunk-size must be >= 1")
    ids = None if args.data is None else sorted(read_scp(Path(args.data) / "img.scp"))
    import_tsv(args.tsv, args.out, image_ids=ids, num_boxes=args.num_boxes, chunk_size=args.chunk_size,
               progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    return 0


__all__ = ["FIELDNAMES", "TsvError", "import_tsv", "index_tsv", "main", "parse_line"]

if __name__ == "__main__":
    sys.exit(main())
