from chippb import cloudevent_pb2 as _cloudevent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PUBLISH_ERROR_CODE_UNKNOWN: _ClassVar[PublishErrorCode]
    VALIDATION_FAILED: _ClassVar[PublishErrorCode]
    SCHEMA_MISSING: _ClassVar[PublishErrorCode]
    ENCODE_ERROR: _ClassVar[PublishErrorCode]
    DOMAIN_MISCONFIGURATION: _ClassVar[PublishErrorCode]

class SchemaType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOBUF: _ClassVar[SchemaType]
    AVRO: _ClassVar[SchemaType]
    JSON: _ClassVar[SchemaType]

class PathType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    S3: _ClassVar[PathType]
    LOCAL: _ClassVar[PathType]
    GITHUB: _ClassVar[PathType]
    OTHER: _ClassVar[PathType]
PUBLISH_ERROR_CODE_UNKNOWN: PublishErrorCode
VALIDATION_FAILED: PublishErrorCode
SCHEMA_MISSING: PublishErrorCode
ENCODE_ERROR: PublishErrorCode
DOMAIN_MISCONFIGURATION: PublishErrorCode
PROTOBUF: SchemaType
AVRO: SchemaType
JSON: SchemaType
S3: PathType
LOCAL: PathType
GITHUB: PathType
OTHER: PathType

class CloudEventBatch(_message.Message):
    __slots__ = ("events", "options")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[_cloudevent_pb2.CloudEvent]
    options: PublishOptions
    def __init__(self, events: _Optional[_Iterable[_Union[_cloudevent_pb2.CloudEvent, _Mapping]]] = ..., options: _Optional[_Union[PublishOptions, _Mapping]] = ...) -> None: ...

class PublishOptions(_message.Message):
    __slots__ = ("transaction_enabled",)
    TRANSACTION_ENABLED_FIELD_NUMBER: _ClassVar[int]
    transaction_enabled: bool
    def __init__(self, transaction_enabled: _Optional[bool] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[PublishResult]
    def __init__(self, results: _Optional[_Iterable[_Union[PublishResult, _Mapping]]] = ...) -> None: ...

class PublishResult(_message.Message):
    __slots__ = ("event_id", "error")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    error: PublishError
    def __init__(self, event_id: _Optional[str] = ..., error: _Optional[_Union[PublishError, _Mapping]] = ...) -> None: ...

class PublishError(_message.Message):
    __slots__ = ("error_code", "reason")
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    error_code: PublishErrorCode
    reason: str
    def __init__(self, error_code: _Optional[_Union[PublishErrorCode, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class EmptyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PingResponse(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class StreamEventsRequest(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: _cloudevent_pb2.CloudEvent
    def __init__(self, event: _Optional[_Union[_cloudevent_pb2.CloudEvent, _Mapping]] = ...) -> None: ...

class StreamEventsResponse(_message.Message):
    __slots__ = ("eventId", "status")
    EVENTID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    eventId: str
    status: str
    def __init__(self, eventId: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class RegisterSchemaRequest(_message.Message):
    __slots__ = ("schemas",)
    SCHEMAS_FIELD_NUMBER: _ClassVar[int]
    schemas: _containers.RepeatedCompositeFieldContainer[Schema]
    def __init__(self, schemas: _Optional[_Iterable[_Union[Schema, _Mapping]]] = ...) -> None: ...

class RegisterSchemaResponse(_message.Message):
    __slots__ = ("registered",)
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    registered: _containers.RepeatedCompositeFieldContainer[RegisteredSchema]
    def __init__(self, registered: _Optional[_Iterable[_Union[RegisteredSchema, _Mapping]]] = ...) -> None: ...

class Schema(_message.Message):
    __slots__ = ("subject", "path", "format", "schema", "references", "metadata")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    subject: str
    path: Path
    format: SchemaType
    schema: str
    references: _containers.RepeatedCompositeFieldContainer[SchemaReference]
    metadata: MetaData
    def __init__(self, subject: _Optional[str] = ..., path: _Optional[_Union[Path, _Mapping]] = ..., format: _Optional[_Union[SchemaType, str]] = ..., schema: _Optional[str] = ..., references: _Optional[_Iterable[_Union[SchemaReference, _Mapping]]] = ..., metadata: _Optional[_Union[MetaData, _Mapping]] = ...) -> None: ...

class SchemaReference(_message.Message):
    __slots__ = ("name", "subject", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    subject: str
    version: int
    def __init__(self, name: _Optional[str] = ..., subject: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class MetaData(_message.Message):
    __slots__ = ("stores",)
    class StoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Store
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Store, _Mapping]] = ...) -> None: ...
    STORES_FIELD_NUMBER: _ClassVar[int]
    stores: _containers.MessageMap[str, Store]
    def __init__(self, stores: _Optional[_Mapping[str, Store]] = ...) -> None: ...

class Store(_message.Message):
    __slots__ = ("index", "partition")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    index: _containers.RepeatedScalarFieldContainer[str]
    partition: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[_Iterable[str]] = ..., partition: _Optional[_Iterable[str]] = ...) -> None: ...

class Path(_message.Message):
    __slots__ = ("path", "type")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    path: str
    type: PathType
    def __init__(self, path: _Optional[str] = ..., type: _Optional[_Union[PathType, str]] = ...) -> None: ...

class RegisteredSchema(_message.Message):
    __slots__ = ("subject", "version")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    subject: str
    version: int
    def __init__(self, subject: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...
