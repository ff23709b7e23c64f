"""Request validation shared by the services: collect every field violation, then raise one InvalidArgument.

Field paths follow the proto field names (``history[3].item_id``), so a caller can find the bad value.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence

from google.protobuf.message import Message

from aisle.common.v1 import common_pb2

#: The values each enum of this build's contract defines, UNSPECIFIED (a field left unset) included: another number
#: is refused, as the caller's mistake, rather than passed on to mean nothing. A value added to an enum reaches
#: retrieval and ranking first, then the gateway, then the callers (each refuses what it does not know yet).
EVENT_TYPES = frozenset(common_pb2.EventType.values())
DEVICES = frozenset(common_pb2.Device.values())
SURFACES = frozenset(common_pb2.Surface.values())

#: Longest id (item, user, session) any service accepts.
MAX_ID_LENGTH = 256

#: Most ``RequestContext.attributes`` entries; keys are at most :data:`MAX_ID_LENGTH` characters, values at most
#: :data:`MAX_ATTRIBUTE_VALUE_LENGTH` (room for a user agent or a referring URL). Together at most about 160 KB.
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_VALUE_LENGTH = 1024

#: google.protobuf.Timestamp's valid range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z (what
#: ``ToDatetime`` and the JSON mapping accept): seconds, and nanos within the second.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_TIMESTAMP_NANOS = 999_999_999


#: Field violations reported per request; the rest are counted. Thousands of bad entries would otherwise make an
#: error trailer past gRPC's metadata limit, and the caller would get RESOURCE_EXHAUSTED naming nothing.
MAX_REPORTED_VIOLATIONS = 20
#: And at most this many bytes of them, as the ``grpc-message`` trailer carries them (percent-encoded: three bytes
#: for each byte outside printable ASCII). The same text goes again, base64-encoded, in the ``BadRequest`` details:
#: together under gRPC's 8 KiB soft limit on received metadata, whatever characters a caller's values bring into
#: field names and descriptions (32 non-ASCII attribute keys once made 17.7 KB, past even the hard limit; a review
#: built an 8.0 KB trailer with 2 KB here, so 1.5 KB leaves about 2 KB of room).
MAX_REPORTED_BYTES = 1536


def id_problem(value: str) -> str | None:
    """What is wrong with a non-empty id (item, user, session), or None."""
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}"
    if not value.isprintable():
        return "must contain printable characters only"
    return None


def label_problem(value: str, limit: int = MAX_ID_LENGTH) -> str | None:
    """What is wrong with a non-empty label (a brand, a category, an attribute value), or None. Free text, unlike
    an id: spaces of any script are allowed (a no-break space in "Dr. Martens", an ideographic space), control,
    format and line-separator characters are not."""
    if len(value) > limit:
        return f"must be at most {limit} characters, got {len(value)}"
    if not value.isprintable() and not all(c.isprintable() or unicodedata.category(c) == "Zs" for c in value):
        return "must not contain control, format or line-separator characters"
    return None


def region_problem(value: str) -> bool:
    """True when ``value`` is not a region code: at most 16 letters, digits, '-' and '_' (empty: no region)."""
    return len(value) > 16 or bool(value and not value.replace("-", "").replace("_", "").isalnum())


def _trailer_bytes(text: str) -> int:
    """Bytes ``text`` takes in a ``grpc-message`` trailer (percent-encoded outside printable ASCII, and '%')."""
    return sum(1 if 0x20 <= byte <= 0x7E and byte != 0x25 else 3 for byte in text.encode())


def timestamp_problem(value: Message) -> str | None:
    """What is wrong with a ``google.protobuf.Timestamp``, or None (an unset one is the epoch: valid)."""
    if not MIN_TIMESTAMP_SECONDS <= value.seconds <= MAX_TIMESTAMP_SECONDS:
        return (
            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z "
            f"(seconds {MIN_TIMESTAMP_SECONDS} to {MAX_TIMESTAMP_SECONDS}), got seconds {value.seconds}"
        )
    if not 0 <= value.nanos <= MAX_TIMESTAMP_NANOS:
        return f"nanos must be between 0 and {MAX_TIMESTAMP_NANOS}, got {value.nanos}"
    return None


class Violations:
    """Collects field violations for one request: the first :data:`MAX_REPORTED_VIOLATIONS` that fit in
    :data:`MAX_REPORTED_BYTES` (the first always), and a count of the rest."""

    def __init__(self) -> None:
        self._found: dict[str, str] = {}
        self._omitted = 0
        self._bytes = 0

    def add(self, field: str, description: str) -> None:
        if field in self._found:
            return
        size = _trailer_bytes(field) + _trailer_bytes(description) + 4  # "; " and ": "
        if self._found and (len(self._found) >= MAX_REPORTED_VIOLATIONS or self._bytes + size > MAX_REPORTED_BYTES):
            self._omitted += 1
            return
        self._found[field] = description
        self._bytes += size

    def __bool__(self) -> bool:
        return bool(self._found)

    def raise_if_any(self) -> None:
        if self._found:
            # Imported here: services.core.errors imports grpc, and a command line tool that checks ids with this
            # module (aisle index push-availability) must not import it before it sets gRPC's runtime.
            from services.core.errors import InvalidArgument

            raise InvalidArgument(self._found, omitted=self._omitted)

    def id(self, field: str, value: str, *, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "must not be empty")
            return
        if problem := id_problem(value):
            self.add(field, problem)

    def ids(self, field: str, values: Sequence[str], *, limit: int) -> None:
        if len(values) > limit:
            self.add(field, f"must have at most {limit} entries, got {len(values)}")
            return
        for i, value in enumerate(values):
            self.id(f"{field}[{i}]", value)

    def count(self, field: str, values: Sequence[object], *, limit: int) -> None:
        if len(values) > limit:
            self.add(field, f"must have at most {limit} entries, got {len(values)}")

    def k(self, field: str, value: int, *, limit: int) -> None:
        if value < 0 or value > limit:
            self.add(field, f"must be between 0 (server default) and {limit}, got {value}")

    def subject(self, field: str, subject: Message, *, required: bool = True) -> None:
        which = subject.WhichOneof("id")
        if which is None:
            if required:
                self.add(field, "must set user_id or session_id")
            return
        self.id(f"{field}.{which}", getattr(subject, which))

    def history(self, field: str, history: Sequence[Message], *, limit: int) -> None:
        if len(history) > limit:
            self.add(field, f"must have at most {limit} interactions, got {len(history)}")
            return
        for i, interaction in enumerate(history):
            self.id(f"{field}[{i}].item_id", interaction.item_id)
            if interaction.quantity < 0:
                self.add(f"{field}[{i}].quantity", f"must not be negative, got {interaction.quantity}")
            self.defined(f"{field}[{i}].event_type", interaction.event_type, common_pb2.EventType, EVENT_TYPES)
            self.timestamp(f"{field}[{i}].event_time", interaction.event_time)

    def timestamp(self, field: str, value: Message) -> None:
        """A ``google.protobuf.Timestamp`` within its valid range (see :func:`timestamp_problem`)."""
        if problem := timestamp_problem(value):
            self.add(field, problem)

    def enum(self, field: str, value: int, allowed: Sequence[int], names: dict[int, str]) -> None:
        if value not in allowed:
            shown = ", ".join(names[v] for v in allowed)
            self.add(field, f"must be one of {shown}, got {names.get(value, value)}")

    def defined(self, field: str, value: int, enum, values: frozenset[int]) -> None:
        """A value ``enum`` (a generated enum type, whose ``values`` are given for the quick look) defines: :meth:`enum`
        over all of them."""
        if value not in values:
            self.enum(field, value, enum.values(), dict(zip(enum.values(), enum.keys(), strict=True)))

    def region(self, field: str, value: str) -> None:
        if region_problem(value):
            self.add(field, f"must be a short region code such as GB or DE, got {ascii(value[:32])}")

    def attributes(self, field: str, attributes: Mapping[str, str]) -> None:
        """A ``RequestContext.attributes`` map: at most :data:`MAX_ATTRIBUTES` entries, each key a non-empty printable
        string of at most :data:`MAX_ID_LENGTH` characters, each value printable and at most
        :data:`MAX_ATTRIBUTE_VALUE_LENGTH` characters, a label (:func:`label_problem`). An entry is named by its key,
        cut to 32 characters and written in ASCII (``ascii``), so that callers' characters stay small in the error."""
        if len(attributes) > MAX_ATTRIBUTES:
            self.add(field, f"must have at most {MAX_ATTRIBUTES} entries, got {len(attributes)}")
            return
        for key, value in sorted(attributes.items()):
            entry = f"{field}[{ascii(key[:32])}]"
            if not key:
                self.add(entry, "key must not be empty")
            elif problem := id_problem(key):
                self.add(entry, f"key {problem}")
            elif value and (problem := label_problem(value, MAX_ATTRIBUTE_VALUE_LENGTH)):
                self.add(entry, f"value {problem}")

    def context(self, field: str, context: Message) -> None:
        """A ``RequestContext``: its region code, its request time (when set) and its attributes."""
        self.region(f"{field}.region", context.region)
        self.defined(f"{field}.device", context.device, common_pb2.Device, DEVICES)
        self.timestamp(f"{field}.request_time", context.request_time)
        self.attributes(f"{field}.attributes", context.attributes)

    def exclusions(self, field: str, exclusions: Message, *, limit: int) -> None:
        """An ``Exclusions`` message: at most ``limit`` item ids, brands and categories in all; each item id a valid
        id, each brand and category a non-empty label (:func:`label_problem`: a brand the catalog spells with a
        no-break space can be excluded)."""
        total = len(exclusions.item_ids) + len(exclusions.brands) + len(exclusions.categories)
        if total > limit:
            self.add(field, f"must have at most {limit} entries in all, got {total}")
        else:
            self.ids(f"{field}.item_ids", exclusions.item_ids, limit=limit)
            self.labels(f"{field}.brands", exclusions.brands)
            self.labels(f"{field}.categories", exclusions.categories)

    def labels(self, field: str, values: Sequence[str]) -> None:
        for i, value in enumerate(values):
            if not value:
                self.add(f"{field}[{i}]", "must not be empty")
            elif problem := label_problem(value):
                self.add(f"{field}[{i}]", problem)
