"""``fspl-gw watch``: the long-running gateway, one module per service."""
