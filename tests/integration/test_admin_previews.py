"""The console's pictures of a job (``GET /jobs/{id}/frames``, ``/frames/{n}``, ``/key-images/{uid}``) and
its static files, through the real app over a real node's index (not started) and the chest CT.

The job's result is stored as the pipeline stores one: Hounsfield masks of the left lung and a box (the
classical grounding engine, quick), so each picture can be compared with what ``dicom_node.encode.sc``
renders and with the mask itself.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from fastapi.testclient import TestClient
from PIL import Image

from config import load_settings
from dicom_node import pipeline
from dicom_node.admin.app import CONSOLE, create_app
from dicom_node.admin.config_store import ConfigStore
from dicom_node.encode import EncodingContext, encode_sc
from dicom_node.encode.common import segment_color
from dicom_node.encode.sc import LUNG_WINDOW, key_slice_of_result, render_grey, render_key_image
from dicom_node.load import Volume, load_volume, read_series
from tests.helpers.peers import free_port, shared_data
from tools.base import Box, ToolResult, ToolStatus
from tools.grounding.hounsfield import ground

pytestmark = pytest.mark.integration
TOKEN = "previews-admin-token-4411"
JOB_ID = "c0ffee00c0ffee00c0ffee00"


@dataclass
class Previewed:
    client: TestClient
    node: object
    volume: Volume
    masks: dict[str, np.ndarray]
    box: Box


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def store_result(node, masks: dict[str, np.ndarray], boxes: list[Box]) -> None:
    result = ToolResult(
        status=ToolStatus.OK, engine="CT Hounsfield anatomy", engine_version="1.0", masks=masks, boxes=boxes
    )
    pipeline._save_result(result, pipeline._results_path(node.settings, JOB_ID, 0))


@pytest.fixture(scope="module")
def previewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Previewed]:
    from dicom_node.node import Node

    folder = tmp_path_factory.mktemp("previews")
    config = {
        "node": {"ae_title": "MEDAGENT", "port": free_port(), "storage": str(folder / "var")},
        "models": {"device": "cpu"},
        "admin": {"port": 0, "token": TOKEN},
    }
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    node = Node(load_settings(path, environ={}), config_file=path)
    files = sorted(shared_data("ct_chest_lidc0314").glob("*.dcm"))
    for file in files:
        dataset = pydicom.dcmread(file, stop_before_pixels=True)
        node.index.record_instance(
            sop_instance_uid=str(dataset.SOPInstanceUID),
            sop_class_uid=str(dataset.SOPClassUID),
            study_instance_uid=str(dataset.StudyInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            modality="CT",
            path=str(file),
            size=file.stat().st_size,
            association_id=None,
            calling_ae_title="STORESCU",
            attributes={"Modality": "CT"},
            route=None,
            quiet_seconds=5.0,
        )
    volume = load_volume(read_series(files))
    masks = ground(volume.array, ["left lung"], volume.row_direction)
    key = int(np.argmax(masks["left lung"].sum(axis=(1, 2))))
    rows, columns = np.nonzero(masks["left lung"][key])
    xyxy = (float(columns.min()), float(rows.min()), float(columns.max()), float(rows.max()))
    box = Box("left lung", key, xyxy, 1.0, 512, 512)
    node.index.create_job(
        job_id=JOB_ID,
        study_instance_uid=volume.study_instance_uid,
        series_instance_uid=volume.series_instance_uid,
        route=None,
        instruction="Locate the left lung",
        destinations=[],
        plan={
            "thoughts": "t",
            "actions": [{"API_name": "grounding", "API_params": {"prompts": ["left lung"]}}],
            "value": "v",
        },
    )
    store_result(node, masks, [box])
    store = ConfigStore(path, settings=node.settings, apply=node.reconfigure, environ={})
    with TestClient(create_app(node, store, TOKEN), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield Previewed(client, node, volume, masks, box)


def test_frames_summary_names_the_structures_and_the_key_frame(previewed: Previewed) -> None:
    summary = previewed.client.get(f"/jobs/{JOB_ID}/frames").json()
    mask = previewed.masks["left lung"]
    assert summary["frames"] == 55 and summary["series_instance_uid"] == previewed.volume.series_instance_uid
    assert summary["key_frame"] == key_slice_of_result(previewed.masks, [previewed.box], 55)
    assert summary["sop_instance_uids"] == [str(d.SOPInstanceUID) for d in previewed.volume.datasets]
    (structure,) = summary["structures"]
    assert structure == {
        "label": "left lung",
        "color": list(segment_color(0)),
        "voxels": int(mask.sum()),
        "frames": [int(i) for i in np.flatnonzero(mask.any(axis=(1, 2)))],
    }
    assert [(b["label"], b["frame"]) for b in summary["boxes"]] == [("left lung", previewed.box.frame)]


def test_a_frame_is_drawn_as_the_key_image_draws_it(previewed: Previewed) -> None:
    frame = previewed.box.frame
    drawn = png(previewed.client.get(f"/jobs/{JOB_ID}/frames/{frame}"))
    expected = render_key_image(previewed.volume, previewed.masks, [previewed.box], frame)
    assert np.array_equal(drawn, expected)
    coloured = (drawn.max(axis=2).astype(int) - drawn.min(axis=2)) > 24
    assert coloured[previewed.masks["left lung"][frame]].mean() > 0.99  # every mask pixel is tinted

    plain = png(previewed.client.get(f"/jobs/{JOB_ID}/frames/{frame}", params={"overlay": "false"}))
    grey = render_grey(previewed.volume, frame, LUNG_WINDOW)
    assert np.array_equal(plain, np.repeat(grey[:, :, None], 3, axis=2))  # same window, nothing drawn

    empty = int(np.flatnonzero(~previewed.masks["left lung"].any(axis=(1, 2)))[0])
    assert np.array_equal(
        png(previewed.client.get(f"/jobs/{JOB_ID}/frames/{empty}", params={"overlay": "false"})),
        np.repeat(render_grey(previewed.volume, empty, LUNG_WINDOW)[:, :, None], 3, axis=2),
    )


def test_bad_frames_jobs_and_tokens_are_refused(previewed: Previewed) -> None:
    client = previewed.client
    assert client.get(f"/jobs/{JOB_ID}/frames/55").status_code == 404
    assert client.get(f"/jobs/{JOB_ID}/frames/-1").status_code == 422
    assert client.get(f"/jobs/{JOB_ID}/frames/x").status_code == 422
    assert client.get("/jobs/nope/frames").status_code == 404
    assert client.get("/jobs/nope/frames/0").status_code == 404
    assert client.get(f"/jobs/{JOB_ID}/key-images/1.2.3").status_code == 404
    for path in (f"/jobs/{JOB_ID}/frames", f"/jobs/{JOB_ID}/frames/0", f"/jobs/{JOB_ID}/key-images/1.2.3"):
        assert (
            client.get(path, headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
        )


def test_a_new_result_is_shown_without_a_restart(previewed: Previewed) -> None:
    right = ground(previewed.volume.array, ["right lung"], previewed.volume.row_direction)
    store_result(previewed.node, right, [])
    try:
        (structure,) = previewed.client.get(f"/jobs/{JOB_ID}/frames").json()["structures"]
        assert structure["label"] == "right lung" and structure["voxels"] == int(right["right lung"].sum())
    finally:
        store_result(previewed.node, previewed.masks, [previewed.box])
    assert previewed.client.get(f"/jobs/{JOB_ID}/frames").json()["structures"][0]["label"] == "left lung"


def test_key_images_are_the_jobs_secondary_captures(previewed: Previewed, tmp_path: Path) -> None:
    context = EncodingContext(
        uid_prefix="1.2.826.0.1.3680043.8.498.",
        series_number_base=9000,
        institution_name="T",
        node_ae_title="N",
    )
    sc = encode_sc(
        previewed.volume, previewed.masks, [previewed.box], "CT Hounsfield anatomy", "1.0", context
    )
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    previewed.node.index.record_output(
        sop_instance_uid=str(sc.SOPInstanceUID),
        job_id=JOB_ID,
        kind="SC",
        sop_class_uid=str(sc.SOPClassUID),
        path=str(path),
        destinations=[],
    )
    shown = png(previewed.client.get(f"/jobs/{JOB_ID}/key-images/{sc.SOPInstanceUID}"))
    assert np.array_equal(shown, pydicom.dcmread(path).pixel_array)


def test_the_console_is_served_without_a_token_and_fetches_nothing_from_elsewhere(
    previewed: Previewed,
) -> None:
    anonymous = TestClient(previewed.client.app)
    root = anonymous.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/console/"
    page = anonymous.get("/console/")
    assert page.status_code == 200 and 'src="js/app.js"' in page.text
    assert "Content-Security-Policy" in page.text
    assert anonymous.get("/console/js/app.js").headers["content-type"].startswith("text/javascript")
    assert anonymous.get("/studies").status_code == 401  # the data needs the token
    files = [p for p in CONSOLE.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".html", ".css", ".js", ".svg"}
    for file in files:
        text = file.read_text()
        assert anonymous.get(f"/console/{file.relative_to(CONSOLE).as_posix()}").status_code == 200
        external = [u for u in re.findall(r"https?://[^\s'\")]+", text) if u != "http://www.w3.org/2000/svg"]
        assert external == [], (file, external)
