import datetime

from aisle.common.v1 import common_pb2 as _common_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecommendRequest(_message.Message):
    __slots__ = ("subject", "surface", "context", "consent", "history", "anchor_item_ids", "k", "exclusions", "experiment_variant_override")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIONS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_VARIANT_OVERRIDE_FIELD_NUMBER: _ClassVar[int]
    subject: _common_pb2.Subject
    surface: _common_pb2.Surface
    context: _common_pb2.RequestContext
    consent: bool
    history: _containers.RepeatedCompositeFieldContainer[_common_pb2.Interaction]
    anchor_item_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    exclusions: _common_pb2.Exclusions
    experiment_variant_override: str
    def __init__(self, subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., surface: _Optional[_Union[_common_pb2.Surface, str]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., consent: _Optional[bool] = ..., history: _Optional[_Iterable[_Union[_common_pb2.Interaction, _Mapping]]] = ..., anchor_item_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., exclusions: _Optional[_Union[_common_pb2.Exclusions, _Mapping]] = ..., experiment_variant_override: _Optional[str] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "sources", "reasons", "purchase_probability", "position")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    sources: _containers.RepeatedScalarFieldContainer[_common_pb2.CandidateSource]
    reasons: _containers.RepeatedCompositeFieldContainer[_common_pb2.Reason]
    purchase_probability: float
    position: int
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., sources: _Optional[_Iterable[_Union[_common_pb2.CandidateSource, str]]] = ..., reasons: _Optional[_Iterable[_Union[_common_pb2.Reason, _Mapping]]] = ..., purchase_probability: _Optional[float] = ..., position: _Optional[int] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "versions", "tracking_token", "degradations", "experiment_variant", "stage_latencies", "trace_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TRACKING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    DEGRADATIONS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_VARIANT_FIELD_NUMBER: _ClassVar[int]
    STAGE_LATENCIES_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    versions: _containers.RepeatedCompositeFieldContainer[_common_pb2.ArtifactVersion]
    tracking_token: str
    degradations: _containers.RepeatedCompositeFieldContainer[_common_pb2.Degradation]
    experiment_variant: str
    stage_latencies: _containers.RepeatedCompositeFieldContainer[_common_pb2.StageLatency]
    trace_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., versions: _Optional[_Iterable[_Union[_common_pb2.ArtifactVersion, _Mapping]]] = ..., tracking_token: _Optional[str] = ..., degradations: _Optional[_Iterable[_Union[_common_pb2.Degradation, _Mapping]]] = ..., experiment_variant: _Optional[str] = ..., stage_latencies: _Optional[_Iterable[_Union[_common_pb2.StageLatency, _Mapping]]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class TrackedEvent(_message.Message):
    __slots__ = ("subject", "event_type", "item_id", "event_time", "quantity", "unit_price", "tracking_token", "context", "consent")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_FIELD_NUMBER: _ClassVar[int]
    TRACKING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    subject: _common_pb2.Subject
    event_type: _common_pb2.EventType
    item_id: str
    event_time: _timestamp_pb2.Timestamp
    quantity: int
    unit_price: float
    tracking_token: str
    context: _common_pb2.RequestContext
    consent: bool
    def __init__(self, subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., event_type: _Optional[_Union[_common_pb2.EventType, str]] = ..., item_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quantity: _Optional[int] = ..., unit_price: _Optional[float] = ..., tracking_token: _Optional[str] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., consent: _Optional[bool] = ...) -> None: ...

class TrackEventsRequest(_message.Message):
    __slots__ = ("events", "batch_id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TrackedEvent]
    batch_id: str
    def __init__(self, events: _Optional[_Iterable[_Union[TrackedEvent, _Mapping]]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class TrackEventsResponse(_message.Message):
    __slots__ = ("accepted_count", "rejected_count")
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    accepted_count: int
    rejected_count: int
    def __init__(self, accepted_count: _Optional[int] = ..., rejected_count: _Optional[int] = ...) -> None: ...

class ForgetSubjectRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: _common_pb2.Subject
    def __init__(self, subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ...) -> None: ...

class ForgetSubjectResponse(_message.Message):
    __slots__ = ("session_deleted",)
    SESSION_DELETED_FIELD_NUMBER: _ClassVar[int]
    session_deleted: bool
    def __init__(self, session_deleted: _Optional[bool] = ...) -> None: ...
