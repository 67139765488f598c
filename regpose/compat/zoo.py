"""The model zoo: every checkpoint the official DEKR / Poseur / QueryPose repositories released, where each is
published, the regpose config that builds the same network, and the AP its official README reports.

``regpose models`` prints it per method next to the method's configs; the README's model-zoo table is written from
the same entries (tests/test_readme.py checks they agree). ``regpose infer`` / ``regpose test`` take these files as
they are downloaded (recognised by their keys and converted in memory: ``official_as_ours`` of the checkpoint
module).
Sources: the official READMEs (HRNet/DEKR @ 7a30313, aim-uofa/Poseur, buptxyb666/QueryPose).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..demo import configs_dir
from ..errors import RegposeError
from ..models.registry import method_names, get_method, official_methods

__all__ = ["OfficialCheckpoint", "OFFICIAL_CHECKPOINTS", "method_configs", "format_models", "format_zoo_table",
           "infer_command", "test_command"]

DEKR_PAGE = ("https://mailustceducn-my.sharepoint.com/:f:/g/personal/aa397601_mail_ustc_edu_cn/"
             "EmoNwNpq4L1FgUsC9KbWezABSotd3BGOlcWCdkBi91l50g?e=HWuluh")
_POSEUR_PAGE = "https://cloudstor.aarnet.edu.au/plus/s/"
_QUERYPOSE_PAGE = "https://drive.google.com/file/d/"


@dataclass(frozen=True)
class OfficialCheckpoint:
    """One released checkpoint.

    method / name:  our method; the official model name (its config's name in the official repository)
    file:           the file name the commands use: DEKR's as listed on its page; Poseur's and QueryPose's links
                    name no file, so save the download under this name (``wget PAGE -O FILE``)
    page:           where the official README links it
    config:         our config (under ``configs/``) building the same network; ``overrides`` on top of it
    ap / metric:    the AP the official README reports, and on what (split, test options)
    """
    method: str
    name: str
    file: str
    page: str
    config: str
    ap: str
    metric: str
    overrides: tuple[str, ...] = ()


_COCO_DEKR = "COCO val2017, flip, single scale, rescoring net; multi-scale {}"
_CROWD_DEKR = "CrowdPose test, flip, single scale, rescoring net; multi-scale {}"
_COCO_POSEUR = "COCO val2017, detector boxes (AP_H 56), flip"
_COCO_QUERYPOSE = "COCO val2017, no flip; the official README also lists AP* {}"

OFFICIAL_CHECKPOINTS: tuple[OfficialCheckpoint, ...] = (
    OfficialCheckpoint("dekr", "w32_4x_reg03_bs10_512_adam_lr1e-3_coco_x140", "pose_dekr_hrnetw32_coco.pth",
                       DEKR_PAGE, "dekr/dekr_hrnet_w32_coco_512.yaml", "68.0", _COCO_DEKR.format("70.7")),
    OfficialCheckpoint("dekr", "w48_4x_reg03_bs10_512_adam_lr1e-3_coco_x140", "pose_dekr_hrnetw48_coco.pth",
                       DEKR_PAGE, "dekr/dekr_hrnet_w48_coco_640.yaml", "71.0", _COCO_DEKR.format("72.3")),
    OfficialCheckpoint("dekr", "w32_4x_reg03_bs10_512_adam_lr1e-3_crowdpose_x300",
                       "pose_dekr_hrnetw32_crowdpose.pth", DEKR_PAGE, "dekr/dekr_hrnet_w32_crowdpose_512.yaml",
                       "65.7", _CROWD_DEKR.format("67.0")),
    OfficialCheckpoint("dekr", "w48_4x_reg03_bs5_640_adam_lr1e-3_crowdpose_x300", "pose_dekr_hrnetw48_crowdpose.pth",
                       DEKR_PAGE, "dekr/dekr_hrnet_w48_crowdpose_640.yaml", "67.3", _CROWD_DEKR.format("68.0")),
    OfficialCheckpoint("poseur", "poseur_mobilenetv2_coco_256x192", "poseur_mobilenetv2_coco_256x192.pth",
                       _POSEUR_PAGE + "L198TFFqwWYsSop/download", "poseur/poseur_mobilenetv2_coco_256x192.yaml",
                       "71.9", _COCO_POSEUR),
    OfficialCheckpoint("poseur", "poseur_mobilenetv2_coco_256x192_12dec", "poseur_mobilenetv2_coco_256x192_12dec.pth",
                       _POSEUR_PAGE + "sw0II7qSQDjJ88h/download", "poseur/poseur_mobilenetv2_coco_256x192.yaml",
                       "72.3", _COCO_POSEUR, ("model.num_decoder_layers=12",)),
    OfficialCheckpoint("poseur", "poseur_res50_coco_256x192", "poseur_256x192_res50_6dec_coco.pth",
                       _POSEUR_PAGE + "UXr1Dn9w6ja4fM9/download", "poseur/poseur_r50_coco_256x192.yaml",
                       "75.5", _COCO_POSEUR),
    OfficialCheckpoint("poseur", "poseur_hrnet_w32_coco_256x192", "poseur_hrnet_w32_coco_256x192.pth",
                       _POSEUR_PAGE + "xMvCnp5lb2MR7S4/download", "poseur/poseur_hrnet_w32_coco_256x192.yaml",
                       "76.8", _COCO_POSEUR),
    OfficialCheckpoint("poseur", "poseur_hrnet_w48_coco_384x288", "poseur_hrnet_w48_coco_384x288.pth",
                       _POSEUR_PAGE + "IGXy98TZlJYerNc/download", "poseur/poseur_hrnet_w48_coco_384x288.yaml",
                       "78.7", _COCO_POSEUR),
    OfficialCheckpoint("querypose", "querypose.hrnet32.100pro.3x (light)", "querypose_hrnet32_100pro_3x.pth",
                       _QUERYPOSE_PAGE + "1NWdntVoKFz7KjcDjTGwmAHyEEcS2PWC5/view",
                       "querypose/querypose_hrnet_w32_coco.yaml", "69.8", _COCO_QUERYPOSE.format("72.3")),
    OfficialCheckpoint("querypose", "querypose.hrnet48.100pro.3x (light)", "querypose_hrnet48_100pro_3x.pth",
                       _QUERYPOSE_PAGE + "1SFECnDV97D_W9Ij4WjcX3BfbiNbGue67/view",
                       "querypose/querypose_hrnet_w48_light_coco.yaml", "71.0", _COCO_QUERYPOSE.format("73.4")),
)
#: what the official repositories released besides pose networks (not in the table): DEKR's rescoring nets
#: final_rescore_coco_kpt.pth / final_rescore_crowd_pose_kpt.pth (same page), used as model.rescore_weights=FILE.
DEKR_RESCORE_FILES = ("final_rescore_coco_kpt.pth", "final_rescore_crowd_pose_kpt.pth")


def _overrides(ckpt: OfficialCheckpoint) -> str:
    return "".join(f" {o}" for o in ckpt.overrides)


def infer_command(ckpt: OfficialCheckpoint) -> str:
    """The ``regpose infer`` line for ``ckpt`` on a folder of photos (top-down methods: with a detections json)."""
    boxes = " --boxes person_detections.json" if get_method(ckpt.method).family == "topdown" else ""
    sets = "".join(f" --set {o}" for o in ckpt.overrides)
    return f"regpose infer configs/{ckpt.config} --weights {ckpt.file} photos/ --out out/{boxes}{sets}"


def test_command(ckpt: OfficialCheckpoint) -> str:
    """The ``regpose test`` line reproducing the README's AP on the config's data (its dataset laid out under
    ``data/``, see README "Datasets"); DEKR with its official rescoring net."""
    rescore = ""
    if ckpt.method == "dekr":
        rescore = f" model.rescore_weights={DEKR_RESCORE_FILES['crowdpose' in ckpt.config]}"
    return f"regpose test configs/{ckpt.config} --weights {ckpt.file}{_overrides(ckpt)}{rescore}"


def method_configs(method: str, root: Path | None = None) -> list[str]:
    """The shipped configs of ``method``: ``configs/<method>/*.yaml`` (one folder per method), as relative paths."""
    root = root or configs_dir()
    return sorted(f"{method}/{p.name}" for p in (root / method).glob("*.yaml"))


def format_models(method: str | None = None) -> str:
    """``regpose models``: per method its family, configs and the official checkpoints it accepts."""
    methods = method_names()
    if method is not None:
        if method not in methods:
            raise RegposeError(f"regpose models: unknown method '{method}' (one of: {', '.join(methods)})")
        methods = [method]
    lines = []
    for m in methods:
        spec = get_method(m)
        lines.append(f"{m} ({spec.family})")
        lines.append(f"  configs/{m}/: " + ", ".join(c.split("/", 1)[1] for c in method_configs(m)))
        released = [c for c in OFFICIAL_CHECKPOINTS if c.method == m]
        if not released:
            lines.append("  official checkpoints: none accepted" if m not in official_methods() else
                         "  official checkpoints: any of its official code's files (none listed)")
        for c in released:
            lines.append(f"  official {c.file}: configs/{c.config}{_overrides(c)} -> {c.ap} AP ({c.metric})")
            lines.append(f"      {c.page}")
        if m == "dekr":
            lines.append(f"  official rescoring nets {' / '.join(DEKR_RESCORE_FILES)}: model.rescore_weights=FILE")
        lines.append("")
    lines.append("Official files load as downloaded: regpose infer / test CONFIG --weights FILE (converted in memory).")
    return "\n".join(lines)


def format_zoo_table() -> str:
    """The README's model-zoo table (markdown), one row per released checkpoint: ``regpose models --markdown``."""
    rows = ["| official model | published at | our config | expected AP | commands |", "|---|---|---|---|---|"]
    for c in OFFICIAL_CHECKPOINTS:
        over = f" + `{' '.join(c.overrides)}`" if c.overrides else ""
        rows.append(f"| {c.method}: `{c.name}` | [{c.file}]({c.page}) | `configs/{c.config}`{over} | {c.ap} ({c.metric}) "
                    f"| `{infer_command(c)}`<br>`{test_command(c)}` |")
    return "\n".join(rows)
