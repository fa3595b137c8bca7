"""``pyowtorrent gdrive login|ls|get``: the Google Drive folder the datasets' torrents are kept in.

Settings come from the config file's ``[gdrive]`` section; the flags here
override them.  Needs the ``gdrive`` extra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, load_config

if TYPE_CHECKING:
    from ..sources.gdrive import DriveFile, DriveFolder

__all__ = ["add_arguments", "open_folder"]


def add_arguments(sub: Any, common: argparse.ArgumentParser) -> None:
    # The logging flags go on each action, not on "gdrive": argparse lets a
    # subparser's defaults overwrite what its parent parsed.
    p = sub.add_parser("gdrive", help="the Google Drive folder of torrents: sign in, list, fetch")
    actions = p.add_subparsers(dest="gdrive_action", required=True, metavar="ACTION")

    a = actions.add_parser("login", parents=[common], help="sign in to Google Drive (read-only) and keep the token")
    a.set_defaults(handler=run_login)
    a.add_argument("--client-secrets", metavar="PATH", help="the credentials.json the dataset's maintainer gave you")
    a.add_argument("--token", metavar="PATH", help="where to keep the sign-in token (JSON, mode 0600)")
    a.add_argument(
        "--console", action="store_true", help="no browser here: open the address elsewhere and paste back the result"
    )

    a = actions.add_parser("ls", parents=[common], help="list the files in the Drive folder")
    a.set_defaults(handler=run_ls)
    a.add_argument("folder", nargs="?", metavar="FOLDER_ID", help="the folder (default: gdrive.folder_id)")
    a.add_argument("-l", "--long", action="store_true", help="also show size, date modified and file id")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    _credential_flags(a)

    a = actions.add_parser("get", parents=[common], help="download one .torrent from the Drive folder")
    a.set_defaults(handler=run_get)
    a.add_argument("name", help="a file name in the folder (NAME finds NAME.torrent too), or id:FILEID")
    a.add_argument("-o", "--output", default=".", metavar="DIR", help="the directory to save it in (default: here)")
    a.add_argument("--folder", metavar="FOLDER_ID", help="the folder (default: gdrive.folder_id)")
    _credential_flags(a)


def _credential_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--client-secrets", metavar="PATH", help="the maintainer's credentials.json (for messages)")
    p.add_argument("--token", metavar="PATH", help="the sign-in token written by `gdrive login`")
    p.add_argument("--service-account-key", metavar="PATH", help="use this service-account key instead")


def _config(args: argparse.Namespace) -> Config:
    return load_config().merged(
        gdrive_client_secrets=args.client_secrets,
        gdrive_token=args.token,
        gdrive_service_account_key=getattr(args, "service_account_key", None),
    )


def open_folder(folder_id: str | None, config: Config) -> DriveFolder:
    """The folder the commands talk to (the tests replace this to talk to a mock of Drive)."""
    from ..sources.gdrive import DriveFolder  # here: every command builds this parser

    return DriveFolder.from_config(folder_id, config)


def run_login(args: argparse.Namespace) -> int:
    from ..sources.gdrive_auth import login

    config = _config(args)
    token = config.gdrive_token_path
    login(config.gdrive_client_secrets, token, console=args.console, show=print, ask=input)
    print(f"Signed in to Google Drive (read-only). The token is in {token}, readable by you only.")
    if config.gdrive_folder_id:
        print("Try: pyowtorrent gdrive ls")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    files = open_folder(args.folder, _config(args)).list_files()
    if args.json:
        print(json.dumps([_as_dict(f) for f in files], indent=2))
    elif args.long:
        for f in files:
            size = "-" if f.size is None else str(f.size)
            print(f"{size:>10}  {f.modified[:19].replace('T', ' '):19}  {f.id}  {f.name}")
    else:
        for f in files:
            print(f.name)
    return 0


def run_get(args: argparse.Namespace) -> int:
    folder = open_folder(args.folder, _config(args))
    file = folder.find(args.name)
    out = Path(args.output) / _local_name(file)
    folder.download_file(file, out)
    print(out)
    return 0


def _local_name(file: DriveFile) -> str:
    """A file name safe to create in the output directory: Drive's name, unless it could point elsewhere."""
    name = file.name
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or name.startswith("."):
        return f"{file.id}.torrent"
    return name


def _as_dict(f: DriveFile) -> dict[str, Any]:
    return {"name": f.name, "id": f.id, "size": f.size, "modified": f.modified, "mime_type": f.mime_type}
