"""Helpers for the ingest tests: raw C-STOREs, test files in every transfer syntax, generated series."""

from __future__ import annotations

import copy
import itertools
import shutil
import socket
import subprocess
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from tests.helpers.peers import PEER_ENVIRONMENT, shared_data

#: DCMTK storescu's option that proposes a transfer syntax (with the uncompressed ones after it)
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
}
_message_ids = itertools.count(1)
_uid_root = "1.2.826.0.1.3680043.8.498.77."


def new_uid(*entropy: object) -> str:
    return generate_uid(prefix=_uid_root, entropy_srcs=[str(e) for e in entropy] or None)


def data_set_elements(dataset: Dataset) -> list[Any]:
    """The elements of a data set but group lengths and trailing padding (senders drop or add them)."""
    return [element for element in dataset if element.tag.element != 0 and element.tag != 0xFFFCFFFC]


def data_set_bytes(path: Path | bytes) -> tuple[Dataset, bytes]:
    """``(file meta, encoded data set)`` of a DICOM file (a path or its bytes), the data set as stored."""
    raw = path if isinstance(path, bytes) else path.read_bytes()
    stream = BytesIO(raw)
    pydicom.filereader.read_preamble(stream, False)
    file_meta = pydicom.filereader._read_file_meta_info(stream)
    return file_meta, raw[stream.tell() :]


def encoded(dataset: Dataset, transfer_syntax_uid: str) -> bytes:
    """``dataset`` encoded as a C-STORE data set in ``transfer_syntax_uid``."""
    syntax = UID(transfer_syntax_uid)
    data = encode(dataset, syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
    assert data is not None, "pydicom could not encode the data set"
    return data


def open_association(port: int, contexts: list[tuple[str, list[str]]], ae_title: str = "STORESCU") -> Any:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = 1024 * 1024
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, transfer_syntaxes)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDAGENT")
    assert assoc.is_established, "the node did not accept the association"
    # pynetdicom leaves Nagle on: a C-STORE would wait ~40 ms for the delayed ACK of its command PDU
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def raw_c_store(
    assoc: Any,
    sop_class_uid: str,
    sop_instance_uid: str,
    data: bytes,
    context_sop_class_uid: str | None = None,
    transfer_syntax_uid: str | None = None,
) -> tuple[int | None, str | None]:
    """Send ``data`` as the data set of a C-STORE, whatever it holds; return (status, error comment).

    pynetdicom's ``send_c_store`` encodes a Dataset; this sends bytes as they are (truncated, corrupted),
    on the accepted context of ``context_sop_class_uid`` (default: ``sop_class_uid``) and, if given,
    ``transfer_syntax_uid``. None: no answer.
    """
    context_class = context_sop_class_uid or sop_class_uid
    context = next(
        cx
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == context_class
        and (transfer_syntax_uid is None or cx.transfer_syntax[0] == transfer_syntax_uid)
    )
    request = C_STORE()
    request.MessageID = next(_message_ids) % 65535 + 1
    request.Priority = 2
    request.AffectedSOPClassUID = sop_class_uid
    request.AffectedSOPInstanceUID = sop_instance_uid
    request.DataSet = BytesIO(data)
    # the same steps as Association.send_c_store after it encoded the data set
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(request, context.context_id)
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    if response is None:
        return None, None
    return int(response.Status), getattr(response, "ErrorComment", None)


def with_new_uids(
    dataset: Dataset, *entropy: object, study: str | None = None, series: str | None = None
) -> Dataset:
    """A copy of ``dataset`` with a new SOP Instance UID (and the given or new study and series UIDs)."""
    result = copy.deepcopy(dataset)  # Dataset.copy() shares the elements with the original
    result.SOPInstanceUID = new_uid("sop", *entropy)
    result.StudyInstanceUID = study or new_uid("study", *entropy)
    result.SeriesInstanceUID = series or new_uid("series", *entropy)
    if hasattr(result, "file_meta"):
        result.file_meta.MediaStorageSOPInstanceUID = result.SOPInstanceUID
    return result


def _run(*arguments: str) -> None:
    completed = subprocess.run(
        list(arguments), capture_output=True, text=True, env=PEER_ENVIRONMENT, timeout=120
    )
    if completed.returncode != 0:
        raise RuntimeError(f"{arguments[0]} failed: {completed.stderr[-2000:]}")


def transcoded_files(folder: Path) -> dict[str, Path]:
    """Real slices in the transfer syntaxes ../shared/data lacks, each with its own SOP Instance UID.

    From the Siemens MR slice (16 bits allocated, 12 stored): Explicit VR Big Endian and Deflated (DCMTK
    dcmconv), JPEG Extended 12-bit and JPEG Lossless process 14 (dcmcjpeg), JPEG-LS near-lossless
    (dcmcjpls), JPEG 2000 lossy (pydicom with pylibjpeg-openjpeg), HTJ2K lossless and lossy (OpenJPH
    ojph_compress, encapsulated with pydicom); from the GE ultrasound (RGB, 8 bits): JPEG Baseline
    (dcmcjpeg). Keys are the transfer syntax UIDs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    mr = shared_data("ts_mr_siemens_trio_5ts") / "1.dcm"
    us = shared_data("us_ge_logiq700_rgb") / "US1_UNCR.dcm"

    def source(name: str, original: Path) -> Path:
        dataset = pydicom.dcmread(original)
        dataset = with_new_uids(
            dataset, name, study=dataset.StudyInstanceUID, series=dataset.SeriesInstanceUID
        )
        path = folder / f"{name}-source.dcm"
        dataset.save_as(path)
        return path

    files: dict[str, Path] = {}
    for uid, name, tool in (
        ("1.2.840.10008.1.2.2", "big-endian", ("dcmconv", "+tb")),
        ("1.2.840.10008.1.2.1.99", "deflated", ("dcmconv", "+td")),
        ("1.2.840.10008.1.2.4.51", "jpeg-extended", ("dcmcjpeg", "+ee")),
        ("1.2.840.10008.1.2.4.57", "jpeg-lossless-p14", ("dcmcjpeg", "+el")),
        ("1.2.840.10008.1.2.4.81", "jpeg-ls-near-lossless", ("dcmcjpls", "+en")),
    ):
        files[uid] = folder / f"{name}.dcm"
        _run(*tool, str(source(name, mr)), str(files[uid]))
    files["1.2.840.10008.1.2.4.50"] = folder / "jpeg-baseline.dcm"
    _run("dcmcjpeg", "+eb", str(source("jpeg-baseline", us)), str(files["1.2.840.10008.1.2.4.50"]))

    lossy = pydicom.dcmread(source("jpeg2000-lossy", mr))
    lossy.compress(pydicom.uid.JPEG2000, j2k_cr=[15])
    files["1.2.840.10008.1.2.4.91"] = folder / "jpeg2000-lossy.dcm"
    lossy.save_as(files["1.2.840.10008.1.2.4.91"])

    if shutil.which("ojph_compress") is None:
        raise RuntimeError("ojph_compress is not installed (apt-get install openjph-tools)")
    pixels = pydicom.dcmread(mr).pixel_array
    pgm = folder / "mr.pgm"
    pgm.write_bytes(
        b"P5\n%d %d\n4095\n" % (pixels.shape[1], pixels.shape[0]) + pixels.astype(">u2").tobytes()
    )
    for uid, name, options in (
        ("1.2.840.10008.1.2.4.201", "htj2k-lossless", ("-reversible", "true")),
        ("1.2.840.10008.1.2.4.203", "htj2k", ("-qstep", "0.01")),
    ):
        codestream = folder / f"{name}.j2c"
        _run("ojph_compress", "-i", str(pgm), "-o", str(codestream), *options)
        dataset = pydicom.dcmread(source(name, mr))
        dataset.PixelData = encapsulate([codestream.read_bytes()])
        dataset["PixelData"].VR = "OB"
        dataset.file_meta.TransferSyntaxUID = uid
        files[uid] = folder / f"{name}.dcm"
        dataset.save_as(files[uid], enforce_file_format=True)
    return files


def ct_series(count: int, study_instance_uid: str, series_instance_uid: str, seed: str) -> list[Dataset]:
    """``count`` small CT instances (pydicom's CT_small.dcm, 128x128) of one series, new SOP UIDs each."""
    from pydicom.data import get_testdata_file

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    instances = []
    for number in range(1, count + 1):
        dataset = with_new_uids(template, seed, number, study=study_instance_uid, series=series_instance_uid)
        dataset.InstanceNumber = number
        instances.append(dataset)
    return instances


def pixels_close(actual: np.ndarray, expected: np.ndarray, lossless: bool) -> bool:
    """Equal for a lossless syntax; within 2 % of the range on average for a lossy one."""
    if actual.shape != expected.shape:
        return False
    if lossless:
        return bool(np.array_equal(actual, expected))
    difference = np.abs(actual.astype(np.float64) - expected.astype(np.float64)).mean()
    return bool(difference <= 0.02 * (float(expected.max()) - float(expected.min()) or 1.0))
