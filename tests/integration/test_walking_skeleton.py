"""Issue 2 end to end: Orthanc pushes a real chest CT to the node; SEG, SR and SC come back to Orthanc."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.load import load_volume, read_series
from tests.helpers.peers import dciodvfy_errors
from tests.helpers.round_trip import COMPREHENSIVE_3D_SR, RESULT_CLASSES, SECONDARY_CAPTURE, SEG, RoundTrip
from tools.grounding.hounsfield import body_mask

pytestmark = pytest.mark.integration

VOLUME = ("118565006", "SCT")


def _sr_volumes(sr: pydicom.Dataset) -> dict[str, tuple[float, str, int, str]]:
    """Tracking identifier -> (volume, unit, referenced segment number, referenced SEG UID), TID 1411."""
    volumes = {}
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue != "126010":  # Imaging Measurements
            continue
        for group in item.ContentSequence:
            tracking, value, unit, segment, seg_uid = None, None, None, None, None
            for child in group.ContentSequence:
                name = child.ConceptNameCodeSequence[0]
                if name.CodeValue == "112039":  # Tracking Identifier
                    tracking = child.TextValue
                elif (name.CodeValue, name.CodingSchemeDesignator) == VOLUME:
                    measured = child.MeasuredValueSequence[0]
                    value = float(measured.NumericValue)
                    unit = measured.MeasurementUnitsCodeSequence[0].CodeValue
                elif name.CodeValue == "121191":  # Referenced Segment
                    segment = int(child.ReferencedSOPSequence[0].ReferencedSegmentNumber)
                    seg_uid = str(child.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            if value is not None:
                volumes[tracking] = (value, unit, segment, seg_uid)
    return volumes


def test_chest_ct_from_orthanc_comes_back_as_seg_sr_and_sc(chest_ct_round_trip: RoundTrip) -> None:
    trip = chest_ct_round_trip
    ct_files = trip.ct_files
    assert len(trip.deliveries) == 3 and all(d["state"] == "delivered" for d in trip.deliveries)
    for sop_class in RESULT_CLASSES:
        assert len(trip.found[sop_class]) == 1, (
            f"expected one {sop_class}, Orthanc holds {trip.found[sop_class]}"
        )
    files = trip.results
    for path in files.values():
        errors, output = dciodvfy_errors(path)
        assert errors == [], output

    source = load_volume(read_series(ct_files))
    seg = hd.seg.segread(files[SEG])
    sr = pydicom.dcmread(files[COMPREHENSIVE_3D_SR])
    sc = pydicom.dcmread(files[SECONDARY_CAPTURE])
    for dataset in (seg, sr, sc):
        assert dataset.StudyInstanceUID == source.study_instance_uid
        assert dataset.SeriesInstanceUID != source.series_instance_uid
    assert seg.SegmentationType == "BINARY"
    labels = {int(s.SegmentNumber): s.SegmentLabel.lower() for s in seg.SegmentSequence}
    assert sorted(labels.values()) == ["left lung", "right lung"]

    # Masks in source slice order, mapped through each frame's referenced source instance.
    slice_of = {str(d.SOPInstanceUID): i for i, d in enumerate(source.datasets)}
    masks = {label: np.zeros(source.array.shape, dtype=bool) for label in labels.values()}
    pixels = seg.pixel_array.reshape(-1, *source.array.shape[1:])
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        referenced = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        masks[labels[number]][slice_of[str(referenced)]] = pixels[frame].astype(bool)

    body = body_mask(source.array)
    voxel_ml = source.voxel_volume_ml
    assert voxel_ml == pytest.approx(5.0 * 0.78125 * 0.78125 / 1000)
    centres = {}
    for label, mask in masks.items():
        count = int(mask.sum())
        assert count * voxel_ml > 300, f"{label} mask is trivial: {count} voxels"
        assert (mask & ~body).sum() <= 0.01 * count, f"{label} lies outside the body"
        assert np.median(source.array[mask]) < -500, f"{label} is not air-filled lung tissue"
        z, rows, columns = np.nonzero(mask)
        centres[label] = source.patient_position_of(
            int(np.median(z)), float(rows.mean()), float(columns.mean())
        )
    # LPS: +x is the patient's left
    assert centres["left lung"][0] > centres["right lung"][0] + 50

    volumes = _sr_volumes(sr)
    assert {tracking.lower() for tracking in volumes} == {"left lung", "right lung"}
    for tracking, (value, unit, segment, seg_uid) in volumes.items():
        label = labels[segment]
        assert label == tracking.lower() and seg_uid == seg.SOPInstanceUID
        assert unit.lower() == "ml"
        assert value == pytest.approx(masks[label].sum() * voxel_ml, rel=1e-3, abs=0.1)
        assert 300 < value < 4500, f"{label} volume {value} mL is not plausible for an adult lung"
    assert sc.StudyInstanceUID == source.study_instance_uid
    assert sc.PhotometricInterpretation == "RGB"
