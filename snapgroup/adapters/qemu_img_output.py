"""What qemu-img prints, read: the JSON of `info --backing-chain` and `check`, and the
meter `-p` draws. Text in, values out: this module runs nothing (qemu_img.py is the only
module that runs qemu-img), so what it reads can be tested on qemu-img's words alone.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from snapgroup.domain.backup_manifest import ImageCheck
from snapgroup.domain.errors import ImageToolError
from snapgroup.domain.models import BlockJobProgress, ImageInfo
from snapgroup.ports import ProgressFn

# `qemu-img -p` draws "    (12.34/100%)".
_PROGRESS = re.compile(r"\((\d+(?:\.\d+)?)/100%\)")
PROGRESS_END = 10000  # progress is reported in hundredths of a percent


def meter(line: str) -> BlockJobProgress | None:
    """The progress a line of `qemu-img -p` shows, on PROGRESS_END's scale; None when
    the line shows none."""
    match = _PROGRESS.search(line)
    if match is None:
        return None
    cur = round(float(match.group(1)) * 100)
    return BlockJobProgress(cur=min(cur, PROGRESS_END), end=PROGRESS_END)


def scaled(progress: ProgressFn | None, step: int, steps: int) -> ProgressFn | None:
    """A progress callback for step `step` of `steps` that reports to `progress` on the
    whole operation's scale."""
    if progress is None:
        return None

    def report(p: BlockJobProgress) -> None:
        done = (step + p.cur / max(p.end, 1)) / steps
        progress(BlockJobProgress(cur=round(done * PROGRESS_END), end=PROGRESS_END))

    return report


def backing_chain(out: str, path: str) -> list[ImageInfo]:
    """`qemu-img info --backing-chain --output=json` of `path`: its layers, top first."""
    try:
        layers = json.loads(out)
        if not isinstance(layers, list) or not layers:
            raise ValueError("expected a non-empty JSON list")
        return [_image_info(layer) for layer in layers]
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageToolError(f"qemu-img info: unexpected output for {path}: {exc}") from exc


def check_report(out: str, path: str) -> ImageCheck:
    """`qemu-img check --output=json` of `path` (after a repair: what is left)."""
    try:
        report = json.loads(out)
        return ImageCheck(
            corruptions=int(report.get("corruptions", 0)),
            leaks=int(report.get("leaks", 0)),
            check_errors=int(report.get("check-errors", 0)),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ImageToolError(f"qemu-img check: unexpected output for {path}: {exc}") from exc


def _image_info(layer: dict[str, Any]) -> ImageInfo:
    path = os.path.abspath(layer["filename"])
    backing: str | None = layer.get("full-backing-filename")
    if backing is None and layer.get("backing-filename"):
        # Older output may lack the full name: a relative link is relative to the image.
        backing = os.path.join(os.path.dirname(path), layer["backing-filename"])
    return ImageInfo(
        path=path,
        format=str(layer["format"]),
        virtual_size=int(layer["virtual-size"]),
        actual_size=int(layer.get("actual-size", 0)),
        backing=os.path.abspath(backing) if backing else None,
        backing_format=layer.get("backing-filename-format"),
        cluster_size=int(layer.get("cluster-size", 65536)),
    )
