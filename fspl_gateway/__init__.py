"""fspl-gateway: a Filespooler-compatible engine and the gateway around it."""

__version__ = "0.1.0"
#: The version of Filespooler whose behaviour and wire format we match.
FSPL_COMPAT_VERSION = "1.2.2"
