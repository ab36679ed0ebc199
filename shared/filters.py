"""What a filtered search may ask for, checked once here; every backend turns a `SearchFilter` into its own
query language (SQL `WHERE`, a Milvus boolean expression, Manticore `WHERE` beside `knn()`), with every value
a bound parameter. `SearchFilter.matches` is the reference meaning: the conformance suite compares each
backend with it, and it is the only place that says what a field means.

Light on purpose (no driver, no Pillow): the API, the backends and the scripts import it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from shared.types import BadInput

if TYPE_CHECKING:
    from shared.backends.base import ImageRecord

MAX_LABEL_CHARS = 64  # a collection or tag name
MAX_LABELS = 64  # collections (or tags) on one image, and values in one filter list
MAX_PATH_CHARS = 1024
MAX_DEPTH = 1000  # offset + top_k: how deep a result list may be paged
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What `label` accepts, as a pattern for API schemas: no control characters, at least one other character.
LABEL_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$"


def label(value: str, what: str = "name") -> str:
    """A collection or tag name as stored: NFC, trimmed, 1–64 characters, no control characters.
    BadInput naming the problem otherwise (the API answers 422)."""
    if not isinstance(value, str):
        raise BadInput(f"a {what} must be a string")
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise BadInput(f"a {what} must not be empty")
    if len(text) > MAX_LABEL_CHARS:
        raise BadInput(f"a {what} is at most {MAX_LABEL_CHARS} characters, got {len(text)}")
    if _CONTROL.search(text):
        raise BadInput(f"a {what} must not contain control characters")
    return text


def labels(values: Any, what: str = "name") -> tuple[str, ...]:
    """Distinct, checked names in their first order (at most MAX_LABELS)."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    out = tuple(dict.fromkeys(label(v, what) for v in values))
    if len(out) > MAX_LABELS:
        raise BadInput(f"at most {MAX_LABELS} {what}s, got {len(out)}")
    return out


def parse_time(value: str | datetime | date | None, *, end: bool = False) -> datetime | None:
    """An aware UTC instant from ISO 8601 (`2024-06-01`, `2024-06-01T12:00`, `…+02:00`, `…Z`).
    A date alone is the start of that day, or with `end` its last microsecond (so `to=2024-06-30` includes
    the 30th). A time without an offset is UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time.max if end else time.min)
    else:
        text = str(value).strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                moment = datetime.combine(date.fromisoformat(text), time.max if end else time.min)
            else:
                moment = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise BadInput(f"{value!r} is not an ISO 8601 date or time (e.g. 2024-06-30 or 2024-06-30T18:00:00Z)") \
                from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 pushed past the calendar by its offset: the calendar's end
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


@dataclass(frozen=True)
class BoundingBox:
    """An area in degrees: south ≤ latitude ≤ north, west ≤ longitude ≤ east (no wrap past ±180°)."""

    south: float
    west: float
    north: float
    east: float

    def __post_init__(self) -> None:
        if not (-90 <= self.south <= self.north <= 90):
            raise BadInput("bbox needs -90 <= south <= north <= 90")
        if not (-180 <= self.west <= self.east <= 180):
            raise BadInput("bbox needs -180 <= west <= east <= 180 (an area across the antimeridian is two searches)")

    @classmethod
    def parse(cls, value: str | BoundingBox | None) -> BoundingBox | None:
        """From `south,west,north,east` (e.g. `40.3,-3.9,40.6,-3.5`)."""
        if isinstance(value, BoundingBox):
            return value
        if value is None or value == "":
            return None
        parts = str(value).split(",")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if len(numbers) != 4 or not all(abs(n) < 1000 for n in numbers):
            raise BadInput(f"bbox is four numbers south,west,north,east (degrees), got {value!r}")
        return cls(*numbers)

    def contains(self, latitude: float, longitude: float) -> bool:
        return self.south <= latitude <= self.north and self.west <= longitude <= self.east


@dataclass(frozen=True)
class SearchFilter:
    """Conditions on the metadata beside each vector; all of them must hold (empty fields ask nothing).

    Ranges include both ends. An image without a capture time never matches a capture-time range, one
    without GPS never matches `bbox`. `cameras` matches the camera make or model exactly (`Canon` or
    `Canon EOS 5D`). `collections` and `tags_any`: at least one of them; `tags_all`: every one.
    """

    captured_from: datetime | None = None
    captured_to: datetime | None = None
    ingested_from: datetime | None = None
    ingested_to: datetime | None = None
    formats: tuple[str, ...] = ()
    min_width: int = 0
    min_height: int = 0
    cameras: tuple[str, ...] = ()
    has_gps: bool | None = None
    bbox: BoundingBox | None = None
    collections: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    path_prefix: str = ""

    def __post_init__(self) -> None:
        for name in ("captured", "ingested"):
            low, high = getattr(self, f"{name}_from"), getattr(self, f"{name}_to")
            for bound in (low, high):
                if bound is not None and bound.tzinfo is None:
                    raise BadInput(f"{name}_from/{name}_to must carry a time zone")
            if low is not None and high is not None and low > high:
                raise BadInput(f"{name}_from is after {name}_to")
        if self.min_width < 0 or self.min_height < 0:
            raise BadInput("min_width and min_height are 0 or more")
        if len(self.path_prefix) > MAX_PATH_CHARS:
            raise BadInput(f"path_prefix is at most {MAX_PATH_CHARS} characters")
        if _CONTROL.search(self.path_prefix):
            raise BadInput("path_prefix must not contain control characters")

    @classmethod
    def build(cls, *, captured_from: Any = None, captured_to: Any = None, ingested_from: Any = None,
              ingested_to: Any = None, formats: Any = None, min_width: int | None = None,
              min_height: int | None = None, cameras: Any = None, has_gps: bool | None = None, bbox: Any = None,
              collections: Any = None, tags_all: Any = None, tags_any: Any = None,
              path_prefix: str | None = None) -> SearchFilter:
        """A filter from loosely typed input (the API's fields, a script's flags): strings parsed and checked,
        BadInput naming the field otherwise."""
        def named(field_name: str, make):
            try:
                return make()
            except BadInput as exc:
                raise BadInput(f"{field_name}: {exc}") from None

        return cls(
            captured_from=named("captured_from", lambda: parse_time(captured_from)),
            captured_to=named("captured_to", lambda: parse_time(captured_to, end=True)),
            ingested_from=named("ingested_from", lambda: parse_time(ingested_from)),
            ingested_to=named("ingested_to", lambda: parse_time(ingested_to, end=True)),
            formats=named("format", lambda: tuple(f.upper() for f in labels(formats, "format"))),
            min_width=int(min_width or 0), min_height=int(min_height or 0),
            cameras=named("camera", lambda: labels(cameras, "camera")),
            has_gps=has_gps,
            bbox=named("bbox", lambda: BoundingBox.parse(bbox)),
            collections=named("collection", lambda: labels(collections, "collection")),
            tags_all=named("tag", lambda: labels(tags_all, "tag")),
            tags_any=named("any_tag", lambda: labels(tags_any, "tag")),
            path_prefix=(path_prefix or "").lstrip("/"),
        )

    def active(self) -> dict[str, Any]:
        """The fields that ask something, by name (`has_gps=False` asks; `min_width=0` does not)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (not isinstance(value, bool) and value in ((), "", 0)):
                continue
            out[f.name] = value
        return out

    def is_empty(self) -> bool:
        return not self.active()

    def matches(self, record: ImageRecord) -> bool:
        """The reference meaning of the filter for one record."""
        captured = record.captured_at
        if self.captured_from is not None and (captured is None or captured < self.captured_from):
            return False
        if self.captured_to is not None and (captured is None or captured > self.captured_to):
            return False
        if self.ingested_from is not None and record.created_at < self.ingested_from:
            return False
        if self.ingested_to is not None and record.created_at > self.ingested_to:
            return False
        if self.formats and record.format not in self.formats:
            return False
        if record.width < self.min_width or record.height < self.min_height:
            return False
        if self.cameras and record.camera_make not in self.cameras and record.camera_model not in self.cameras:
            return False
        latitude, longitude = record.latitude, record.longitude
        if self.has_gps is not None and record.has_gps != self.has_gps:
            return False
        if self.bbox is not None and (latitude is None or longitude is None
                                      or not self.bbox.contains(latitude, longitude)):
            return False
        if self.collections and not set(self.collections) & set(record.collections):
            return False
        if self.tags_all and not set(self.tags_all) <= set(record.tags):
            return False
        if self.tags_any and not set(self.tags_any) & set(record.tags):
            return False
        return record.path.startswith(self.path_prefix)


NO_FILTER = SearchFilter()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch (naive = UTC): how Milvus and Manticore store times."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // timedelta(microseconds=1)


def from_epoch_micros(micros: int) -> datetime:
    """`epoch_micros` read back: an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=int(micros))
