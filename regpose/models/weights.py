"""Weight files for initialisation: where they come from, how they are read, how their names map to ours, and
how much of them fits.

``model.backbone.weights`` names a trunk initialisation (:func:`fetch_trunk_state`):

- ``none``                    from scratch (the trainer says so in its log);
- ``timm:<model>.<tag>``      timm / Hugging Face hub weights, downloaded at train start into timm's cache;
- ``http(s)://...``/``file://...``  a file downloaded once into torch hub's cache (``$TORCH_HOME/hub/checkpoints``);
- a local ``.pth`` / ``.pt`` / ``.pkl`` / ``.npz`` path.

``.pth`` / ``.pt`` are read with ``torch.load(weights_only=True)``; detectron2 ``.pkl`` files (pickles of numpy
arrays) with a restricted unpickler that accepts numpy arrays, dtypes and plain containers only; ``.npz`` without
pickle. Foreign naming conventions (detectron2 ResNet, mmcls MobileNetV2, timm's flattened feature modules) are
mapped to the trunk's timm names (:func:`to_trunk_names`).

:func:`load_partial` loads what fits and reports by name what was left at init and what was ignored; it is used
for trunks and for ``train.init_weights`` alike.
"""
from __future__ import annotations

import io
import pickle
import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["LoadReport", "load_partial", "read_state_dict", "fetch_trunk_state", "to_trunk_names",
           "detectron2_resnet_key", "mmcls_mobilenetv2_key", "WEIGHT_SUFFIXES", "MIN_COVERAGE"]

WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl", ".npz")

#: Loading fewer than this fraction of the target's parameter elements is refused. A file made for another
#: network fits only where a name and a shape happen to coincide: an HRNet file in a ResNet-50 trunk 0.9 % (the
#: stem norm and the first stage), a Poseur checkpoint in DEKR nothing. Any deliberate partial initialisation
#: covers far more: pose-HRNet-W32 without its last stage-4 fuse layers 97 %, a model whose head has another
#: keypoint count nearly all of it. (A shallower sibling of the same family, e.g. ResNet-18 in ResNet-50, fits
#: 27 % and is loaded with the report naming the rest.) Below 10 % the run would train a random network while
#: the user believes it was initialised.
MIN_COVERAGE = 0.10

# Where to get files that have no public direct URL (named in the "not found" error).
_WHERE_TO_GET = {
    "pose_hrnet_w32_384x288.pth": "the COCO pose-HRNet-W32 384x288 checkpoint of "
                                  "https://github.com/leoxiaobin/deep-high-resolution-net.pytorch (model zoo links in "
                                  "its README, folder pose_coco)",
    "pose_hrnet_w48_384x288.pth": "the COCO pose-HRNet-W48 384x288 checkpoint of "
                                  "https://github.com/leoxiaobin/deep-high-resolution-net.pytorch (model zoo links in "
                                  "its README, folder pose_coco)",
}
_FIX = "pass a local file with model.backbone.weights=/path/to/file or train from scratch with " \
       "model.backbone.weights=none"


# ----------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------
def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and plain containers only: any other global (a function, a class that
    could run code on load) is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("collections", "OrderedDict"): lambda: __import__("collections").OrderedDict,
        ("_codecs", "encode"): lambda: __import__("codecs").encode,   # bytes of protocol-2 arrays
    }

    def find_class(self, module: str, name: str):
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return factory()


def _read_pickle(path: Path) -> dict:
    try:
        return _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: the pickle holds '{e}', not only numpy arrays (a detectron2 "
                              f".pkl holds arrays only; this file could run code)") from None
    except Exception as e:  # noqa: BLE001 - truncated / not a pickle
        raise CheckpointError(f"{path}: cannot read as a pickle of numpy arrays ({type(e).__name__}: "
                              f"{str(e)[:120]})") from None


def _read_torch(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: cannot read as a weights-only checkpoint ({first[:160]})") from None


def _read_npz(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.array(z[k]) for k in z.files}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read as .npz ({type(e).__name__}: {str(e)[:120]})") from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file (the state dict inside ``model`` / ``state_dict`` wrappers of detectron2, mmcv
    and our checkpoints), ``module.`` prefixes removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    obj = {".pkl": _read_pickle, ".npz": _read_npz}.get(path.suffix.lower(), _read_torch)(path)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    state = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(v, torch.Tensor):
            state[k[len("module."):] if k.startswith("module.") else k] = v
    if not state:
        raise CheckpointError(f"{path}: no tensors found (expected a state dict)")
    return state


# ----------------------------------------------------------------------------------------------------------
# Where trunk weights come from
# ----------------------------------------------------------------------------------------------------------
def _download_cached(url: str) -> Path:
    """``url`` downloaded once into torch hub's checkpoint cache (atomic: a partial download never stays)."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise CheckpointError(f"model.backbone.weights: {url} names no file")
    dst = Path(torch.hub.get_dir()) / "checkpoints" / name
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(dst), progress=False)
        except Exception as e:  # noqa: BLE001 - URLError, HTTPError, OSError, ...
            reason = str(getattr(e, "reason", "") or e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise CheckpointError(f"model.backbone.weights: cannot download {url} ({reason}); {_FIX}") from None
    return dst


def _timm_state(spec: str) -> dict[str, torch.Tensor]:
    """State dict of the full timm model ``spec`` = ``timm:<model>.<tag>`` with its pretrained weights, in the
    tag's own architecture (timm applies its key filters, e.g. the official Swin layout; what does not fit our
    trunk is then reported by name)."""
    import timm

    tag = spec[len("timm:"):]
    arch = tag.split(".")[0]
    known = timm.list_pretrained(f"{arch}.*")
    if tag not in known:
        shown = ", ".join(known[:8]) + (" ..." if len(known) > 8 else "")
        raise CheckpointError(f"model.backbone.weights: unknown timm pretrained tag '{tag}' "
                              f"(known: {shown or 'none for ' + arch})")
    try:
        return timm.create_model(tag, pretrained=True).state_dict()
    except Exception as e:  # noqa: BLE001 - hub / network errors come in many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise CheckpointError(f"model.backbone.weights: cannot fetch {spec} ({type(e).__name__}: {first}); "
                              f"{_FIX}") from None


def fetch_trunk_state(weights: str) -> dict[str, torch.Tensor]:
    """Tensors named by a ``model.backbone.weights`` value (see the module docstring; not ``none``)."""
    if weights.startswith("timm:"):
        return _timm_state(weights)
    if re.match(r"^(https?|file)://", weights):
        return read_state_dict(_download_cached(weights))
    path = Path(weights).expanduser()
    if not path.is_file():
        hint = _WHERE_TO_GET.get(path.name)
        where = f" ({path.name} is {hint})" if hint else ""
        raise CheckpointError(f"model.backbone.weights: file not found: {path}{where}; {_FIX}")
    return read_state_dict(path)


# ----------------------------------------------------------------------------------------------------------
# Foreign names -> timm names
# ----------------------------------------------------------------------------------------------------------
def detectron2_resnet_key(k: str) -> str | None:
    """detectron2 ResNet names (``stem.conv1.norm.*``, ``res2.0.shortcut.*``) -> timm ResNet names; None for
    keys that are not part of a detectron2 ResNet trunk (e.g. the classifier ``stem.fc.*`` that
    ``convert-torchvision-to-d2.py`` leaves in torchvision's R-50.pkl)."""
    m = re.match(r"^stem\.conv1\.(norm\.)?(.+)$", k)
    if m:
        return ("bn1." if m.group(1) else "conv1.") + m.group(2)
    m = re.match(r"^res(\d)\.(\d+)\.(.*)$", k)
    if not m:
        return None
    stage, block, rest = int(m.group(1)) - 1, m.group(2), m.group(3)
    rest = re.sub(r"^shortcut\.norm\.", "downsample.1.", rest)
    rest = re.sub(r"^shortcut\.", "downsample.0.", rest)
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    return f"layer{stage}.{block}.{rest}"


# mmcls / mmpose InvertedResidual ``conv.<i>`` -> timm block modules: with expansion (conv_pw, conv_dw, conv_pwl),
# without (layer1: depthwise, pointwise).
_MMCLS_EXPANDED = {0: ("conv_pw", "bn1"), 1: ("conv_dw", "bn2"), 2: ("conv_pwl", "bn3")}
_MMCLS_PLAIN = {0: ("conv_dw", "bn1"), 1: ("conv_pw", "bn2")}


def mmcls_mobilenetv2_key(k: str) -> str | None:
    """mmcls / mmpose MobileNetV2 names (``conv1.conv``, ``layer3.1.conv.2.bn``, ``conv2.conv``) -> timm
    ``mobilenetv2_*`` names; None for anything else (e.g. the classifier ``head.fc``)."""
    m = re.match(r"^conv([12])\.(conv|bn)\.(.+)$", k)
    if m:
        conv, bn = ("conv_stem", "bn1") if m.group(1) == "1" else ("conv_head", "bn2")
        return f"{conv if m.group(2) == 'conv' else bn}.{m.group(3)}"
    m = re.match(r"^layer(\d)\.(\d+)\.conv\.(\d)\.(conv|bn)\.(.+)$", k)
    if not m:
        return None
    stage, block, i = int(m.group(1)), m.group(2), int(m.group(3))
    table = _MMCLS_PLAIN if stage == 1 else _MMCLS_EXPANDED
    if i not in table:
        return None
    conv, bn = table[i]
    return f"blocks.{stage - 1}.{block}.{conv if m.group(4) == 'conv' else bn}.{m.group(5)}"


def _flattened_key(k: str) -> str:
    """timm full-model names -> timm ``FeatureListNet`` names (sequential children flattened: ``layers.0.`` ->
    ``layers_0.``)."""
    return re.sub(r"^([A-Za-z_]\w*)\.(\d+)\.", r"\1_\2.", k)


def to_trunk_names(state: dict[str, torch.Tensor], target_keys) -> dict[str, torch.Tensor]:
    """Rename a file's tensors to the trunk's (timm) names: strips mmcv's ``backbone.`` prefix, recognises the
    detectron2 ResNet and mmcls MobileNetV2 layouts, and timm's flattened feature modules. Keys that map to
    nothing keep their name (they are then reported as ignored)."""
    target = set(target_keys)
    if state and all(k.startswith("backbone.") or k.startswith("head.") for k in state):
        state = {(k[len("backbone."):] if k.startswith("backbone.") else k): v for k, v in state.items()}
    if any(k.startswith(("stem.conv1.", "res2.")) for k in state):
        mapper = detectron2_resnet_key
    elif any(re.match(r"^layer\d\.\d+\.conv\.\d\.(conv|bn)\.", k) for k in state):
        mapper = mmcls_mobilenetv2_key
    else:
        mapper = None
    out = {}
    for k, v in state.items():
        new = (mapper(k) if mapper else None) or k
        if new not in target and _flattened_key(new) in target:
            new = _flattened_key(new)
        out[new] = v
    return out


# ----------------------------------------------------------------------------------------------------------
# Partial loading with a report
# ----------------------------------------------------------------------------------------------------------
def _counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")      # a BatchNorm step counter, not a weight


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def _whole_modules(keys: set[str], universe: list[str]) -> list[str]:
    """The shortest module prefixes under which *every* key of ``universe`` is in ``keys`` (``keys`` is a subset
    of ``universe``), so a missing layer is named once, not tensor by tensor; a key alone when its module is only
    partly in ``keys``."""
    total = Counter(p for u in universe for p in _prefixes(u))
    inside = Counter(p for k in keys for p in _prefixes(k))
    out: dict[str, None] = {}
    for k in sorted(keys):
        out[next((p for p in _prefixes(k) if inside[p] == total[p]), k)] = None
    return list(out)


@dataclass
class LoadReport:
    """What a partial load did. Key lists are in the target module's names (``unexpected``: the file's)."""
    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)        # left at their initialisation
    unexpected: list[str] = field(default_factory=list)     # in the file, ignored
    mismatched: list[str] = field(default_factory=list)     # "key (file shape) vs (model shape)", ignored
    coverage: float = 0.0                                   # fraction of the target's parameter elements loaded
    left_at_init: list[str] = field(default_factory=list)   # ``missing`` as whole modules
    ignored: list[str] = field(default_factory=list)        # ``unexpected`` as whole modules

    def summary(self) -> str:
        """A few lines for the log: counts, then the modules by name."""
        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        lines = [f"{self.source}: loaded {len(self.loaded)}/{total} tensors ({100 * self.coverage:.1f}% of the "
                 f"parameters); {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.mismatched)} shape-mismatched"]
        for what, names in (("left at init", self.left_at_init), ("ignored from the file", self.ignored),
                            ("shape-mismatched (left at init)", self.mismatched)):
            if names:
                shown = ", ".join(names[:12]) + (f", ... (+{len(names) - 12})" if len(names) > 12 else "")
                lines.append(f"  {what}: {shown}")
        return "\n".join(lines)


def load_partial(module: nn.Module, state: dict[str, torch.Tensor], source: str,
                 min_coverage: float = MIN_COVERAGE, file_keys: list[str] | None = None) -> LoadReport:
    """Copy every tensor of ``state`` whose name and shape fit ``module``; the rest keeps its initialisation.

    Refuses (one line) when less than ``min_coverage`` of the module's parameter elements would be loaded
    (see :data:`MIN_COVERAGE`); nothing is modified then. ``file_keys``: the file's own names when ``state`` was
    renamed (:func:`to_trunk_names`), so ignored tensors are grouped in the file's layout."""
    own = {k: v for k, v in module.state_dict().items() if not _counter(k)}
    state = {k: v for k, v in state.items() if not _counter(k)}
    params = {n for n, _ in module.named_parameters()}
    fits = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    report = LoadReport(source=source, loaded=sorted(fits))
    report.mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                         for k in own if k in state and k not in fits]
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    total = sum(own[k].numel() for k in own if k in params) or 1
    report.coverage = sum(own[k].numel() for k in fits if k in params) / total
    report.left_at_init = _whole_modules(set(report.missing), list(own))
    report.ignored = _whole_modules(set(report.unexpected), [k for k in (file_keys or state) if not _counter(k)])
    if report.coverage < min_coverage:
        raise CheckpointError(
            f"{source}: only {100 * report.coverage:.1f}% of the parameters fit (minimum {100 * min_coverage:.0f}%): "
            f"{len(fits)} of {len(own)} tensors by name and shape, {len(report.unexpected)} of the file's "
            f"{len(state)} unknown (e.g. {', '.join(report.unexpected[:3]) or '-'}); is it for another model?")
    with torch.no_grad():
        for k, v in fits.items():
            own[k].copy_(v.to(own[k].dtype))
    return report
