from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PollResponseRecords(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, records: _Optional[_Iterable[bytes]] = ...) -> None: ...

class LazyPollResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[LazyRowRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[LazyRowRecord, _Mapping]]] = ...) -> None: ...

class LazyRowRecord(_message.Message):
    __slots__ = ("before", "after", "source", "transaction", "op")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    before: bytes
    after: bytes
    source: bytes
    transaction: bytes
    op: int
    def __init__(self, before: _Optional[bytes] = ..., after: _Optional[bytes] = ..., source: _Optional[bytes] = ..., transaction: _Optional[bytes] = ..., op: _Optional[int] = ...) -> None: ...
