"""``freshet serve``: run one replica with uvicorn, or print its OpenAPI document.

Every flag has an environment variable ``FRESHET_<FLAG>`` (``--snapshot-dir`` is ``FRESHET_SNAPSHOT_DIR``);
a flag wins over its variable, which wins over the default. Several replicas on one machine::

    freshet serve --port 8001 --snapshot-dir .freshet/r1
    freshet serve --port 8002 --snapshot-dir .freshet/r2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pydantic import ValidationError

from serving.settings import Settings, env_var

HELP = "run a serving replica (FastAPI + uvicorn) that consumes the delta topic"

#: The same short names the other commands use (``freshet job run --bootstrap --defs --models``).
SHORT_FLAGS = {
    "bootstrap_servers": ("--bootstrap",),
    "feature_defs": ("--defs",),
    "snapshot_dir": ("--snapshots",),
    "model_dir": ("--models",),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``freshet serve``: one per ``Settings`` field, defaults shown from the model."""
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        default = field.default if name != "admin_token" else "unset: admin disabled"
        parser.add_argument(
            flag,
            *SHORT_FLAGS.get(name, ()),
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{field.description} [{env_var(name)}; default: {default}]",
        )
    parser.add_argument(
        "--print-openapi",
        action="store_true",
        help="print the OpenAPI document as JSON and exit; starts nothing",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings.load({name: getattr(args, name, None) for name in Settings.model_fields})


def main(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(x) for x in error["loc"])
            print(f"freshet serve: --{where.replace('_', '-')}: {error['msg']}", file=sys.stderr)
        return 2
    if getattr(args, "print_openapi", False):
        print_openapi(settings)
        return 0
    return run(settings)


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI document; the API does not depend on the layout, so no feature definitions are read."""
    from freshet.layout import TensorLayout
    from serving.app import create_app
    from serving.replica import Replica

    replica = Replica(TensorLayout(embedding_dim=1), settings, name="openapi")
    return create_app(replica, settings).openapi()


def print_openapi(settings: Settings, file: Any = None) -> None:
    json.dump(openapi_document(settings), file or sys.stdout, indent=2)
    print(file=file or sys.stdout)


def run(settings: Settings) -> int:
    """Serve until interrupted: build the replica from ``settings.feature_defs`` and run uvicorn."""
    import uvicorn

    from freshet.errors import FreshetError
    from serving.app import create_app
    from serving.replica import Replica

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        replica = Replica.from_settings(settings)
    except (FreshetError, OSError) as exc:
        print(f"freshet serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(replica, settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )
    return 0


def configure_logging(level_name: str) -> None:
    """The replica's own loggers at ``level_name``; kafka-python's connection chatter at WARNING or above."""
    level = logging.getLevelName(level_name.upper())
    if not isinstance(level, int):
        level = logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(max(level, logging.WARNING))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=HELP)
    add_arguments(parser)
    return parser


def entry(argv: list[str] | None = None) -> int:
    return main(build_parser().parse_args(argv))


__all__ = ["HELP", "add_arguments", "main", "openapi_document", "print_openapi", "run", "settings_from_args"]
