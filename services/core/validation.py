"""Request validation shared by the services: collect every field violation, then raise one InvalidArgument.

Field paths follow the proto field names (``history[3].item_id``), so a caller can find the bad value.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import Message

#: Longest id (item, user, session) any service accepts.
MAX_ID_LENGTH = 256


#: Field violations reported per request; the rest are counted. Thousands of bad entries would otherwise make an
#: error trailer past gRPC's metadata limit, and the caller would get RESOURCE_EXHAUSTED naming nothing.
MAX_REPORTED_VIOLATIONS = 20


def id_problem(value: str) -> str | None:
    """What is wrong with a non-empty id (item, user, session), or None."""
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}"
    if not value.isprintable():
        return "must contain printable characters only"
    return None


class Violations:
    """Collects field violations for one request (the first :data:`MAX_REPORTED_VIOLATIONS`, and a count)."""

    def __init__(self) -> None:
        self._found: dict[str, str] = {}
        self._omitted = 0

    def add(self, field: str, description: str) -> None:
        if field in self._found:
            return
        if len(self._found) >= MAX_REPORTED_VIOLATIONS:
            self._omitted += 1
            return
        self._found[field] = description

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

    def enum(self, field: str, value: int, allowed: Sequence[int], names: dict[int, str]) -> None:
        if value not in allowed:
            shown = ", ".join(names[v] for v in allowed)
            self.add(field, f"must be one of {shown}, got {names.get(value, value)}")

    def region(self, field: str, value: str) -> None:
        if len(value) > 16 or (value and not value.replace("-", "").replace("_", "").isalnum()):
            self.add(field, f"must be a short region code such as GB or DE, got {value[:32]!r}")

    def exclusions(self, field: str, exclusions: Message, *, limit: int) -> None:
        """An ``Exclusions`` message: at most ``limit`` item ids, brands and categories in all, its item ids valid."""
        total = len(exclusions.item_ids) + len(exclusions.brands) + len(exclusions.categories)
        if total > limit:
            self.add(field, f"must have at most {limit} entries in all, got {total}")
        else:
            self.ids(f"{field}.item_ids", exclusions.item_ids, limit=limit)
