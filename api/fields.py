"""Request field types the routes share, with JSON schemas that say exactly what is accepted (the contract
test holds the API to them): collection and tag names, ISO 8601 times, numbers that are not booleans."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema

from api.errors import not_a_bool
from shared.filters import LABEL_PATTERN, MAX_LABEL_CHARS, MAX_LABELS, parse_time

Name = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS, pattern=LABEL_PATTERN)]
Names = Annotated[list[Name], Field(max_length=MAX_LABELS)]
JsonFloat = Annotated[float, BeforeValidator(not_a_bool)]


def _iso_time(value: str | None) -> str | None:
    if value is not None:
        if not value.strip():
            raise ValueError("an empty time: leave the field out instead")
        parse_time(value)  # BadInput, a ValueError: a 422 naming the field
    return value


IsoTime = Annotated[
    str | None, AfterValidator(_iso_time),
    WithJsonSchema({"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"},
                              {"type": "null"}]}),
]
