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
PUBLISH_ERROR_CODE_UNKNOWN: PublishErrorCode
VALIDATION_FAILED: PublishErrorCode
SCHEMA_MISSING: PublishErrorCode
ENCODE_ERROR: PublishErrorCode
DOMAIN_MISCONFIGURATION: PublishErrorCode

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
    __slots__ = ("subject", "schema")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    subject: str
    schema: str
    def __init__(self, subject: _Optional[str] = ..., schema: _Optional[str] = ...) -> None: ...

class RegisterSchemaResponse(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...
