"""Column values on the wire, decoded: bytes to Python values and to Arrow arrays.

- :mod:`.numbers`: the canonical number each numeric-like kind travels as, and its range.
- :mod:`.values`: the two encodings (:data:`BINARY`, :data:`TEXT`), :class:`DecodeError`
  and the per-value decoders.
- :mod:`.columns`: decoders of whole binary columns with numpy, no Python work per value.
- :mod:`.rows`: :class:`RowCodec`, the decoder of a schema's row images (one, or a batch).

Serialized row images are found in the bytes by :mod:`beam_pixels.wire`; values are
encoded, as a server does, by :mod:`beam_pixels.testing.encoding`.
"""

from beam_pixels.codec.rows import DecodedImages, RowCodec
from beam_pixels.codec.values import BINARY, ENCODINGS, TEXT, DecodeError

__all__ = ["BINARY", "ENCODINGS", "TEXT", "DecodeError", "DecodedImages", "RowCodec"]
