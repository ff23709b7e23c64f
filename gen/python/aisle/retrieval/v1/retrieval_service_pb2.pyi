from aisle.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RetrieveRequest(_message.Message):
    __slots__ = ("subject", "surface", "context", "history", "anchor_item_ids", "k", "sources", "exclusions", "exclude_history", "consent", "exclude_purchased", "include_out_of_stock", "history_query_vector", "anchor_vectors", "source_limits", "columnar")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    EXCLUSIONS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_HISTORY_FIELD_NUMBER: _ClassVar[int]
    CONSENT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_PURCHASED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_OUT_OF_STOCK_FIELD_NUMBER: _ClassVar[int]
    HISTORY_QUERY_VECTOR_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_VECTORS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    COLUMNAR_FIELD_NUMBER: _ClassVar[int]
    subject: _common_pb2.Subject
    surface: _common_pb2.Surface
    context: _common_pb2.RequestContext
    history: _containers.RepeatedCompositeFieldContainer[_common_pb2.Interaction]
    anchor_item_ids: _containers.RepeatedScalarFieldContainer[str]
    k: int
    sources: _containers.RepeatedScalarFieldContainer[_common_pb2.CandidateSource]
    exclusions: _common_pb2.Exclusions
    exclude_history: bool
    consent: bool
    exclude_purchased: bool
    include_out_of_stock: bool
    history_query_vector: _containers.RepeatedScalarFieldContainer[float]
    anchor_vectors: _containers.RepeatedCompositeFieldContainer[AnchorVector]
    source_limits: _containers.RepeatedCompositeFieldContainer[SourceLimit]
    columnar: bool
    def __init__(self, subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., surface: _Optional[_Union[_common_pb2.Surface, str]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., history: _Optional[_Iterable[_Union[_common_pb2.Interaction, _Mapping]]] = ..., anchor_item_ids: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., sources: _Optional[_Iterable[_Union[_common_pb2.CandidateSource, str]]] = ..., exclusions: _Optional[_Union[_common_pb2.Exclusions, _Mapping]] = ..., exclude_history: _Optional[bool] = ..., consent: _Optional[bool] = ..., exclude_purchased: _Optional[bool] = ..., include_out_of_stock: _Optional[bool] = ..., history_query_vector: _Optional[_Iterable[float]] = ..., anchor_vectors: _Optional[_Iterable[_Union[AnchorVector, _Mapping]]] = ..., source_limits: _Optional[_Iterable[_Union[SourceLimit, _Mapping]]] = ..., columnar: _Optional[bool] = ...) -> None: ...

class SourceLimit(_message.Message):
    __slots__ = ("source", "k")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    source: _common_pb2.CandidateSource
    k: int
    def __init__(self, source: _Optional[_Union[_common_pb2.CandidateSource, str]] = ..., k: _Optional[int] = ...) -> None: ...

class AnchorVector(_message.Message):
    __slots__ = ("item_id", "vector")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, item_id: _Optional[str] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "score", "source", "source_rank", "anchor_item_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RANK_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    source: _common_pb2.CandidateSource
    source_rank: int
    anchor_item_id: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., source: _Optional[_Union[_common_pb2.CandidateSource, str]] = ..., source_rank: _Optional[int] = ..., anchor_item_id: _Optional[str] = ...) -> None: ...

class CandidateColumns(_message.Message):
    __slots__ = ("item_ids", "scores", "sources", "source_ranks", "anchor_item_ids")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_RANKS_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    sources: _containers.RepeatedScalarFieldContainer[_common_pb2.CandidateSource]
    source_ranks: _containers.RepeatedScalarFieldContainer[int]
    anchor_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., sources: _Optional[_Iterable[_Union[_common_pb2.CandidateSource, str]]] = ..., source_ranks: _Optional[_Iterable[int]] = ..., anchor_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("candidates", "index_version", "degradations", "columns", "popularity_region")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADATIONS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_REGION_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    index_version: _common_pb2.ArtifactVersion
    degradations: _containers.RepeatedCompositeFieldContainer[_common_pb2.Degradation]
    columns: CandidateColumns
    popularity_region: str
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., index_version: _Optional[_Union[_common_pb2.ArtifactVersion, _Mapping]] = ..., degradations: _Optional[_Iterable[_Union[_common_pb2.Degradation, _Mapping]]] = ..., columns: _Optional[_Union[CandidateColumns, _Mapping]] = ..., popularity_region: _Optional[str] = ...) -> None: ...

class AvailabilityUpdate(_message.Message):
    __slots__ = ("item_id", "stock", "sold_in_regions", "set_regions")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    STOCK_FIELD_NUMBER: _ClassVar[int]
    SOLD_IN_REGIONS_FIELD_NUMBER: _ClassVar[int]
    SET_REGIONS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    stock: int
    sold_in_regions: _containers.RepeatedScalarFieldContainer[str]
    set_regions: bool
    def __init__(self, item_id: _Optional[str] = ..., stock: _Optional[int] = ..., sold_in_regions: _Optional[_Iterable[str]] = ..., set_regions: _Optional[bool] = ...) -> None: ...

class UpdateAvailabilityRequest(_message.Message):
    __slots__ = ("updates",)
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[AvailabilityUpdate]
    def __init__(self, updates: _Optional[_Iterable[_Union[AvailabilityUpdate, _Mapping]]] = ...) -> None: ...

class UpdateAvailabilityResponse(_message.Message):
    __slots__ = ("applied_count", "unknown_item_ids")
    APPLIED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    applied_count: int
    unknown_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, applied_count: _Optional[int] = ..., unknown_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...
