"""``python -m pyowtorrent.verify TORRENT PAYLOAD``: the verifier's command (see :mod:`pyowtorrent.cli.verify`)."""

from __future__ import annotations

if __name__ == "__main__":
    from .cli.verify import exit_with_main

    exit_with_main()
