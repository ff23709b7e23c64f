import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Surface(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SURFACE_UNSPECIFIED: _ClassVar[Surface]
    SURFACE_HOME: _ClassVar[Surface]
    SURFACE_PRODUCT_PAGE: _ClassVar[Surface]
    SURFACE_CART: _ClassVar[Surface]
    SURFACE_EMAIL: _ClassVar[Surface]

class Device(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEVICE_UNSPECIFIED: _ClassVar[Device]
    DEVICE_DESKTOP: _ClassVar[Device]
    DEVICE_MOBILE: _ClassVar[Device]
    DEVICE_TABLET: _ClassVar[Device]
    DEVICE_APP: _ClassVar[Device]

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_ADD_TO_CART: _ClassVar[EventType]
    EVENT_TYPE_PURCHASE: _ClassVar[EventType]
    EVENT_TYPE_RETURN: _ClassVar[EventType]
    EVENT_TYPE_SEARCH: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]

class CandidateSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANDIDATE_SOURCE_UNSPECIFIED: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_TWO_TOWER: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_ITEM_TO_ITEM: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_POPULARITY: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_TRENDING: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_COLD_START: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_EXPLORATION: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_FALLBACK_CACHE: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_CO_VISITATION: _ClassVar[CandidateSource]
    CANDIDATE_SOURCE_BUY_AGAIN: _ClassVar[CandidateSource]

class ReasonCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_CODE_UNSPECIFIED: _ClassVar[ReasonCode]
    REASON_CODE_SIMILAR_TO_HISTORY: _ClassVar[ReasonCode]
    REASON_CODE_BOUGHT_TOGETHER: _ClassVar[ReasonCode]
    REASON_CODE_POPULAR_IN_REGION: _ClassVar[ReasonCode]
    REASON_CODE_TRENDING: _ClassVar[ReasonCode]
    REASON_CODE_NEW_ARRIVAL: _ClassVar[ReasonCode]
    REASON_CODE_BUY_AGAIN: _ClassVar[ReasonCode]
    REASON_CODE_EXPLORATION: _ClassVar[ReasonCode]
    REASON_CODE_PERSONALIZED: _ClassVar[ReasonCode]

class DegradationReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEGRADATION_REASON_UNSPECIFIED: _ClassVar[DegradationReason]
    DEGRADATION_REASON_SOURCE_DROPPED: _ClassVar[DegradationReason]
    DEGRADATION_REASON_RANKING_UNAVAILABLE: _ClassVar[DegradationReason]
    DEGRADATION_REASON_RANKING_TIMEOUT: _ClassVar[DegradationReason]
    DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE: _ClassVar[DegradationReason]
    DEGRADATION_REASON_RANKING_FALLBACK_BACKEND: _ClassVar[DegradationReason]
    DEGRADATION_REASON_SHORT_ANSWER: _ClassVar[DegradationReason]
    DEGRADATION_REASON_MIXED_INDEX_VERSIONS: _ClassVar[DegradationReason]
    DEGRADATION_REASON_UNKNOWN_CANDIDATES: _ClassVar[DegradationReason]
SURFACE_UNSPECIFIED: Surface
SURFACE_HOME: Surface
SURFACE_PRODUCT_PAGE: Surface
SURFACE_CART: Surface
SURFACE_EMAIL: Surface
DEVICE_UNSPECIFIED: Device
DEVICE_DESKTOP: Device
DEVICE_MOBILE: Device
DEVICE_TABLET: Device
DEVICE_APP: Device
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_ADD_TO_CART: EventType
EVENT_TYPE_PURCHASE: EventType
EVENT_TYPE_RETURN: EventType
EVENT_TYPE_SEARCH: EventType
EVENT_TYPE_CLICK: EventType
CANDIDATE_SOURCE_UNSPECIFIED: CandidateSource
CANDIDATE_SOURCE_TWO_TOWER: CandidateSource
CANDIDATE_SOURCE_ITEM_TO_ITEM: CandidateSource
CANDIDATE_SOURCE_POPULARITY: CandidateSource
CANDIDATE_SOURCE_TRENDING: CandidateSource
CANDIDATE_SOURCE_COLD_START: CandidateSource
CANDIDATE_SOURCE_EXPLORATION: CandidateSource
CANDIDATE_SOURCE_FALLBACK_CACHE: CandidateSource
CANDIDATE_SOURCE_CO_VISITATION: CandidateSource
CANDIDATE_SOURCE_BUY_AGAIN: CandidateSource
REASON_CODE_UNSPECIFIED: ReasonCode
REASON_CODE_SIMILAR_TO_HISTORY: ReasonCode
REASON_CODE_BOUGHT_TOGETHER: ReasonCode
REASON_CODE_POPULAR_IN_REGION: ReasonCode
REASON_CODE_TRENDING: ReasonCode
REASON_CODE_NEW_ARRIVAL: ReasonCode
REASON_CODE_BUY_AGAIN: ReasonCode
REASON_CODE_EXPLORATION: ReasonCode
REASON_CODE_PERSONALIZED: ReasonCode
DEGRADATION_REASON_UNSPECIFIED: DegradationReason
DEGRADATION_REASON_SOURCE_DROPPED: DegradationReason
DEGRADATION_REASON_RANKING_UNAVAILABLE: DegradationReason
DEGRADATION_REASON_RANKING_TIMEOUT: DegradationReason
DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE: DegradationReason
DEGRADATION_REASON_RANKING_FALLBACK_BACKEND: DegradationReason
DEGRADATION_REASON_SHORT_ANSWER: DegradationReason
DEGRADATION_REASON_MIXED_INDEX_VERSIONS: DegradationReason
DEGRADATION_REASON_UNKNOWN_CANDIDATES: DegradationReason

class Subject(_message.Message):
    __slots__ = ("user_id", "session_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    session_id: str
    def __init__(self, user_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...

class RequestContext(_message.Message):
    __slots__ = ("region", "device", "request_time", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REGION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    region: str
    device: Device
    request_time: _timestamp_pb2.Timestamp
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, region: _Optional[str] = ..., device: _Optional[_Union[Device, str]] = ..., request_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("item_id", "event_type", "event_time", "quantity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    event_type: EventType
    event_time: _timestamp_pb2.Timestamp
    quantity: int
    def __init__(self, item_id: _Optional[str] = ..., event_type: _Optional[_Union[EventType, str]] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quantity: _Optional[int] = ...) -> None: ...

class Exclusions(_message.Message):
    __slots__ = ("item_ids", "brands", "categories")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    BRANDS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    brands: _containers.RepeatedScalarFieldContainer[str]
    categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., brands: _Optional[_Iterable[str]] = ..., categories: _Optional[_Iterable[str]] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("code", "text", "related_item_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    RELATED_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    code: ReasonCode
    text: str
    related_item_id: str
    def __init__(self, code: _Optional[_Union[ReasonCode, str]] = ..., text: _Optional[str] = ..., related_item_id: _Optional[str] = ...) -> None: ...

class ArtifactVersion(_message.Message):
    __slots__ = ("kind", "name", "version")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    name: str
    version: str
    def __init__(self, kind: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Degradation(_message.Message):
    __slots__ = ("reason", "stage", "detail")
    REASON_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    reason: DegradationReason
    stage: str
    detail: str
    def __init__(self, reason: _Optional[_Union[DegradationReason, str]] = ..., stage: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class StageLatency(_message.Message):
    __slots__ = ("stage", "duration_ms")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    stage: str
    duration_ms: float
    def __init__(self, stage: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...
