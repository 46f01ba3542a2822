"""The error every bad setting raises, wherever it is checked (the properties file, a sink, a catalog)."""


class ConfigError(ValueError):
    """A configuration value is not valid; the message names the key, the value and what is accepted."""
