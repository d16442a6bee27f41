"""The words of a change event, defined once (the enums of proto-schemas/ampgate/events/v1):
the entities, the kind of change, and how a change was detected."""

from __future__ import annotations

from enum import StrEnum

PASSPORT = "passport"
PRICE = "price"
ENTITIES = (PASSPORT, PRICE)  # also the `entity` metric label values

# The proto3 zero values: what a reader assumes when an event leaves the field out.
CHANGE_KIND_UNSPECIFIED = "CHANGE_KIND_UNSPECIFIED"
DETECTION_UNSPECIFIED = "DETECTION_UNSPECIFIED"


class ChangeKind(StrEnum):
    SNAPSHOT = "CHANGE_KIND_SNAPSHOT"
    CREATED = "CHANGE_KIND_CREATED"
    UPDATED = "CHANGE_KIND_UPDATED"
    DELETED = "CHANGE_KIND_DELETED"


class Detection(StrEnum):
    WRITE = "DETECTION_WRITE"
    READ = "DETECTION_READ"
    POLL = "DETECTION_POLL"

    @property
    def label(self) -> str:
        """The metric label: write, read, poll."""
        return self.value.removeprefix("DETECTION_").lower()


DETECTIONS = tuple(d.label for d in Detection)  # the `detected_by` metric label values
