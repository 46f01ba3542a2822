"""Configuration: the ``pixels-client.properties`` keys and the validated :class:`PixelsConfig`.

Every key is declared once, in :data:`KEYS`, with its default, what it accepts and
what it means. Parsing, validation, the unknown-key check and the reference
documentation (:func:`describe`) all read that table. Keys under
``iceberg.catalog.`` and ``paimon.catalog.`` also pass through to the catalogs
with that prefix removed (see :meth:`PixelsConfig.catalog_properties`).

- :mod:`.properties`: reading a properties file and ``--set`` overrides.
- :mod:`.validators`: the value parsers, one per kind of value.
- :mod:`.keys`: the key table and the reference made from it.
- :mod:`.settings`: :class:`PixelsConfig`, built and cross-checked from properties.
"""

from beam_pixels.config.keys import KEYS, SINK_TYPES, Key, describe
from beam_pixels.config.properties import load_properties, parse_override
from beam_pixels.config.settings import PixelsConfig
from beam_pixels.config.validators import LOCATION_OFF
from beam_pixels.errors import ConfigError

__all__ = [
    "KEYS", "LOCATION_OFF", "SINK_TYPES", "ConfigError", "Key", "PixelsConfig", "describe", "load_properties",
    "parse_override",
]
