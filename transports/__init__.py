"""Transports: the only code that talks to a remote.

Installed as ``fspl_gateway.transports``.  Each module implements
:class:`fspl_gateway.transports.base.Transport` and registers under a name through the
entry-point group ``fspl_gateway.transports``.  Importing this package imports no SDK.
"""
