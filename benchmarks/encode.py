"""Build times and sizes of the node's SEG, SR and SC for 50-, 300- and 1000-slice CT series.

The series are made from one real slice of ``ct_chest_lidc0314`` (slice 28, through both lungs), copied
with new SOP Instance UIDs and positions 1 mm apart, loaded with ``dicom_node.load``; the lung masks are the
Hounsfield grounding engine's on that slice, on the middle 60 % of the slices. Run from the repository root:

    .venv/bin/python benchmarks/encode.py [--frames 50 300 1000] [--repeat 1]

and read the table it prints (seconds are the best of ``--repeat`` runs; sizes are of the written file).
highdicom's ``workers`` option only compresses frames in parallel; the node writes uncompressed SEGs (Explicit
VR Little Endian), where it has no effect, so it is not measured.
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_node.encode import EncodingContext, SegmentationType, encode_sc, encode_seg, encode_sr  # noqa: E402
from dicom_node.load import Volume, load_volume  # noqa: E402
from tests.helpers.peers import shared_data  # noqa: E402
from tools.grounding.hounsfield import ground  # noqa: E402

CONTEXT = EncodingContext(
    uid_prefix="1.2.826.0.1.3680043.8.498.",
    series_number_base=9000,
    institution_name="Bench",
    node_ae_title="BENCH",
)
FRACTIONAL_LIMIT = 300  # dense float probability maps of 1000 slices need several GB; not run by default


def synthetic_series(frames: int) -> list[Dataset]:
    """``frames`` copies of one real CT slice with new UIDs, 1 mm apart along the slice normal."""
    paths = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))
    slices = sorted((pydicom.dcmread(p) for p in paths), key=lambda d: float(d.ImagePositionPatient[2]))
    base = slices[len(slices) // 2]
    series_instance_uid = generate_uid(
        prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=["bench", str(frames)]
    )
    x, y, z = (float(v) for v in base.ImagePositionPatient)
    header = copy.deepcopy(base)
    del header.PixelData
    datasets = []
    for index in range(frames):
        dataset = copy.deepcopy(header)
        dataset.PixelData = base.PixelData  # the bytes are shared
        dataset.SeriesInstanceUID = series_instance_uid
        dataset.SOPInstanceUID = generate_uid(
            prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=["bench", str(frames), str(index)]
        )
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.InstanceNumber = index + 1
        dataset.ImagePositionPatient = [x, y, z + index]
        dataset.SliceLocation = z + index
        datasets.append(dataset)
    return datasets


def lung_masks(volume: Volume) -> dict[str, np.ndarray]:
    """The slice's lungs on the middle 60 % of the slices, nothing above and below (as in a chest CT)."""
    one = ground(volume.array[:1], ["left lung", "right lung"], volume.row_direction)
    frames = volume.array.shape[0]
    masks = {label: np.repeat(mask, frames, axis=0) for label, mask in one.items()}
    for mask in masks.values():
        mask[: frames // 5] = False
        mask[frames - frames // 5 :] = False
    return masks


def timed(build: Callable[[], Dataset], repeat: int) -> tuple[float, int, Dataset]:
    best, dataset = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        dataset = build()
        best = min(best, time.perf_counter() - start)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return best, len(buffer.getvalue()), dataset


def bench(frames: int, repeat: int) -> None:
    """Print the rows of one series size."""
    start = time.perf_counter()
    volume = load_volume(synthetic_series(frames))
    masks = lung_masks(volume)
    print(f"{frames:>6}  {'(load_volume + masks)':<34} {time.perf_counter() - start:>8.2f}")
    rows: list[tuple[str, Callable[[], Dataset]]] = [
        ("SEG BINARY", lambda: encode_seg(volume, masks, "bench", "1", CONTEXT)),
        (
            "SEG BINARY omit_empty_frames",
            lambda: encode_seg(volume, masks, "bench", "1", CONTEXT, omit_empty_frames=True),
        ),
        (
            "SEG LABELMAP",
            lambda: encode_seg(
                volume, masks, "bench", "1", CONTEXT, segmentation_type=SegmentationType.LABELMAP
            ),
        ),
    ]
    if frames <= FRACTIONAL_LIMIT:
        probabilities = {
            label: ndimage.gaussian_filter(mask.astype(np.float32), sigma=(0, 2, 2))
            for label, mask in masks.items()
        }
        rows.append(("SEG FRACTIONAL", lambda: encode_seg(volume, probabilities, "bench", "1", CONTEXT)))
    seg = None
    for name, build in rows:
        seconds, size, dataset = timed(build, repeat)
        seg = seg or dataset
        print(f"{frames:>6}  {name:<34} {seconds:>8.2f} {size / 1e6:>8.2f} {int(dataset.NumberOfFrames):>16}")
    for name, build in [
        ("SR (TID 1500, 2 structures)", lambda: encode_sr(volume, seg, masks, "bench", "1", CONTEXT)),
        ("SC key image", lambda: encode_sc(volume, masks, [], "bench", "1", CONTEXT)),
    ]:
        seconds, size, _ = timed(build, repeat)
        print(f"{frames:>6}  {name:<34} {seconds:>8.2f} {size / 1e6:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[50, 300, 1000])
    parser.add_argument("--repeat", type=int, default=1)
    arguments = parser.parse_args()
    print(f"{'frames':>6}  {'object':<34} {'seconds':>8} {'MB':>8} {'frames in object':>16}")
    for frames in arguments.frames:
        bench(frames, arguments.repeat)


if __name__ == "__main__":
    main()
