"""Fuzzing the running node with malformed data sets over a real association, a good study alongside.

Hypothesis draws a few hundred mutants (truncated, bytes flipped, VRs and lengths overwritten, bytes
inserted or cut) of real data sets in six transfer syntaxes, with and without sequences and encapsulated
pixel data. The node must answer every one with a status; Success only when the data set decodes in full
and is stored exactly as sent, a failure otherwise with the object in quarantine; and a good study sent at
the same time on another association completes with every instance indexed.
"""

from __future__ import annotations

import threading
import time
import warnings
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.filereader import data_element_generator
from pydicom.uid import UID
from pynetdicom.sop_class import CTImageStorage

from tests.conftest import node_settings, running_node
from tests.helpers.ingest import (
    ct_series,
    data_set_bytes,
    new_uid,
    open_association,
    raw_c_store,
    with_new_uids,
)
from tests.helpers.peers import wait_until

pytestmark = pytest.mark.integration
EXAMPLES = 300
FAILURES = {0xA900, 0xC210}
_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}  # 4-byte length VRs


@dataclass(frozen=True)
class Base:
    name: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    data: bytes = field(repr=False)
    header_offsets: tuple[int, ...] = field(repr=False)  # where top-level elements before the pixels start
    explicit: bool


def _bases() -> list[Base]:
    bases = []
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
                 "MR_small_jp2klossless.dcm"):  # fmt: skip
        dataset = with_new_uids(pydicom.dcmread(get_testdata_file(name, download=False)), "fuzz", name)
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        meta, data = data_set_bytes(buffer.getvalue())
        syntax = UID(meta.TransferSyntaxUID)
        offsets = []
        if not syntax.is_deflated:
            stream = BytesIO(data)
            for element in data_element_generator(stream, syntax.is_implicit_VR, syntax.is_little_endian):
                if element.tag >= 0x7FE00010:
                    break
                header = 8 if syntax.is_implicit_VR or element.VR not in _LONG else 12
                offsets.append(element.value_tell - header)
        bases.append(
            Base(name, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), str(syntax), data, tuple(offsets),
                 not syntax.is_implicit_VR)
        )  # fmt: skip
    return bases


@st.composite
def mutants(draw, bases: list[Base]) -> tuple[Base, str, bytes]:
    base = draw(st.sampled_from(bases))
    data = bytearray(base.data)
    kind = draw(st.sampled_from(["truncate", "flip", "vr", "length", "insert", "cut"]))
    header_end = max(base.header_offsets, default=len(data) - 1) + 12
    in_header = st.integers(0, min(header_end, len(data) - 1))
    anywhere = st.integers(0, len(data) - 1)
    if kind == "truncate":  # to one byte at least: pynetdicom sends no data set fragment for an empty one
        data = data[: max(1, draw(st.one_of(in_header, anywhere)))]
    elif kind == "flip":
        for _ in range(draw(st.integers(1, 6))):
            data[draw(st.one_of(in_header, anywhere))] ^= draw(st.integers(1, 255))
    elif kind in ("vr", "length") and base.header_offsets:
        offset = draw(st.sampled_from(base.header_offsets))
        if kind == "vr" and base.explicit:
            data[offset + 4 : offset + 6] = draw(st.binary(min_size=2, max_size=2))
        else:
            at = offset + (6 if base.explicit else 4)
            size = (
                2
                if base.explicit and bytes(data[offset + 4 : offset + 6]).decode("latin-1") not in _LONG
                else 4
            )
            if base.explicit and size == 4:
                at = offset + 8
            data[at : at + size] = draw(st.binary(min_size=size, max_size=size))
    elif kind == "insert":
        at = draw(in_header)
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    else:
        at = draw(in_header)
        del data[at : at + draw(st.integers(1, 64))]
    return base, kind, bytes(data)


def _decodes_in_full(path: str) -> None:
    """Read a stored file and convert every element, sequences included (pydicom may warn, not raise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
        for element in dataset.iterall():
            _ = element.value


def _send_good_study(port: int, instances, errors: list[BaseException]) -> None:
    try:
        assoc = open_association(port, [(CTImageStorage, ["1.2.840.10008.1.2.1"])])
        try:
            for dataset in instances:
                assert assoc.send_c_store(dataset).Status == 0x0000
                time.sleep(0.1)
        finally:
            assoc.release()
    except BaseException as exc:
        errors.append(exc)


def test_malformed_data_sets_never_crash_the_node_and_a_good_study_completes_beside_them(
    tmp_path: Path,
) -> None:
    bases = _bases()
    study = new_uid("fuzz good study")
    good = ct_series(40, study, new_uid("fuzz good series"), "fuzz good")
    configuration = node_settings(tmp_path / "node", routes=[])
    with running_node(configuration) as node:
        port, index, quarantine = node.scp.port, node.index, node.spool.quarantine_root
        errors: list[BaseException] = []
        sender = threading.Thread(target=_send_good_study, args=(port, good, errors))
        sender.start()
        contexts = sorted({(b.sop_class_uid, b.transfer_syntax_uid) for b in bases})
        assoc = open_association(port, [(sop_class, [syntax]) for sop_class, syntax in contexts])
        assoc.dimse_timeout = 10
        for base in bases:  # the originals go in first: mutants are then resends, versions or refusals
            stored = raw_c_store(
                assoc, base.sop_class_uid, base.sop_instance_uid, base.data, None, base.transfer_syntax_uid
            )
            assert stored[0] == 0x0000, base.name
        seen = {"answered": 0, "stored": 0}

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(mutant=mutants(bases))
        def one_mutant(mutant: tuple[Base, str, bytes]) -> None:
            base, kind, data = mutant
            quarantined_before = len(list(quarantine.glob("*.reason.txt")))
            before = index.instance(base.sop_instance_uid)
            status, comment = raw_c_store(
                assoc, base.sop_class_uid, base.sop_instance_uid, data, None, base.transfer_syntax_uid
            )
            assert status is not None and assoc.is_established, f"no answer to a {kind} mutant of {base.name}"
            seen["answered"] += 1
            after = index.instance(base.sop_instance_uid)
            if status == 0x0000:
                seen["stored"] += 1
                _decodes_in_full(after["path"])
                assert Path(after["path"]).read_bytes().endswith(data), "stored something else than was sent"
            else:
                assert status in FAILURES, f"0x{status:04X} {comment}"
                assert len(list(quarantine.glob("*.reason.txt"))) == quarantined_before + 1
                assert dict(after) == dict(before), "a refused object changed the index"

        try:
            one_mutant()
        finally:
            sender.join(timeout=60)
            assoc.release()
        assert not errors, errors
        assert seen["answered"] >= EXAMPLES and 0 < seen["stored"] < seen["answered"]

        def good_study_complete() -> bool:
            row = index.study(study)
            return row is not None and row["state"] != "receiving"

        wait_until(good_study_complete, timeout=30, what="the good study to complete")
        assert len(index.instances_of_study(study)) == len(good)
        assert node.scp._server is not None  # still serving
