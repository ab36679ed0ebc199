"""shared.metadata.read_metadata: EXIF/XMP/PNG-text capture time, camera, GPS and orientation, header only."""

from __future__ import annotations

import io
import logging
import random
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile, PngImagePlugin, TiffImagePlugin

from shared.metadata import PhotoMetadata, read_metadata

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL, ORIENTATION, DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
ORIGINAL, DIGITIZED, OFFSET, OFFSET_ORIGINAL, OFFSET_DIGITIZED = 0x9003, 0x9004, 0x9010, 0x9011, 0x9012
SUBSEC_ORIGINAL = 0x9291
SYDNEY = {1: "S", 2: (33.0, 51.0, 54.0), 3: "E", 4: (151.0, 12.0, 36.0)}  # -33.865, 151.21


def exif(ifd0: dict[int, Any] | None = None, exif_ifd: dict[int, Any] | None = None,
         gps: dict[int, Any] | None = None) -> Image.Exif:
    out = Image.Exif()
    for tag, value in (ifd0 or {}).items():
        out[tag] = value
    if exif_ifd:
        out.get_ifd(EXIF_IFD).update(exif_ifd)
    if gps:
        out.get_ifd(GPS_IFD).update(gps)
    return out


def full_exif() -> Image.Exif:
    return exif({MAKE: "Canon", MODEL: "Canon EOS 5D", ORIENTATION: 6, DATETIME: "2022:01:01 00:00:00"},
                {ORIGINAL: "2021:06:01 12:30:45", OFFSET_ORIGINAL: "+02:00", SUBSEC_ORIGINAL: "25"}, SYDNEY)


def encode(fmt: str, info: Image.Exif | bytes | None = None, size: tuple[int, int] = (16, 12), **kw: Any) -> bytes:
    out = io.BytesIO()
    img = Image.new("RGB", size, (200, 30, 30))
    if info is not None:
        kw["exif"] = info
    try:
        img.save(out, fmt, **kw)
    except (KeyError, OSError, ValueError) as exc:  # no HEIF/AVIF encoder in this build
        pytest.skip(f"cannot write {fmt} here: {exc}")
    return out.getvalue()


def jpeg(**tags: Any) -> bytes:
    return encode("JPEG", exif(**tags))


def meta(data: bytes) -> PhotoMetadata:
    return read_metadata(data)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


# ---------------------------------------------------------------- raw TIFF/EXIF for what Pillow will not write

ASCII, SHORT, LONG, RATIONAL = 2, 3, 4, 5
Entry = tuple[int, int, int, bytes]  # tag, type, count, payload


def ascii_(tag: int, text: str | bytes) -> Entry:
    data = (text.encode("latin-1") if isinstance(text, str) else text) + b"\0"
    return tag, ASCII, len(data), data


def short(tag: int, *values: int) -> Entry:
    return tag, SHORT, len(values), struct.pack(f"<{len(values)}H", *values)


def rational(tag: int, *pairs: tuple[int, int]) -> Entry:
    return tag, RATIONAL, len(pairs), b"".join(struct.pack("<II", n, d) for n, d in pairs)


def _ifd(entries: list[Entry], start: int) -> bytes:
    head, data = struct.pack("<H", len(entries)), b""
    data_start = start + 2 + 12 * len(entries) + 4
    for tag, typ, count, payload in sorted(entries):
        if len(payload) <= 4:
            head += struct.pack("<HHI", tag, typ, count) + payload.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, typ, count, data_start + len(data))
            data += payload + b"\0" * (len(payload) % 2)
    return head + b"\0\0\0\0" + data


def raw_exif(ifd0: list[Entry], exif_ifd: list[Entry] | None = None, gps: list[Entry] | None = None) -> bytes:
    """b"Exif\\0\\0" + a little-endian TIFF structure with IFD0 and optional Exif and GPS IFDs."""
    subs = [(tag, entries) for tag, entries in ((EXIF_IFD, exif_ifd), (GPS_IFD, gps)) if entries is not None]
    pointers = [(tag, LONG, 1, b"\0\0\0\0") for tag, _ in subs]
    size0 = len(_ifd(ifd0 + pointers, 8))
    offset, blobs = 8 + size0, b""
    for i, (tag, entries) in enumerate(subs):
        pointers[i] = (tag, LONG, 1, struct.pack("<I", offset))
        blob = _ifd(entries, offset)
        blobs, offset = blobs + blob, offset + len(blob)
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + _ifd(ifd0 + pointers, 8) + blobs


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "HEIF", "AVIF"])
def test_every_field_from_each_format(fmt):
    m = meta(encode(fmt, full_exif()))
    assert m.captured_at == datetime(2021, 6, 1, 10, 30, 45, 250_000, tzinfo=UTC)
    assert m.captured_at.tzinfo is UTC
    assert (m.camera_make, m.camera_model) == ("Canon", "Canon EOS 5D")  # model kept though it repeats the make
    assert (m.latitude, m.longitude) == (-33.865, 151.21)
    # pillow_heif turns the EXIF orientation into a transform it applies when decoding: upright, 1
    assert m.orientation == (1 if fmt == "HEIF" else 6)


def test_tiff_reads_its_own_tags_and_sub_ifds():
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[MAKE], info[MODEL], info[ORIENTATION] = "Nikon", "D750", 3
    info[EXIF_IFD] = {ORIGINAL: "2019:12:31 23:30:00", OFFSET_ORIGINAL: "-05:00"}
    info[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 29.6), 3: "W", 4: (2.0, 17.0, 40.2)}
    m = meta(encode("TIFF", tiffinfo=info))
    assert m == PhotoMetadata(at(2020, 1, 1, 4, 30), "Nikon", "D750", 48.858222, -2.2945, 3)


def test_a_path_reads_like_bytes(tmp_path):
    data = encode("JPEG", full_exif())
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    assert read_metadata(path) == read_metadata(data) != PhotoMetadata()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "HEIF", "AVIF"])
def test_pixels_are_never_decoded(fmt, monkeypatch):
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[MAKE] = "Canon"
    data = encode(fmt, tiffinfo=info) if fmt == "TIFF" else encode(fmt, full_exif())
    classes = {ImageFile.ImageFile, type(Image.open(io.BytesIO(data)))}

    def boom(self):
        raise AssertionError("pixels decoded")

    for cls in classes:
        if "load" in vars(cls):
            monkeypatch.setattr(cls, "load", boom)
    assert meta(data).camera_make == "Canon"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_no_metadata_at_all(fmt):
    assert meta(encode(fmt)) == PhotoMetadata()


@pytest.mark.parametrize("data", [b"", b"hello, world", b"\xff\xd8\xff\xe1\x00\x10Exif\0\0", b"GIF89a"])
def test_not_an_image_gives_empty_metadata(data):
    assert read_metadata(data) == PhotoMetadata()


def test_missing_file_gives_empty_metadata(tmp_path):
    assert read_metadata(tmp_path / "nope.jpg") == PhotoMetadata()


# ---------------------------------------------------------------- capture time


@pytest.mark.parametrize(("offset", "expected"), [
    ("+02:00", at(2021, 6, 1, 10, 30, 45)),
    ("-05:30", at(2021, 6, 1, 18, 0, 45)),
    ("+00:00", at(2021, 6, 1, 12, 30, 45)),
    (None, at(2021, 6, 1, 12, 30, 45)),  # no offset: the wall-clock time is taken as UTC
    ("+99:00", at(2021, 6, 1, 12, 30, 45)),  # absurd offset ignored, the date kept
    ("   :  ", at(2021, 6, 1, 12, 30, 45)),
])
def test_offset_gives_utc(offset, expected):
    sub = {ORIGINAL: "2021:06:01 12:30:45"} | ({OFFSET_ORIGINAL: offset} if offset else {})
    assert meta(jpeg(exif_ifd=sub)).captured_at == expected


def test_offset_crossing_the_year():
    sub = {ORIGINAL: "2021:01:01 01:00:00", OFFSET_ORIGINAL: "+09:00"}
    assert meta(jpeg(exif_ifd=sub)).captured_at == at(2020, 12, 31, 16)


@pytest.mark.parametrize(("subsec", "micro"), [("25", 250_000), ("123456789", 123_456), ("007", 7_000), ("x1", 0)])
def test_subseconds(subsec, micro):
    m = meta(jpeg(exif_ifd={ORIGINAL: "2021:06:01 12:30:45", SUBSEC_ORIGINAL: subsec}))
    assert m.captured_at == at(2021, 6, 1, 12, 30, 45).replace(microsecond=micro)


def test_falls_back_to_digitized_then_datetime_with_their_own_offsets():
    digitized = {DIGITIZED: "2020:05:05 10:00:00", OFFSET_DIGITIZED: "+01:00", OFFSET_ORIGINAL: "+05:00"}
    assert meta(jpeg(exif_ifd=digitized)).captured_at == at(2020, 5, 5, 9)
    assert meta(jpeg(ifd0={DATETIME: "2019:04:04 10:00:00"}, exif_ifd={OFFSET: "-02:00"})).captured_at == at(
        2019, 4, 4, 12)
    assert meta(jpeg(ifd0={DATETIME: "2019:04:04 10:00:00"})).captured_at == at(2019, 4, 4, 10)


def test_a_bad_original_falls_back_to_the_next_date():
    m = meta(jpeg(ifd0={DATETIME: "2019:04:04 10:00:00"}, exif_ifd={ORIGINAL: "0000:00:00 00:00:00"}))
    assert m.captured_at == at(2019, 4, 4, 10)


@pytest.mark.parametrize("text", [
    "0000:00:00 00:00:00", "0000:01:01 00:00:00", "9999:12:31 23:59:59", "garbage", "", "    :  :     :  :  ",
    "1800:01:01 00:00:00", "2021:13:01 00:00:00", "2021:02:30 10:00:00", "2021:06:01 25:00:00",
    "2021:06:01 12:30:45 and more", "1" * 200,
])
def test_absurd_dates_are_dropped_field_by_field(text, caplog):
    caplog.set_level(logging.DEBUG, logger="shared.metadata")
    m = meta(jpeg(ifd0={MAKE: "Canon"}, exif_ifd={ORIGINAL: text}, gps=SYDNEY))
    assert m.captured_at is None
    assert (m.camera_make, m.latitude) == ("Canon", -33.865)  # the rest of the image is untouched
    assert "captured_at (DateTimeOriginal) dropped" in caplog.text


def test_future_dates_are_dropped_but_today_is_kept():
    tomorrow_and_more = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y:%m:%d %H:%M:%S")
    assert meta(jpeg(exif_ifd={ORIGINAL: tomorrow_and_more})).captured_at is None
    now = datetime.now(UTC).replace(microsecond=0)
    assert meta(jpeg(exif_ifd={ORIGINAL: now.strftime("%Y:%m:%d %H:%M:%S")})).captured_at == now
    assert meta(jpeg(exif_ifd={ORIGINAL: "1826:06:01 00:00:00"})).captured_at == at(1826, 6, 1)


def test_iso_style_exif_dates_are_read():
    assert meta(jpeg(exif_ifd={ORIGINAL: "2021-06-01T12:30:45"})).captured_at == at(2021, 6, 1, 12, 30, 45)
    assert meta(jpeg(exif_ifd={ORIGINAL: "2021:06:01 12:30:45\0\0"})).captured_at == at(2021, 6, 1, 12, 30, 45)


def test_a_date_of_the_wrong_type_is_dropped():
    data = encode("JPEG", raw_exif([ascii_(MAKE, "Canon")], [short(ORIGINAL, 2021, 6, 1)]))
    assert (meta(data).captured_at, meta(data).camera_make) == (None, "Canon")


XMP = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
       'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" {attrs}>{elements}</rdf:Description>'
       '</rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize(("attrs", "elements", "expected"), [
    ('xmp:CreateDate="2018-03-04T05:06:07+01:00"', "", at(2018, 3, 4, 4, 6, 7)),
    ("", "<photoshop:DateCreated>2018-03-04T05:06:07.5Z</photoshop:DateCreated>", at(2018, 3, 4, 5, 6, 7, 500_000)),
    ('xmp:CreateDate="2018-03-04T05:06:07"', "<photoshop:DateCreated>2017-01-02</photoshop:DateCreated>",
     at(2017, 1, 2)),  # DateCreated (the capture date) before CreateDate
    ('xmp:CreateDate="garbage"', "", None),
])
def test_xmp_dates_when_exif_has_none(attrs, elements, expected):
    packet = XMP.format(attrs=attrs, elements=elements).encode()
    assert meta(encode("JPEG", xmp=packet)).captured_at == expected
    png = PngImagePlugin.PngInfo()
    png.add_itxt("XML:com.adobe.xmp", packet.decode())
    assert meta(encode("PNG", pnginfo=png)).captured_at == expected


def test_exif_date_wins_over_xmp():
    packet = XMP.format(attrs='xmp:CreateDate="2018-03-04T05:06:07"', elements="").encode()
    data = encode("JPEG", exif(exif_ifd={ORIGINAL: "2021:06:01 12:30:45"}), xmp=packet)
    assert meta(data).captured_at == at(2021, 6, 1, 12, 30, 45)


@pytest.mark.parametrize(("text", "expected"), [
    ("Sat, 01 Jan 2000 12:00:00 GMT", at(2000, 1, 1, 12)),
    ("Sat, 01 Jan 2000 12:00:00 +0100", at(2000, 1, 1, 11)),
    ("2000-01-01T12:00:00+01:00", at(2000, 1, 1, 11)),
    ("2000:01:01 12:00:00", at(2000, 1, 1, 12)),
    ("yesterday", None),
])
def test_png_creation_time(text, expected):
    png = PngImagePlugin.PngInfo()
    png.add_text("Creation Time", text)
    assert meta(encode("PNG", pnginfo=png)).captured_at == expected


# ---------------------------------------------------------------- make and model


@pytest.mark.parametrize(("raw", "expected"), [
    ("  Canon\0\0", "Canon"),
    ("KONICA MINOLTA ", "KONICA MINOLTA"),
    ("Canon \t EOS\n5D  ", "Canon EOS 5D"),
    ("A" * 100, "A" * 64),
    ("A" * 300, ""),  # not a camera name
    ("Nikon\0garbage after the terminator", "Nikon"),
    ("Pen\x07tax", "Pen tax"),
    ("Łódź Cam".encode(), "Łódź Cam"),  # UTF-8 bytes come back as text, not as latin-1 mojibake
    (b"\xff\xfeCanon", "Canon"),  # bytes that are not UTF-8 are dropped
    (b"\xff\xfe", ""),
    (b"Caf\xe9", "Caf"),
])
def test_camera_text_is_cleaned(raw, expected):
    m = meta(jpeg(ifd0={MAKE: raw, MODEL: raw}))
    assert (m.camera_make, m.camera_model) == (expected, expected)
    assert len(m.camera_make) <= 64
    m.camera_make.encode("utf-8")


@pytest.mark.parametrize("entry", [short(MAKE, 42), short(MAKE, 1, 2, 3), rational(MAKE, (1, 2))])
def test_a_make_of_the_wrong_type_is_dropped(entry, caplog):
    caplog.set_level(logging.DEBUG, logger="shared.metadata")
    data = encode("JPEG", raw_exif([entry, ascii_(MODEL, "EOS 5D"), short(ORIENTATION, 8)],
                                   [ascii_(ORIGINAL, "2021:06:01 12:30:45")]))
    assert meta(data) == PhotoMetadata(at(2021, 6, 1, 12, 30, 45), "", "EOS 5D", None, None, 8)
    assert "camera_make dropped" in caplog.text


# ---------------------------------------------------------------- GPS


@pytest.mark.parametrize(("gps", "expected"), [
    (SYDNEY, (-33.865, 151.21)),
    ({1: "N", 2: (48.0, 51.0, 29.6), 3: "W", 4: (2.0, 17.0, 40.2)}, (48.858222, -2.2945)),
    ({1: "n", 2: (10.5, 0.0, 0.0), 3: "e", 4: (20.25, 0.0, 0.0)}, (10.5, 20.25)),
    ({1: "N", 2: (1.0, 2.0, 3.3333333), 3: "E", 4: (4.0, 5.0, 6.0)}, (1.034259, 4.085)),
    ({1: "S", 2: (90.0, 0.0, 0.0), 3: "W", 4: (180.0, 0.0, 0.0)}, (-90.0, -180.0)),
    ({1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (12.0, 0.0, 0.0)}, (0.0, 12.0)),  # the equator is fine
])
def test_gps(gps, expected):
    m = meta(jpeg(gps=gps))
    assert (m.latitude, m.longitude) == expected


@pytest.mark.parametrize("gps", [
    {1: "N", 2: (95.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # |lat| > 90
    {1: "N", 2: (10.0, 0.0, 0.0), 3: "E", 4: (181.0, 0.0, 0.0)},  # |lon| > 180
    {1: "N", 2: (89.0, 75.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # 75 minutes
    {1: "N", 2: (0.0, 0.0, 0.0), 3: "E", 4: (0.0, 0.0, 0.0)},  # (0, 0): a phone without a fix
    {1: "S", 2: (0.0, 0.0, 0.0), 3: "W", 4: (0.0, 0.0, 0.0)},
    {1: "X", 2: (10.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # unknown reference
    {2: (10.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},  # no reference: the hemisphere would be a guess
    {1: "N", 2: (10.0, 0.0, 0.0)},  # latitude only: both or neither
    {3: "E", 4: (10.0, 0.0, 0.0)},
])
def test_bad_gps_is_dropped_as_a_pair(gps, caplog):
    caplog.set_level(logging.DEBUG, logger="shared.metadata")
    m = meta(jpeg(ifd0={MAKE: "Canon"}, gps=gps))
    assert (m.latitude, m.longitude, m.camera_make) == (None, None, "Canon")
    assert "gps" in caplog.text


@pytest.mark.parametrize("lat", [
    rational(2, (10, 1), (0, 0), (0, 1)),  # zero denominator
    rational(2, (0, 0), (0, 0), (0, 0)),  # 0/0: NaN
    rational(2, (10, 1), (20, 1), (30, 1), (40, 1)),  # four components
    rational(2, (0xFFFFFFFF, 1), (0, 1), (0, 1)),  # huge
    ascii_(2, "ten degrees"),  # a string where rationals belong
    short(2, 0xFFFF),  # an integer, out of range
])
def test_hostile_gps_values_are_dropped(lat):
    gps = [ascii_(1, "N"), lat, ascii_(3, "E"), rational(4, (10, 1), (0, 1), (0, 1))]
    data = encode("JPEG", raw_exif([ascii_(MAKE, "Canon")], [ascii_(ORIGINAL, "2021:06:01 12:30:45")], gps))
    m = meta(data)
    assert (m.latitude, m.longitude) == (None, None)
    assert (m.camera_make, m.captured_at) == ("Canon", at(2021, 6, 1, 12, 30, 45))


def test_raw_gps_with_good_rationals_is_read():
    gps = [ascii_(1, "S"), rational(2, (33, 1), (51, 1), (5400, 100)),
           ascii_(3, "E"), rational(4, (151, 1), (1236, 100), (0, 1))]
    m = meta(encode("JPEG", raw_exif([], None, gps)))
    assert (m.latitude, m.longitude) == (-33.865, 151.206)


# ---------------------------------------------------------------- orientation


@pytest.mark.parametrize(("value", "expected"), [(1, 1), (6, 6), (8, 8), (0, 1), (9, 1), (65535, 1)])
def test_orientation(value, expected):
    assert meta(jpeg(ifd0={ORIENTATION: value})).orientation == expected


def test_orientation_of_the_wrong_type():
    assert meta(encode("JPEG", raw_exif([ascii_(ORIENTATION, "6"), ascii_(MAKE, "Canon")]))).orientation == 1
    assert meta(encode("JPEG", raw_exif([rational(ORIENTATION, (6, 1))]))).orientation == 1


# ---------------------------------------------------------------- hostile EXIF blocks


def good_raw() -> bytes:
    return raw_exif(
        [ascii_(MAKE, "Canon"), ascii_(MODEL, "Canon EOS 5D"), short(ORIENTATION, 6)],
        [ascii_(ORIGINAL, "2021:06:01 12:30:45"), ascii_(OFFSET_ORIGINAL, "+02:00")],
        [ascii_(1, "S"), rational(2, (33, 1), (51, 1), (54, 1)),
         ascii_(3, "E"), rational(4, (151, 1), (12, 1), (36, 1))],
    )


def test_the_raw_builder_makes_readable_exif():
    assert meta(encode("JPEG", good_raw())) == PhotoMetadata(
        at(2021, 6, 1, 10, 30, 45), "Canon", "Canon EOS 5D", -33.865, 151.21, 6)


@pytest.mark.parametrize("block", [
    b"Exif\0\0",
    b"Exif\0\0II*\0",
    b"Exif\0\0II*\0\xff\xff\xff\x7f",  # IFD0 far past the end
    b"Exif\0\0XX*\0\x08\0\0\0",  # neither byte order
    b"Exif\0\0II*\0\x08\0\0\0\xff\xff",  # 65535 entries announced, none there
])
def test_broken_exif_blocks_give_empty_metadata(block):
    assert meta(encode("JPEG", block)) == PhotoMetadata()


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.8, 0.95])
def test_truncated_exif_block_never_raises(cut):
    block = good_raw()
    m = meta(encode("JPEG", block[: int(len(block) * cut)]))
    assert isinstance(m, PhotoMetadata)


def test_exif_ifd_pointing_outside_the_block_keeps_ifd0():
    block = bytearray(good_raw())
    at_pointer = block.index(struct.pack("<HH", EXIF_IFD, LONG))
    block[at_pointer + 8: at_pointer + 12] = struct.pack("<I", 0x7FFFFFF0)
    m = meta(encode("JPEG", bytes(block)))
    assert (m.camera_make, m.orientation, m.captured_at) == ("Canon", 6, None)


def test_fuzzed_exif_never_raises():
    rng = random.Random(1826)
    block = good_raw()
    for _ in range(300):
        mutated = bytearray(block)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(6, len(mutated))] = rng.randrange(256)
        m = meta(encode("JPEG", bytes(mutated), size=(4, 4)))
        assert m.captured_at is None or (m.captured_at.tzinfo is UTC and m.captured_at.year >= 1826)
        assert len(m.camera_make) <= 64 and len(m.camera_model) <= 64
        assert (m.latitude is None) == (m.longitude is None)
        assert m.latitude is None or (abs(m.latitude) <= 90 and abs(m.longitude or 0) <= 180)
        assert 1 <= m.orientation <= 8


# ---------------------------------------------------------------- real photographs


REAL = {  # mate-backgrounds, as cached by scripts/photosets.py
    "nature/Storm.jpg": (at(2008, 4, 20, 19, 12, 6), "Canon", "Canon EOS 400D DIGITAL"),
    "nature/Blinds.jpg": (at(2008, 1, 22, 3, 28, 22), "Canon", "Canon EOS 350D DIGITAL"),
    "nature/Wood.jpg": (at(2008, 4, 19, 13, 43, 16), "KONICA MINOLTA", "DiMAGE Z5"),  # Make is "KONICA MINOLTA "
    "abstract/Elephants_3840x2160.jpg": (at(2020, 2, 19, 16, 35, 5), "SONY", "DSC-RX100M4"),
    "nature/Aqua.jpg": (None, "", ""),  # EXIF stripped
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_photos(name):
    from scripts.photosets import PACKAGE, cache_dir

    path = cache_dir() / PACKAGE / "usr/share/backgrounds/mate" / name
    if not path.is_file():
        pytest.skip(f"{path} not cached (python scripts/photosets.py fetches it)")
    m = read_metadata(Path(path))
    assert (m.captured_at, m.camera_make, m.camera_model) == REAL[name]
    assert (m.latitude, m.longitude, m.orientation) == (None, None, 1)
