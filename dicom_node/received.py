"""What the SCP checks in a received data set before it stores it: structure, UIDs and pixel data.

The encoded data set is walked element by element (no value is converted, pixel data is neither copied
nor decompressed): every length must fit in what arrived, every explicit VR must be a known one, sequences,
items and encapsulated pixel data must be closed, fixed-size values must have a whole number of values,
and no File Meta (0002) or command (0000) element may sit in a data set. pydicom then reads the header
(values over 64 KiB, i.e. pixel data, are skipped) for the attributes that the index and the routes need. Pixel data is decompressed
later, when a series is loaded, not at ingest.

==========  =====================================================================================
0xA900      data set does not match SOP Class: the command's SOP Class or Instance UID differs from
            the data set's (as DCMTK's storescp answers), or an image SOP class without pixel data
0xC210      cannot understand: truncated or malformed encoding, missing or invalid UIDs, native
            pixel data shorter than Rows x Columns x Samples x Bits Allocated x Frames
==========  =====================================================================================
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from io import BytesIO
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from dicom_node.errors import InstanceRejected
from dicom_node.routing import indexed_attributes
from dicom_node.uids import is_valid_uid

DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210

PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = 0x7FE00008
DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00009
PIXEL_DATA_PROVIDER_URL = 0x00287FE0
_PIXEL_TAGS = frozenset({PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA, PIXEL_DATA_PROVIDER_URL})

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 32
#: values longer than this (pixel data, mostly) are skipped, not copied, when the header is read
_DEFERRED_BYTES = 64 * 1024

_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"})
_SHORT_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN", "SH", "SL", "SS", "ST"}
    | {"TM", "UI", "UL", "US"}
)
_VALUE_SIZE = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "AT": 4, "FD": 8, "SV": 8, "UV": 8}


class _Malformed(Exception):
    """The encoding is broken; the message says where."""


def _where(tag: int, offset: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) at offset {offset}"


@lru_cache(maxsize=8192)
def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@dataclass
class _Walk:
    """One pass over an encoded data set (see the module docstring for what it checks)."""

    data: memoryview
    implicit: bool
    little_endian: bool
    #: top-level pixel data tags -> (encapsulated, value length in bytes or number of fragments)
    pixel_tags: dict[int, tuple[bool, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        order = "<" if self.little_endian else ">"
        self._tag = struct.Struct(order + "HH")
        self._u16 = struct.Struct(order + "H")
        self._u32 = struct.Struct(order + "L")
        # items and delimiters, and everything inside an explicit UN of undefined length, are little endian
        self._item = struct.Struct(order + "HHL")

    def run(self) -> None:
        end = len(self.data)
        self._dataset(0, end, 0, closed_by_item_end=False)

    def _header(self, pos: int, end: int) -> tuple[int, int]:
        if end - pos < 8:
            raise _Malformed(f"truncated: the data ends inside a sequence or pixel data at offset {end}")
        group, element, length = self._item.unpack_from(self.data, pos)
        return (group << 16) | element, length

    def _dataset(self, pos: int, end: int, depth: int, closed_by_item_end: bool) -> int:
        data = self.data
        while pos < end:
            if end - pos < 8:
                raise _Malformed(f"truncated: {end - pos} stray byte(s) at offset {pos}")
            group, element = self._tag.unpack_from(data, pos)
            tag = (group << 16) | element
            start = pos  # where the element begins, for the messages (formatted only when one is raised)
            if group == 0xFFFE:
                if tag == _ITEM_END and closed_by_item_end:
                    return pos + 8
                raise _Malformed(f"misplaced delimiter {_where(tag, start)}")
            if depth == 0 and group in (0x0000, 0x0002):
                raise _Malformed(
                    f"File Meta or command element {_where(tag, start)} in the data set (a file sent as is?)"
                )
            vr: str | None
            if self.implicit:
                vr = _dictionary_vr(tag)
                (length,) = self._u32.unpack_from(data, pos + 4)
                pos += 8
            else:
                vr_bytes = bytes(data[pos + 4 : pos + 6])
                vr = vr_bytes.decode("latin-1")
                if vr in _SHORT_VRS:
                    (length,) = self._u16.unpack_from(data, pos + 6)
                    pos += 8
                elif vr in _LONG_VRS:
                    if end - pos < 12:
                        raise _Malformed(f"truncated: element {_where(tag, start)} cut in its header")
                    (length,) = self._u32.unpack_from(data, pos + 8)
                    pos += 12
                else:
                    raise _Malformed(f"unknown VR {vr_bytes!r} in element {_where(tag, start)}")
            if length == _UNDEFINED:
                if vr == "UN" and not self.implicit:
                    inner = _Walk(self.data, implicit=True, little_endian=True)
                    pos = inner._sequence(pos, end, depth + 1)
                elif vr is not None and vr in ("OB", "OW", "OB or OW"):
                    pos, fragments = self._fragments(pos, end, _where(tag, start))
                    if depth == 0 and tag in _PIXEL_TAGS:
                        self.pixel_tags[tag] = (True, fragments)
                elif vr in (None, "SQ", "UN"):
                    pos = self._sequence(pos, end, depth + 1)
                else:
                    raise _Malformed(f"undefined length in {vr} element {_where(tag, start)}")
                continue
            if length > end - pos:
                raise _Malformed(
                    f"truncated: element {_where(tag, start)} declares {length} bytes, {end - pos} arrived"
                )
            size = _VALUE_SIZE.get(vr or "")
            if size and length % size:
                raise _Malformed(
                    f"{vr} element {_where(tag, start)}: {length} bytes is not a multiple of {size}"
                )
            if vr == "SQ":
                self._items(pos, pos + length, depth + 1)
            if depth == 0 and tag in _PIXEL_TAGS:
                self.pixel_tags[tag] = (False, length)
            pos += length
        if closed_by_item_end:
            raise _Malformed("truncated: an item of undefined length is not closed")
        if pos != end:
            raise _Malformed(f"an element runs past the end of its item at offset {pos}")
        return pos

    def _sequence(self, pos: int, end: int, depth: int) -> int:
        """Items of a sequence of undefined length, up to and including its delimiter."""
        if depth > _MAX_DEPTH:
            raise _Malformed(f"sequences nested deeper than {_MAX_DEPTH} levels")
        while True:
            tag, length = self._header(pos, end)
            if tag == _SEQUENCE_END:
                return pos + 8
            pos = self._item_at(tag, length, pos, end, depth)

    def _items(self, pos: int, end: int, depth: int) -> None:
        """Items of a sequence of defined length that must end exactly at ``end``."""
        if depth > _MAX_DEPTH:
            raise _Malformed(f"sequences nested deeper than {_MAX_DEPTH} levels")
        while pos < end:
            tag, length = self._header(pos, end)
            pos = self._item_at(tag, length, pos, end, depth)
        if pos != end:
            raise _Malformed(f"an item runs past the end of its sequence at offset {pos}")

    def _item_at(self, tag: int, length: int, pos: int, end: int, depth: int) -> int:
        if tag != _ITEM:
            raise _Malformed(f"not a sequence item at offset {pos}: tag {tag:08X}")
        pos += 8
        if length == _UNDEFINED:
            return self._dataset(pos, end, depth, closed_by_item_end=True)
        if length > end - pos:
            raise _Malformed(
                f"truncated: item at offset {pos - 8} declares {length} bytes, {end - pos} remain"
            )
        return self._dataset(pos, pos + length, depth, closed_by_item_end=False)

    def _fragments(self, pos: int, end: int, where: str) -> tuple[int, int]:
        """Encapsulated pixel data: offset table and fragments up to the delimiter; return (end, fragments)."""
        count = 0
        while True:
            tag, length = self._header(pos, end)
            if tag == _SEQUENCE_END:
                if count == 0:
                    raise _Malformed(f"no Basic Offset Table item in encapsulated {where}")
                return pos + 8, count - 1
            if tag != _ITEM or length == _UNDEFINED:
                raise _Malformed(f"bad item at offset {pos} in encapsulated {where}")
            if length > end - pos - 8:
                raise _Malformed(
                    f"truncated: fragment at offset {pos} declares {length} bytes, {end - pos - 8} arrived"
                )
            pos += 8 + length
            count += 1


@dataclass(frozen=True)
class ReceivedInstance:
    """A received data set that passed the checks: its UIDs, what the index keeps, and its header."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str | None
    attributes: dict[str, Any]
    header: Dataset  # the top-level elements, converted on access; values over 64 KiB are not read
    size: int  # bytes of the encoded data set


def content_hash(data: memoryview | bytes) -> str:
    """SHA-256 (hex) of an encoded data set as received: equal hashes mean an identical resend."""
    return hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=1024)
def is_image_storage(sop_class_uid: str) -> bool:
    """Whether ``sop_class_uid`` is a storage SOP class whose IOD holds pixel data (``...ImageStorage``)."""
    return "ImageStorage" in UID(sop_class_uid).keyword


_TEXT_TAGS = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "Modality": 0x00080060,
}


def _text(header: Dataset, keyword: str) -> str:
    """An ASCII value (UI, CS) straight from its encoded bytes: no pydicom conversion on the hot path."""
    tag = _TEXT_TAGS[keyword]
    if tag not in header:
        return ""
    value = header.get_item(tag).value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return "" if value is None else str(value).strip(" \x00")


def _check_native_pixel_length(header: Dataset, length: int) -> None:
    from pydicom.pixels.utils import get_expected_length

    try:
        expected = int(get_expected_length(header, unit="bytes"))
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InstanceRejected(DOES_NOT_MATCH_SOP_CLASS, f"incomplete Image Pixel module: {exc}") from None
    if length < expected:
        raise InstanceRejected(
            CANNOT_UNDERSTAND,
            f"truncated Pixel Data: {length} bytes where Rows, Columns, Samples per Pixel, Bits Allocated and"
            f" Number of Frames need {expected}",
        )


def inspect_received(
    data: memoryview,
    stream: BytesIO,
    transfer_syntax_uid: str,
    command_sop_class_uid: str,
    command_sop_instance_uid: str,
) -> ReceivedInstance:
    """Check one received data set and read what the node needs; raise ``InstanceRejected`` if refused.

    ``data`` is the encoded data set as received and ``stream`` a file object over the same bytes;
    ``transfer_syntax_uid`` is the accepted presentation context's. The command's SOP Class and Instance
    UIDs must equal the data set's.
    """
    syntax = UID(transfer_syntax_uid)
    size = data.nbytes
    if syntax.is_deflated:
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            inflated = inflater.decompress(data) + inflater.flush()
        except zlib.error as exc:
            raise InstanceRejected(CANNOT_UNDERSTAND, f"deflated data does not inflate: {exc}") from None
        if not inflater.eof:
            raise InstanceRejected(CANNOT_UNDERSTAND, "truncated: deflated data set ends early")
        data, stream = memoryview(inflated), BytesIO(inflated)
    walk = _Walk(data, implicit=syntax.is_implicit_VR, little_endian=syntax.is_little_endian)
    try:
        walk.run()
    except _Malformed as exc:
        raise InstanceRejected(CANNOT_UNDERSTAND, str(exc)) from None
    try:
        stream.seek(0)
        header = read_dataset(
            stream, syntax.is_implicit_VR, syntax.is_little_endian, defer_size=_DEFERRED_BYTES
        )
        uids = {
            keyword: _text(header, keyword)
            for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        }
        modality = _text(header, "Modality") or None
        attributes = indexed_attributes(header)
    except Exception as exc:  # pydicom raises many kinds on bad values
        raise InstanceRejected(CANNOT_UNDERSTAND, f"undecodable value: {type(exc).__name__}: {exc}") from None
    for keyword, value in uids.items():
        if not is_valid_uid(value):
            raise InstanceRejected(CANNOT_UNDERSTAND, f"{keyword} missing or not a valid UID: {value[:70]!r}")
    if uids["SOPClassUID"] != command_sop_class_uid:
        raise InstanceRejected(
            DOES_NOT_MATCH_SOP_CLASS,
            f"SOPClassUID differs: {uids['SOPClassUID']} in the data set, {command_sop_class_uid} in the"
            " C-STORE request",
        )
    if uids["SOPInstanceUID"] != command_sop_instance_uid:
        raise InstanceRejected(
            DOES_NOT_MATCH_SOP_CLASS,
            f"SOPInstanceUID differs: {uids['SOPInstanceUID']} in the data set, {command_sop_instance_uid}"
            " in the C-STORE request",
        )
    if is_image_storage(uids["SOPClassUID"]) and not walk.pixel_tags:
        raise InstanceRejected(
            DOES_NOT_MATCH_SOP_CLASS,
            f"no Pixel Data in an instance of the image SOP class {uids['SOPClassUID']}",
        )
    encapsulated, amount = walk.pixel_tags.get(PIXEL_DATA, (False, -1))
    if encapsulated and amount == 0:
        raise InstanceRejected(CANNOT_UNDERSTAND, "encapsulated Pixel Data holds no fragment")
    if not encapsulated and amount >= 0 and not syntax.is_compressed:
        _check_native_pixel_length(header, amount)
    return ReceivedInstance(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=str(syntax),
        modality=modality,
        attributes=attributes,
        header=header,
        size=size,
    )
