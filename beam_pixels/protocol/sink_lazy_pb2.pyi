from beam_pixels.protocol import sink_pb2 as _sink_pb2
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

class PollResponseImagesUnparsed(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RowRecordImagesUnparsed]
    def __init__(self, records: _Optional[_Iterable[_Union[RowRecordImagesUnparsed, _Mapping]]] = ...) -> None: ...

class RowRecordImagesUnparsed(_message.Message):
    __slots__ = ("before", "after", "source", "transaction", "op")
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    before: bytes
    after: bytes
    source: _sink_pb2.SourceInfo
    transaction: _sink_pb2.TransactionInfo
    op: _sink_pb2.OperationType
    def __init__(self, before: _Optional[bytes] = ..., after: _Optional[bytes] = ..., source: _Optional[_Union[_sink_pb2.SourceInfo, _Mapping]] = ..., transaction: _Optional[_Union[_sink_pb2.TransactionInfo, _Mapping]] = ..., op: _Optional[_Union[_sink_pb2.OperationType, str]] = ...) -> None: ...
