"""Annotation readers (COCO, CrowdPose, OCHuman, MPII, person detections) -> one record type, and the datasets that
turn records into *raw samples* for a method's transform.

Raw sample (what every dataset yields before the method's ``transform``)::

    image          uint8 (H, W, 3) RGB
    image_id       int
    file_name      str (absolute path)
    sample_index   int (position in the dataset; unique per sample)
    orig_size      (h, w) of the decoded image
    keypoints      (N, K, 3) float32 x, y, v of every annotated person (v: 0 unlabelled, 1 occluded, 2 visible)
    boxes          (N, 4) float32 x1, y1, x2, y2 (annotation boxes, COCO continuous coordinates)
    areas          (N,) float32, iscrowd (N,) bool, num_keypoints (N,) int64, ann_ids (N,) int64
    record         the :class:`ImageRecord` (for ignore masks, segmentations, crowdIndex)
  top-down samples add
    box            (4,) float64 x1, y1, x2, y2 of this person (cleaned GT box or detection)
    box_xywh       (4,) float64 the same as x, y, w, h (what centre/scale are computed from)
    box_score      float (1 for GT boxes, the detector's score otherwise)
    person_index   int, index into the per-person arrays (-1 for detections)

Coordinates follow COCO: keypoints are pixel indices (pixel centres at integers), boxes and segmentations are
continuous (pixel i covers [i, i+1)).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import cv2
import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from ..jsonio import read_json
from .keypoints import KeypointMeta, get_meta, keypoint_layout
from .synthetic import generate, synth_info

__all__ = ["ImageRecord", "read_image", "load_records", "load_annotation_file", "ensure_synthetic", "ignore_mask",
           "load_detections", "read_detections", "ImageDataset", "TopDownDataset", "build_dataset", "evaluation_gt",
           "filter_records", "clean_gt_boxes", "annotation_paths", "raw_sample", "unannotated_sample",
           "person_sample", "check_finite"]

log = logging.getLogger("regpose.data")


# ==========================================================================================================
# Records
# ==========================================================================================================
@dataclass
class ImageRecord:
    """One image and every person annotated in it (arrays indexed by person)."""
    image_id: int
    file_name: str                    # absolute path
    width: int
    height: int
    boxes: np.ndarray                 # (N, 4) float32 x, y, w, h as annotated
    keypoints: np.ndarray             # (N, K, 3) float32 x, y, v
    areas: np.ndarray                 # (N,) float32 (annotation area; box area when the file has none)
    iscrowd: np.ndarray               # (N,) bool
    num_keypoints: np.ndarray         # (N,) int64 as annotated (CrowdPose counts only v == 2)
    ann_ids: np.ndarray               # (N,) int64
    segmentations: list = field(default_factory=list)   # raw COCO polygons / RLE per person (None if absent)
    crowd_index: float | None = None  # CrowdPose crowdIndex
    dataset: str = "coco"             # keypoint format the record was read as
    extra: dict = field(default_factory=dict)   # format-specific per-person arrays (MPII: center, scale, headbox)

    @property
    def num_people(self) -> int:
        return len(self.ann_ids)

    def select(self, keep) -> "ImageRecord":
        """A copy keeping only the people ``keep`` (boolean mask or indices)."""
        idx = np.arange(self.num_people)[keep]
        return ImageRecord(
            image_id=self.image_id, file_name=self.file_name, width=self.width, height=self.height,
            boxes=self.boxes[idx], keypoints=self.keypoints[idx], areas=self.areas[idx], iscrowd=self.iscrowd[idx],
            num_keypoints=self.num_keypoints[idx], ann_ids=self.ann_ids[idx],
            segmentations=[self.segmentations[i] for i in idx] if self.segmentations else [],
            crowd_index=self.crowd_index, dataset=self.dataset,
            extra={k: np.asarray(v)[idx] for k, v in self.extra.items()})


def _empty_arrays(k: int) -> dict:
    return dict(boxes=np.zeros((0, 4), np.float32), keypoints=np.zeros((0, k, 3), np.float32),
                areas=np.zeros((0,), np.float32), iscrowd=np.zeros((0,), bool),
                num_keypoints=np.zeros((0,), np.int64), ann_ids=np.zeros((0,), np.int64))


# ==========================================================================================================
# Images
# ==========================================================================================================
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 (H, W, 3) RGB.

    Grayscale is expanded to three channels, alpha is dropped, 16-bit is scaled to 8-bit and the EXIF orientation
    is applied (OpenCV's IMREAD_COLOR semantics). Missing, empty or undecodable files raise :class:`DataError`
    naming the file.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"cannot read image {p}: {e.strerror or e}") from None
    if data.size == 0:
        raise DataError(f"empty image file: {p}")
    with _DecoderMessages() as said:
        img = cv2.imdecode(data, _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR)
    if img is None or img.size == 0:
        raise DataError(f"cannot decode image (corrupt or unsupported format): {p}")
    if said.text and str(p) not in _warned:
        _warned.add(str(p))
        log.warning("%s: damaged image, used as decoded (%s)", p, said.text)
    if _IMREAD_RGB is None:  # OpenCV < 5
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


_warned: set[str] = set()   # files already reported as damaged (once per process)


class _DecoderMessages:
    """Captures what libjpeg / libpng print straight to the process's stderr while decoding a damaged file (e.g.
    "Corrupt JPEG data: premature end of data segment", a stray line naming no file), so that
    :func:`read_image` reports it once, with the file name. Redirects file descriptor 2 to a per-process
    temporary file for the duration of the decode."""
    _sink: tuple[int, object] | None = None    # (pid, file): a forked loader worker opens its own

    def __enter__(self) -> "_DecoderMessages":
        if self._sink is None or self._sink[0] != os.getpid():
            _DecoderMessages._sink = (os.getpid(), tempfile.TemporaryFile())
        self.text = ""
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(self._sink[1].fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        sink = self._sink[1]
        if sink.tell():
            sink.seek(0)
            self.text = " ".join(sink.read().decode(errors="replace").split())[:200]
            sink.seek(0)
            sink.truncate()


# ==========================================================================================================
# Annotation files
# ==========================================================================================================
def _image_dir(ann_file: Path, image_dir: str) -> Path:
    if image_dir:
        d = Path(image_dir).expanduser().resolve()
        if not d.is_dir():  # else every image would be reported missing, one by one, once training has started
            raise DataError(f"image folder not found: {d} (the image_dir given for {ann_file.name})")
        return d
    d = ann_file.parent / "images"
    return (d if d.is_dir() else ann_file.parent).resolve()


def _person_category_ids(data: dict, path: Path) -> set:
    cats = data.get("categories") or []
    ids = {c["id"] for c in cats if isinstance(c, dict) and (c.get("name") == "person" or "keypoints" in c)}
    return ids or {1}


def _read_coco_like(path: Path, data: dict, fmt: str, image_dir: Path, meta: KeypointMeta) -> list[ImageRecord]:
    """COCO / CrowdPose / OCHuman keypoint json (same schema; CrowdPose adds crowdIndex, omits area/segmentation)
    with the keypoints of layout ``meta``."""
    k = meta.num_keypoints
    layout = f"format {fmt!r}" if meta.name == fmt else "the declared layout (data.keypoints)"
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations") or [], list):
        raise DataError(f"{path}: expected a COCO-style keypoint json with lists 'images' and 'annotations' "
                        f"(format {fmt!r})")
    for c in data.get("categories") or []:
        names = c.get("keypoints") if isinstance(c, dict) else None
        if names is not None and len(names) != k:
            raise DataError(f"{path}: category {c.get('name', c.get('id'))!r} has {len(names)} keypoints, "
                            f"{layout} expects {k} (a layout of one's own: declare it in data.keypoints)")
    cat_ids = _person_category_ids(data, path)
    per_image: dict[int, list] = {}
    for i, a in enumerate(data.get("annotations") or []):
        if not isinstance(a, dict):
            raise DataError(f"{path}: annotation entry {i} is not an object ({a!r:.60})")
        if a.get("category_id", 1) not in cat_ids:
            continue
        kp = a.get("keypoints")
        if kp is None:
            kp = [0.0] * (3 * k)
        if not isinstance(kp, list) or len(kp) != 3 * k:
            got = f"{len(kp)} keypoint values" if isinstance(kp, list) else f"'keypoints' {kp!r:.40}"
            raise DataError(f"{path}: annotation {a.get('id', i)} has {got}, expected {3 * k} numbers "
                            f"({k} keypoints x 3) for {layout}")
        if not isinstance(a.get("bbox"), list) or len(a["bbox"]) != 4:
            raise DataError(f"{path}: annotation {a.get('id', i)} has no valid 'bbox' [x, y, w, h]")
        per_image.setdefault(a.get("image_id"), []).append(a)

    records, seen = [], set()
    for img in data["images"]:
        if not isinstance(img, dict) or img.get("id") is None or "file_name" not in img:
            raise DataError(f"{path}: image entry {img!r:.80} lacks 'id' or 'file_name'")
        iid = img["id"]
        if iid in seen:  # its people and predictions would be counted twice
            raise DataError(f"{path}: image id {iid!r} appears twice in 'images'")
        seen.add(iid)
        anns = per_image.pop(iid, [])
        try:
            arrays, segs = (_coco_arrays(anns, k), [a.get("segmentation") for a in anns]) if anns \
                else (_empty_arrays(k), [])
            ci = img.get("crowdIndex")
            records.append(ImageRecord(
                image_id=int(iid), file_name=str(image_dir / img["file_name"]), width=int(img.get("width", 0)),
                height=int(img.get("height", 0)), segmentations=segs,
                crowd_index=float(ci) if ci is not None else None, dataset=fmt, **arrays))
        except (TypeError, ValueError):
            raise DataError(f"{path}: {_non_numeric_entry(img, anns, k)}: expected numbers") from None
    if per_image:
        iid = next(iter(per_image))
        raise DataError(f"{path}: annotation {per_image[iid][0].get('id')} refers to image_id {iid}, which is not "
                        f"in 'images'")
    return records


def _coco_arrays(anns: list[dict], k: int) -> dict:
    """The per-person arrays of one image's COCO annotations (raises TypeError / ValueError on non-numbers)."""
    n = len(anns)
    kps = np.asarray([a["keypoints"] if a.get("keypoints") is not None else [0.0] * (3 * k)
                      for a in anns], dtype=np.float32).reshape(n, k, 3)
    boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(n, 4)
    areas = np.asarray([a["area"] if "area" in a else b[2] * b[3] for a, b in zip(anns, boxes)], dtype=np.float32)
    return dict(
        boxes=boxes, keypoints=kps, areas=areas,
        iscrowd=np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        num_keypoints=np.asarray([a["num_keypoints"] if "num_keypoints" in a
                                  else int(np.count_nonzero(kp[:, 2] > 0)) for a, kp in zip(anns, kps)],
                                 dtype=np.int64),
        ann_ids=np.asarray([a.get("id", -1) for a in anns], dtype=np.int64))


def _non_numeric_entry(img: dict, anns: list[dict], k: int) -> str:
    """Names the field of an image entry or one of its annotations that is not a number (for the error)."""
    for key in ("id", "width", "height", "crowdIndex"):
        try:
            float(img.get(key) or 0)
        except (TypeError, ValueError):
            return f"image {img.get('id')!r:.40}: '{key}' is {img[key]!r:.40}"
    for a in anns:
        for key in ("keypoints", "bbox", "area", "num_keypoints", "id"):
            try:
                np.asarray(a.get(key) or 0, dtype=np.float64)
            except (TypeError, ValueError):
                return f"annotation {a.get('id')!r:.40} (image {img.get('id')!r:.40}): '{key}' is {a[key]!r:.60}"
    return f"image {img.get('id')!r:.40}: an entry"


def check_finite(records: list[ImageRecord], path: Path, policy: Literal["error", "skip"] = "error",
                 names: tuple[str, ...] = ()) -> list[ImageRecord]:
    """Non-finite ground truth (NaN, infinity or null in a labelled keypoint, a box or an area) would train silently
    on garbage or stop at a non-finite loss that names no annotation. ``policy='error'`` raises one line naming the
    file and annotation; ``'skip'`` drops such annotations (counted in one warning). Coordinates of unlabelled
    joints (v <= 0) carry no information and are set to 0. ``names``: the keypoint names (for the message)."""
    skipped, first, out = 0, None, []
    for r in records:
        kp = r.keypoints
        unlabelled = kp[..., 2] <= 0       # False for a NaN visibility: that joint counts as labelled, not finite
        kp[unlabelled] = np.nan_to_num(kp[unlabelled], nan=0.0, posinf=0.0, neginf=0.0)
        finite_kp = np.isfinite(kp).all(-1)
        ok = finite_kp.all(1) & np.isfinite(r.boxes).all(1) & np.isfinite(r.areas)
        if ok.all():
            out.append(r)
            continue
        i = int(np.argmin(ok))
        if policy == "error":
            j = int(np.argmin(finite_kp[i]))
            what = (f"keypoint {names[j] if names else j!r}" if not finite_kp[i].all()
                    else "center / scale" if r.dataset == "mpii" else "bbox" if not np.isfinite(r.boxes[i]).all()
                    else "area")
            raise DataError(f"{path}: annotation {int(r.ann_ids[i])} (image {r.image_id}): {what} is NaN, infinite "
                            f"or null; fix the file, or set data.invalid_annotations=skip to drop such annotations")
        skipped += int((~ok).sum())
        first = int(r.ann_ids[i]) if first is None else first
        out.append(r.select(ok))
    if skipped:
        log.warning("%s: skipped %d annotations with NaN, infinite or null values (first: annotation %d)", path,
                    skipped, first)
    return out


def mpii_image_ids(names: list[str]) -> dict[str, int]:
    """MPII image name -> integer id: the numeric file stem (``005808361.jpg`` -> 5808361) when every stem is a
    distinct number, else the order of first appearance (1-based). The evaluator uses the same mapping."""
    unique = list(dict.fromkeys(names))
    stems = [Path(n).stem for n in unique]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return {n: int(s) for n, s in zip(unique, stems)}
    return {n: i + 1 for i, n in enumerate(unique)}


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header without decoding (0, 0 if unreadable)."""
    try:
        from PIL import Image
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - missing/corrupt images are reported when they are read
        return 0, 0


def _read_mpii(path: Path, data, image_dir: Path) -> list[ImageRecord]:
    """MPII in mmpose's json layout: a list of people ``{image, joints (16,2), joints_vis (16,), center, scale}``
    in MATLAB 1-based pixel coordinates (optional ``headbox`` [x1, y1, x2, y2] for the official PCKh normaliser).

    Coordinates are converted to 0-based pixel indices as mmpose does (``- 1``). Each person's box is the square of
    side ``200 * scale`` centred at ``center`` shifted down by ``15 * scale`` (mmpose's MPII adjustment); with the
    top-down padding 1.25 this reproduces mmpose's MPII centre and scale."""
    if not isinstance(data, list):
        raise DataError(f"{path}: expected the MPII json layout (a list of people with 'image', 'joints', "
                        f"'joints_vis', 'center', 'scale')")
    k = 16
    ids = mpii_image_ids([str(p.get("image", "")) for p in data])
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(data):
        for key in ("image", "joints", "joints_vis", "center", "scale"):
            if key not in p:
                raise DataError(f"{path}: entry {i} lacks '{key}' (MPII layout)")
        if len(p["joints"]) != k or len(p["joints_vis"]) != k:
            raise DataError(f"{path}: entry {i} has {len(p['joints'])} joints, expected {k}")
        groups.setdefault(p["image"], []).append(i)
    records = []
    for name, idx in groups.items():
        people = [data[i] for i in idx]
        joints = np.asarray([p["joints"] for p in people], dtype=np.float64).reshape(-1, k, 2) - 1.0
        vis = np.asarray([p["joints_vis"] for p in people], dtype=np.float64).reshape(-1, k) > 0
        kps = np.concatenate([joints, (vis * 2.0)[..., None]], axis=-1).astype(np.float32)
        kps[~vis] = 0.0
        center = np.asarray([p["center"] for p in people], dtype=np.float64).reshape(-1, 2) - 1.0
        scale = np.asarray([p["scale"] for p in people], dtype=np.float64).reshape(-1)
        side = 200.0 * scale
        cy = center[:, 1] + 15.0 * scale
        boxes = np.stack([center[:, 0] - side / 2, cy - side / 2, side, side], axis=1).astype(np.float32)
        head = np.asarray([p.get("headbox", [np.nan] * 4) for p in people], dtype=np.float64).reshape(-1, 4) - 1.0
        file_name = image_dir / name
        w, h = _image_size(file_name)
        records.append(ImageRecord(
            image_id=ids[name], file_name=str(file_name), width=int(w), height=int(h), boxes=boxes, keypoints=kps,
            areas=(boxes[:, 2] * boxes[:, 3]).astype(np.float32), iscrowd=np.zeros(len(people), bool),
            num_keypoints=vis.sum(1).astype(np.int64), ann_ids=np.asarray(idx, dtype=np.int64),
            segmentations=[None] * len(people), dataset="mpii",
            extra={"center": center, "scale": scale, "headbox": head}))
    return records


def load_annotation_file(path: str | os.PathLike, fmt: str, image_dir: str = "",
                         invalid: Literal["error", "skip"] = "error", keypoints: KeypointMeta | None = None
                         ) -> list[ImageRecord]:
    """Read one annotation file of format ``fmt`` into records; ``invalid`` says what happens to annotations with
    non-finite values (:func:`check_finite`); ``keypoints``: the layout (None: ``fmt``'s own)."""
    meta = keypoints or get_meta(fmt)
    p = Path(path).expanduser().resolve()
    data = read_json(p)
    idir = _image_dir(p, image_dir)
    records = _read_mpii(p, data, idir) if fmt == "mpii" else _read_coco_like(p, data, fmt, idir, meta)
    return check_finite(records, p, invalid, meta.keypoint_names)


def annotation_paths(split, fmt: str, keypoints: KeypointMeta | None = None) -> list[Path]:
    """The annotation files of a split (a synthetic split is generated first if missing, with the ``keypoints``
    layout; None: ``fmt``'s own)."""
    if split.synthetic.num_images > 0 and not split.ann_files:
        return [ensure_synthetic(split, fmt, keypoints)]
    if not split.ann_files:
        raise DataError("split has no annotation files (set data.<split>.ann_files, or data.<split>.root with "
                        "data.<split>.synthetic.num_images > 0)")
    return [Path(a).expanduser().resolve() for a in split.ann_files]


def load_records(split, fmt: str, invalid: Literal["error", "skip"] = "error",
                 keypoints: KeypointMeta | None = None) -> list[ImageRecord]:
    """Every image of a split (:class:`regpose.data.config.SplitConfig`); several annotation files are
    concatenated in order. ``invalid``: see :func:`check_finite`; ``keypoints``: the layout (None: ``fmt``'s)."""
    keypoints = keypoints or get_meta(fmt)  # validates the format
    records: list[ImageRecord] = []
    image_dir = split.image_dir
    if split.synthetic.num_images > 0 and not split.ann_files and not image_dir:
        image_dir = str(Path(split.root) / "images")
    for p in annotation_paths(split, fmt, keypoints):
        records.extend(load_annotation_file(p, fmt, image_dir, invalid, keypoints))
    return records


# ==========================================================================================================
# Synthetic splits
# ==========================================================================================================
def ensure_synthetic(split, fmt: str, keypoints: KeypointMeta | None = None) -> Path:
    """Generate a synthetic split into ``split.root`` unless its ``annotations.json`` exists; returns that path.
    ``keypoints``: a declared layout to annotate (its keypoints placed at ``split.synthetic.joints``); None: ``fmt``'s.

    Safe when several processes race: each generates into a private temporary folder next to ``root`` and renames
    it into place; the loser discards its copy. An existing folder generated with other settings is an error
    (delete it or change ``root``)."""
    spec = split.synthetic
    if not split.root:
        raise DataError("synthetic split needs data.<split>.root (the folder to generate into)")
    root = Path(split.root).expanduser().resolve()
    ann = root / "annotations.json"
    want = synth_info(spec.num_images, spec.seed, fmt, tuple(spec.size), spec.max_people, keypoints, spec.joints)
    if not ann.is_file():
        log.info("generating the synthetic split %s first: %d images (seed %d), once; later runs reuse it",
                 split.root, spec.num_images, spec.seed)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            generate(tmp, spec.num_images, seed=spec.seed, fmt=fmt, size=tuple(spec.size),
                     max_people=spec.max_people, progress=True, desc=f"synth {root.name}", keypoints=keypoints,
                     joints=spec.joints)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the finished split is an ordinary folder
            try:
                os.rename(tmp, root)
            except OSError:
                if not ann.is_file():  # root exists but is not a finished split
                    raise DataError(f"cannot create synthetic split {root}: the folder exists without "
                                    f"annotations.json (remove it)") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    try:
        with open(ann) as f:
            data = json.load(f)
        head = data.get("info", {}) if isinstance(data, dict) else {}   # MPII layout has no info
    except (OSError, json.JSONDecodeError):
        raise DataError(f"{ann}: unreadable synthetic annotations (delete {root} to regenerate)") from None
    got = head.get("regpose_synth")
    if got is not None and got != want:
        diff = ", ".join(f"{k}={got.get(k)!r} (config {want.get(k)!r})" for k in dict.fromkeys([*want, *got])
                         if got.get(k) != want.get(k))
        raise DataError(f"{root} holds a synthetic split generated with {diff}; delete it or change "
                        f"data.<split>.root")
    return ann


# ==========================================================================================================
# Ignore masks, detections
# ==========================================================================================================
def _ann_to_rle(seg, h: int, w: int):
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    if isinstance(seg, dict) and "counts" in seg:
        if isinstance(seg["counts"], list):
            return mask_utils.frPyObjects(seg, h, w)
        counts = seg["counts"]
        return {"size": seg["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
    return None


def ignore_mask(record: ImageRecord, h: int | None = None, w: int | None = None) -> np.ndarray:
    """(h, w) float32 loss mask: 0 on crowd regions and on people with ``num_keypoints == 0``, 1 elsewhere
    (HigherHRNet / DEKR ``get_mask``). CrowdPose has no such regions (DEKR uses an all-ones mask for it). A region
    without a segmentation falls back to its box."""
    h = int(h if h is not None else record.height)
    w = int(w if w is not None else record.width)
    m = np.zeros((h, w), np.float32)
    if record.dataset == "crowdpose":
        return np.ones((h, w), np.float32)
    from pycocotools import mask as mask_utils

    for i in np.nonzero(record.iscrowd | (record.num_keypoints == 0))[0]:
        seg = record.segmentations[i] if record.segmentations else None
        rle = _ann_to_rle(seg, h, w) if seg is not None else None
        if rle is not None:
            with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword notice
                warnings.simplefilter("ignore", DeprecationWarning)
                dec = mask_utils.decode(rle)
            if dec.shape[:2] == (h, w):
                m += dec.reshape(h, w) if dec.ndim == 2 else dec.sum(-1)
                continue
        x, y, bw, bh = record.boxes[i]
        x1, y1 = max(int(np.floor(x)), 0), max(int(np.floor(y)), 0)
        x2, y2 = min(int(np.ceil(x + bw)), w), min(int(np.ceil(y + bh)), h)
        m[y1:y2, x1:x2] += 1
    return (m < 0.5).astype(np.float32)


def load_detections(path: str | os.PathLike, score_threshold: float = 0.0) -> dict[int, np.ndarray]:
    """Person detections -> ``{image_id: (M, 5) float64 x, y, w, h, score}`` (see :func:`read_detections`)."""
    return read_detections(path, score_threshold)[0]


def _integer(value) -> int:
    """An id written as an integer (785, 785.0 or "785"); anything else raises ValueError / TypeError."""
    if isinstance(value, bool):
        raise TypeError(value)
    i = int(value)
    if float(value) != i:
        raise ValueError(value)
    return i


def read_detections(path: str | os.PathLike, score_threshold: float = 0.0
                    ) -> tuple[dict[int, np.ndarray], dict[int, str] | None]:
    """Person detections and the images they belong to.

    Two layouts: a COCO results list ``[{image_id, category_id, bbox, score}]`` (images known by id only), or a
    COCO-style dict ``{"images": [{id, file_name}], "annotations": [{image_id, bbox, score?}]}`` (e.g. a detector's
    output with its image entries, or a ground-truth file). Returns ``({image_id: (M, 5) x, y, w, h, score}`` in
    file order, person class only, ``score >= score_threshold``), and ``{image_id: file_name}`` of the dict layout
    (None for a list)."""
    p = Path(path).expanduser().resolve()
    data = read_json(p, "detections")
    files = None
    if isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list):
        files = {}
        for i, im in enumerate(data["images"]):
            try:
                files[_integer(im["id"])] = str(im["file_name"])
            except (TypeError, ValueError, KeyError):
                raise DataError(f"{p}: images[{i}] needs an integer 'id' and a 'file_name'") from None
        entries, where = data["annotations"], "annotations"
    elif isinstance(data, list):
        entries, where = data, "entry"
    else:
        raise DataError(f"{p}: expected a COCO results list of {{image_id, category_id, bbox, score}} or a dict with "
                        f"'images' (id, file_name) and 'annotations' (image_id, bbox, score)")
    out: dict[int, list] = {}
    for i, d in enumerate(entries):
        name = f"{where}[{i}]" if files is not None else f"entry {i}"
        if not isinstance(d, dict) or "image_id" not in d or "bbox" not in d:
            raise DataError(f"{p}: {name} lacks 'image_id' or 'bbox'")
        if d.get("category_id", 1) != 1 or d.get("iscrowd"):      # crowd regions of a ground-truth file are no boxes
            continue
        b, s = d["bbox"], d.get("score", 1.0)
        if not isinstance(b, (list, tuple)) or len(b) != 4:
            got = f"{len(b)} values" if isinstance(b, (list, tuple)) else repr(b)
            raise DataError(f"{p}: {name}: 'bbox' has {got}, expected 4 (x, y, w, h)")
        try:
            row = [float(v) for v in b] + [float(s)]
            image_id = _integer(d["image_id"])
        except (TypeError, ValueError):
            raise DataError(f"{p}: {name}: 'image_id' must be an integer, 'bbox' 4 numbers and 'score' a number "
                            f"(got image_id {d['image_id']!r}, bbox {b!r}, score {s!r})") from None
        if not np.all(np.isfinite(row)):
            raise DataError(f"{p}: {name}: bbox/score contains NaN or infinity")
        if files is not None and image_id not in files:
            raise DataError(f"{p}: {name}: image_id {image_id} has no entry in 'images'")
        if row[4] >= score_threshold:
            out.setdefault(image_id, []).append(row)
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 5) for k, v in out.items()}, files


def clean_gt_boxes(record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
    """Top-down GT boxes as mmpose / Poseur clean them (reference/poseur/spec.md §1.6): clipped to the image,
    kept only for non-crowd people with >0 labelled keypoints, positive area and a non-empty box.
    Returns (person indices, (M, 4) float64 x, y, w, h)."""
    b = record.boxes.astype(np.float64)
    w_img, h_img = record.width, record.height
    if record.dataset == "mpii":  # mmpose uses MPII's centre / scale as given (no clipping)
        idx = np.nonzero((record.keypoints[..., 2] > 0).any(-1))[0]
        return idx, b[idx]
    x1 = np.maximum(0.0, b[:, 0])
    y1 = np.maximum(0.0, b[:, 1])
    x2 = np.minimum(w_img - 1.0, x1 + np.maximum(0.0, b[:, 2])) if w_img > 0 else x1 + np.maximum(0.0, b[:, 2])
    y2 = np.minimum(h_img - 1.0, y1 + np.maximum(0.0, b[:, 3])) if h_img > 0 else y1 + np.maximum(0.0, b[:, 3])
    labelled = (record.keypoints[..., 2] > 0).any(-1) & (record.num_keypoints > 0)
    keep = labelled & ~record.iscrowd & (record.areas > 0) & (x2 > x1) & (y2 > y1)
    idx = np.nonzero(keep)[0]
    return idx, np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)[idx]


def filter_records(records: list[ImageRecord], family: str, min_keypoints: int = 0) -> list[ImageRecord]:
    """Training images each family keeps: bottom-up (DEKR) images with any annotation left after dropping crowd
    annotations without keypoints; one-stage (QueryPose / detectron2) images with a non-crowd annotation.
    ``min_keypoints`` > 0 also drops images whose non-crowd people have fewer labelled keypoints in total."""
    if family == "bottomup":
        out = [r for r in records if np.any(~(r.iscrowd & (r.num_keypoints == 0)))]
    elif family == "onestage":
        out = [r for r in records if np.any(~r.iscrowd)]
    else:
        out = list(records)
    if min_keypoints > 0:
        out = [r for r in out if int((r.keypoints[~r.iscrowd][..., 2] > 0).sum()) >= min_keypoints]
    return out


# ==========================================================================================================
# Datasets
# ==========================================================================================================
def _xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    b = np.asarray(b)
    return np.concatenate([b[..., :2], b[..., :2] + b[..., 2:4]], axis=-1)


def raw_sample(record: ImageRecord, image: np.ndarray, index: int) -> dict:
    """The raw sample (module docstring) of a whole image: its decoded RGB ``image`` and ``record``'s people."""
    return {
        "image": image,
        "image_id": record.image_id,
        "file_name": record.file_name,
        "sample_index": index,
        "orig_size": (int(image.shape[0]), int(image.shape[1])),
        "keypoints": record.keypoints.copy(),
        "boxes": _xywh_to_xyxy(record.boxes).astype(np.float32),
        "areas": record.areas.copy(),
        "iscrowd": record.iscrowd.copy(),
        "num_keypoints": record.num_keypoints.copy(),
        "ann_ids": record.ann_ids.copy(),
        "record": record,
    }


def unannotated_sample(image: np.ndarray, image_id: int, file_name: str, num_keypoints: int) -> dict:
    """The raw sample (module docstring) of a picture without annotations (``regpose infer``, a detector's input):
    no people, no record."""
    return {"image": image, "image_id": int(image_id), "file_name": str(file_name), "sample_index": 0,
            "orig_size": (int(image.shape[0]), int(image.shape[1])),
            "keypoints": np.zeros((0, num_keypoints, 3), np.float32), "boxes": np.zeros((0, 4), np.float32),
            "areas": np.zeros(0, np.float32), "iscrowd": np.zeros(0, bool), "num_keypoints": np.zeros(0, np.int64),
            "ann_ids": np.zeros(0, np.int64)}


def person_sample(sample: dict, box_xywh: np.ndarray, score: float, person_index: int = -1) -> dict:
    """``sample`` (a whole-image raw sample, changed in place and returned) as the top-down sample of one person
    box: the box as x, y, w, h and x1, y1, x2, y2, its score (1 for ground truth) and the annotated person it is
    (-1: a detection)."""
    xywh = np.asarray(box_xywh, dtype=np.float64)[:4].copy()
    sample.update(box_xywh=xywh, box=_xywh_to_xyxy(xywh), box_score=float(score), person_index=int(person_index))
    return sample


class _SkippingDataset(Dataset):
    """Shared image loading with optional skipping of corrupt files (counted, warned)."""

    def __init__(self, transform: Callable | None, skip_corrupt: bool):
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0

    def record_of(self, index: int) -> ImageRecord:  # pragma: no cover - abstract
        """The image record sample ``index`` comes from."""
        raise NotImplementedError

    def _make(self, index: int, image: np.ndarray) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int):
        n = len(self)
        for attempt in range(n if self.skip_corrupt else 1):
            i = (index + attempt) % n
            try:
                image = read_image(self.record_of(i).file_name)
            except DataError as e:
                if not self.skip_corrupt:
                    raise
                self.num_skipped += 1
                log.warning("skipping unreadable image (%d skipped so far in this process): %s",
                            self.num_skipped, e)
                continue
            sample = self._make(i, image)
            return self.transform(sample) if self.transform is not None else sample
        raise DataError(f"no readable image in the dataset (tried {n})")


class ImageDataset(_SkippingDataset):
    """Whole images (bottom-up and one-stage methods): one raw sample per record."""

    def __init__(self, records: list[ImageRecord], transform: Callable | None = None, skip_corrupt: bool = False):
        super().__init__(transform, skip_corrupt)
        self.records = list(records)

    def __len__(self) -> int:
        return len(self.records)

    def record_of(self, index: int) -> ImageRecord:
        return self.records[index]

    def _make(self, index: int, image: np.ndarray) -> dict:
        return raw_sample(self.records[index], image, index)


class TopDownDataset(_SkippingDataset):
    """One raw sample per person box: cleaned GT boxes (people with labelled keypoints, box score 1) or
    detections (``{image_id: (M, 5) xywh + score}``, e.g. from :func:`load_detections`)."""

    def __init__(self, records: list[ImageRecord], transform: Callable | None = None,
                 boxes: Literal["gt", "detections"] = "gt", detections: dict | None = None,
                 det_score_threshold: float = 0.0, skip_corrupt: bool = False):
        super().__init__(transform, skip_corrupt)
        self.records = list(records)
        self.boxes = boxes
        rec_idx, person, box, score = [], [], [], []
        if boxes == "gt":
            for ri, r in enumerate(self.records):
                idx, xywh = clean_gt_boxes(r)
                rec_idx += [ri] * len(idx)
                person += idx.tolist()
                box.append(xywh)
                score += [1.0] * len(idx)
        elif boxes == "detections":
            if detections is None:
                raise DataError("TopDownDataset(boxes='detections') needs detections (see load_detections)")
            for ri, r in enumerate(self.records):
                d = np.asarray(detections.get(r.image_id, np.zeros((0, 5))), dtype=np.float64).reshape(-1, 5)
                d = d[d[:, 4] >= det_score_threshold]
                rec_idx += [ri] * len(d)
                person += [-1] * len(d)
                box.append(d[:, :4])
                score += d[:, 4].tolist()
        else:
            raise DataError(f"TopDownDataset: boxes must be 'gt' or 'detections', got {boxes!r}")
        self._rec = np.asarray(rec_idx, dtype=np.int64)
        self._person = np.asarray(person, dtype=np.int64)
        self._box = np.concatenate(box).reshape(-1, 4) if box else np.zeros((0, 4))
        self._score = np.asarray(score, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._rec)

    def record_of(self, index: int) -> ImageRecord:
        return self.records[self._rec[index]]

    def _make(self, index: int, image: np.ndarray) -> dict:
        return person_sample(raw_sample(self.records[self._rec[index]], image, index), self._box[index],
                             self._score[index], self._person[index])


def build_dataset(cfg, split: Literal["train", "val"], transform: Callable | None,
                  family: Literal["bottomup", "onestage", "topdown"],
                  person_boxes: dict[int, np.ndarray] | None = None) -> Dataset:
    """The dataset a method of ``family`` trains / evaluates on. Training drops images (or people) the family's
    official code drops. Top-down evaluation crops the person boxes ``cfg.test.boxes`` names: cleaned ground truth
    ('gt') or a detections json ('detections'); boxes computed elsewhere (a detector model, 'model') come in as
    ``person_boxes`` ``{image_id: (n, 5) x, y, w, h, score}`` - the data layer never runs a model."""
    if split not in ("train", "val"):
        raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
    fmt = cfg.data.format
    records = load_records(getattr(cfg.data, split), fmt, cfg.data.invalid_annotations, keypoint_layout(cfg.data))
    train = split == "train"
    skip = bool(train and getattr(cfg.train, "skip_corrupt_images", False))
    if family == "topdown":
        if person_boxes is None and (train or cfg.test.boxes == "gt"):
            dataset = TopDownDataset(records, transform, boxes="gt", skip_corrupt=skip)
            if train:
                _require_samples(dataset, records, cfg, "people with labelled keypoints, not crowd, and a box of "
                                 "positive size inside the image")
            return dataset
        if person_boxes is None:
            person_boxes = _detections_of(cfg)
        return TopDownDataset(records, transform, boxes="detections", detections=person_boxes,
                              det_score_threshold=cfg.test.det_score_threshold)
    if family not in ("bottomup", "onestage"):
        raise ConfigError(f"unknown method family {family!r}")
    if not train:
        return ImageDataset(records, transform)
    dataset = ImageDataset(filter_records(records, family, cfg.data.train_min_keypoints), transform, skip_corrupt=skip)
    need = "images with a person who is not a crowd region" + (
        f" and at least {cfg.data.train_min_keypoints} labelled keypoints" if cfg.data.train_min_keypoints else "")
    _require_samples(dataset, records, cfg, need)
    return dataset


def _detections_of(cfg) -> dict[int, np.ndarray]:
    """The person boxes of ``test.detections`` (``test.boxes: detections``); other box sources are computed before
    the dataset is built and passed as ``person_boxes``."""
    t = cfg.test
    if t.boxes == "detections":
        if not t.detections:
            raise ConfigError("test.detections: a detections json is required when test.boxes is 'detections'")
        return load_detections(t.detections, t.det_score_threshold)
    raise ConfigError(f"test.boxes: '{t.boxes}' boxes are computed before the dataset is built: pass them as "
                      f"build_dataset(..., person_boxes=...) (regpose.engine.evaluator.evaluation_dataset does)")


def _require_samples(dataset: Dataset, records: list[ImageRecord], cfg, need: str) -> None:
    """An empty training set is a data problem: say which files hold what, instead of failing in the sampler."""
    if len(dataset) == 0:
        files = ", ".join(str(p) for p in annotation_paths(cfg.data.train, cfg.data.format,
                                                           keypoint_layout(cfg.data)))
        people = sum(r.num_people for r in records)
        raise DataError(f"data.train ({files}): no training samples: {len(records)} images with {people} "
                        f"annotations, none usable (training needs {need})")


def evaluation_gt(cfg, split: str = "val") -> str:
    """Path of the annotation json to evaluate ``split`` against (several files are merged into a cached json)."""
    paths = annotation_paths(getattr(cfg.data, split), cfg.data.format, keypoint_layout(cfg.data))
    if len(paths) == 1:
        return str(paths[0])
    key = hashlib.sha1("|".join(f"{p}:{p.stat().st_mtime_ns}" for p in paths).encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"regpose_merged_gt_{key}.json"
    if not out.is_file():
        datas = [read_json(p) for p in paths]
        if cfg.data.format == "mpii":
            merged = [e for d in datas for e in d]
        else:
            merged = dict(datas[0])
            merged["images"] = [im for d in datas for im in d.get("images", [])]
            merged["annotations"] = [a for d in datas for a in d.get("annotations", [])]
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(merged))
        os.replace(tmp, out)
    return str(out)
