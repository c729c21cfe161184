"""Console entry point, kept import-light.

The two commands that scripts call in tight loops and that need nothing but a random
UUID (``gen-uuid``, ``gen-filename``) are answered without importing click; everything
else goes to :func:`fspl_gateway.cli.main.main`.
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args == ["gen-uuid"] or args == ["gen-filename"]:
        import uuid

        u = str(uuid.uuid4())
        sys.stdout.write((u if args[0] == "gen-uuid" else f"fspl-{u}.fspl") + "\n")
        return
    from fspl_gateway.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
