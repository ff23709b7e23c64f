from aisle.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("subject", "surface", "context", "history", "candidate_item_ids", "model_name", "model_version", "columnar")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SURFACE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLUMNAR_FIELD_NUMBER: _ClassVar[int]
    subject: _common_pb2.Subject
    surface: _common_pb2.Surface
    context: _common_pb2.RequestContext
    history: _containers.RepeatedCompositeFieldContainer[_common_pb2.Interaction]
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    model_name: str
    model_version: str
    columnar: bool
    def __init__(self, subject: _Optional[_Union[_common_pb2.Subject, _Mapping]] = ..., surface: _Optional[_Union[_common_pb2.Surface, str]] = ..., context: _Optional[_Union[_common_pb2.RequestContext, _Mapping]] = ..., history: _Optional[_Iterable[_Union[_common_pb2.Interaction, _Mapping]]] = ..., candidate_item_ids: _Optional[_Iterable[str]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., columnar: _Optional[bool] = ...) -> None: ...

class ScoredItem(_message.Message):
    __slots__ = ("item_id", "purchase_probability", "return_probability")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    purchase_probability: float
    return_probability: float
    def __init__(self, item_id: _Optional[str] = ..., purchase_probability: _Optional[float] = ..., return_probability: _Optional[float] = ...) -> None: ...

class ScoreColumns(_message.Message):
    __slots__ = ("purchase_probabilities", "return_probabilities")
    PURCHASE_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    RETURN_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    purchase_probabilities: _containers.RepeatedScalarFieldContainer[float]
    return_probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, purchase_probabilities: _Optional[_Iterable[float]] = ..., return_probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("scored_items", "model_version", "degradations", "columns")
    SCORED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEGRADATIONS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    scored_items: _containers.RepeatedCompositeFieldContainer[ScoredItem]
    model_version: _common_pb2.ArtifactVersion
    degradations: _containers.RepeatedCompositeFieldContainer[_common_pb2.Degradation]
    columns: ScoreColumns
    def __init__(self, scored_items: _Optional[_Iterable[_Union[ScoredItem, _Mapping]]] = ..., model_version: _Optional[_Union[_common_pb2.ArtifactVersion, _Mapping]] = ..., degradations: _Optional[_Iterable[_Union[_common_pb2.Degradation, _Mapping]]] = ..., columns: _Optional[_Union[ScoreColumns, _Mapping]] = ...) -> None: ...
