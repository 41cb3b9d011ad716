"""The ``corral`` command: start, stop and list clusters; run a controller or an engine.

corral start -n 4 [--cluster-id ID] [--daemon] [--no-restart]   controller + engines (supervised)
corral stop [--cluster-id ID] [--clean]
corral list [--all]
corral clean [--older-than 7d] [--cluster-id ID]
corral controller [--ip IP] [--curve] [--db sqlite|memory|mongodb://...] [--restore] ...
corral engine [--file corral-engine.json | --cluster-id ID]
corral dashboard [--cluster-id ID] [--dashboard-port PORT]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from corral.cli.flags import build_parser
from corral.cli.manage import cmd_clean, cmd_list, cmd_stop
from corral.cli.processes import cmd_controller, cmd_dashboard, cmd_engine
from corral.cli.start import cmd_start

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(__doc__)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "engine":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.log_file:
        from corral.controller.store.retention import parse_size
        from corral.logfile import log_to_file

        max_bytes = parse_size(args.log_max_bytes) or 0
        log_to_file(args.log_file, args.log_level, max_bytes, args.log_backups)
    else:
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
        )
    if args.command == "controller":
        return cmd_controller(args)
    if args.command == "engine":
        return cmd_engine(args, extra)
    if args.command == "dashboard":
        return cmd_dashboard(args)
    if args.command == "start":
        return cmd_start(args)
    if args.command == "stop":
        return cmd_stop(args)
    if args.command == "clean":
        return cmd_clean(args)
    return cmd_list(args)
