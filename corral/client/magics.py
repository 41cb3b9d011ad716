"""IPython magics for a view: ``%px``, ``%%px``, ``%autopx``, ``%pxresult``, ``%pxconfig``.

``%load_ext corral`` registers them; ``view.activate(suffix)`` (or ``rc.activate()``) chooses
the view they use (``suffix`` gives a second view its own ``%px<suffix>`` ... set). They behave
as ipyparallel's: ``%px`` runs one line on the view's engines and ``%%px`` a cell, blocking when
the view does (its ``block`` flag, which ``%pxconfig --block`` sets and ``rc.activate()`` turns
on) and streaming output; output is shown labelled by engine (``[stdout:0]``,
``Out[0:3]:``). Ctrl-C while a cell runs aborts it on the engines (the cluster stays usable);
``%%px --signal-on-interrupt SIG`` sends that signal to the engines instead (ipyparallel's
option: ``SIGKILL``, ``9``, ``0`` ...), and returns without waiting.
Bad options print the usage as a UsageError, never a traceback.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import shlex
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from corral.client.outputs import GROUPINGS
from corral.errors import (
    AlreadyDisplayedError,
    CompositeError,
    CorralError,
    InvalidTarget,
    NoEnginesRegistered,
    RemoteError,
    TimeoutError,
)

if TYPE_CHECKING:
    from corral.client.asyncresult import AsyncResult
    from corral.client.client import Client
    from corral.client.view import DirectView

__all__ = ["ParallelMagics", "activate", "activate_default", "load_ipython_extension"]

NO_VIEW = (
    "no active view: connect a client and activate a view first, e.g. "
    "`rc = corral.Client(); rc[:].activate()`"
)
NO_LAST_RESULT = "%pxresult shows the result of the last %px command, and there was none yet"


def _usage_error(message: str) -> NoReturn:
    from IPython.core.error import UsageError

    raise UsageError(message)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors carrying the usage, and that never exits."""

    def error(self, message: str) -> NoReturn:
        _usage_error(f"{message}\n{self.format_usage()}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        _usage_error(message or self.format_help())


def _exec_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--targets", help="engines: all, 3, 0:4, ::2, 1,3 or [1, 3]")
    parser.add_argument("-b", "--block", dest="block", action="store_const", const=True)
    parser.add_argument("-a", "--noblock", dest="block", action="store_const", const=False)
    parser.add_argument("--stream", dest="stream", action="store_const", const=True)
    parser.add_argument("--no-stream", dest="stream", action="store_const", const=False)
    parser.add_argument("--verbose", dest="verbose", action="store_const", const=True)
    parser.add_argument("--no-verbose", dest="verbose", action="store_const", const=False)


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group-outputs", dest="groupby", choices=GROUPINGS, default="type")
    parser.add_argument("-r", dest="groupby", action="store_const", const="order")
    parser.add_argument("-e", dest="groupby", action="store_const", const="engine")
    parser.add_argument(
        "-o", "--out", "--save-name", dest="save_name", help="store the AsyncResult as NAME"
    )


def _parser(prog: str, exec_options: bool, output_options: bool) -> _Parser:
    parser = _Parser(prog=prog, add_help=False)
    if exec_options:
        _exec_options(parser)
    if exec_options and output_options:  # %%px only
        parser.add_argument("--local", action="store_true", help="also run the cell here")
        parser.add_argument(
            "--signal-on-interrupt",
            dest="signal",
            default="SIGINT",
            help="on Ctrl-C: SIGINT (default) aborts the cell; another signal is sent as is",
        )
    if output_options:
        _output_options(parser)
    return parser


def parse_targets(text: str, ids: list[int]) -> Any:
    """``all``, an id, a slice of the registered ids (``0:4``, ``::2``) or a list of ids."""
    text = text.strip()
    if text == "all":
        return "all"
    if ":" in text:
        parts = text.split(":")
        try:
            bounds = [int(part) if part.strip() else None for part in parts]
        except ValueError:
            _usage_error(f"--targets: not a slice of engine ids: {text!r}")
        if len(bounds) > 3:
            _usage_error(f"--targets: not a slice of engine ids: {text!r}")
        return ids[slice(*bounds)]
    items = [item for item in re.split(r"[\s,\[\]()]+", text) if item]
    try:
        numbers = [int(item) for item in items]
    except ValueError:
        _usage_error(f"--targets: engine ids are ints: {text!r}")
    if not numbers:
        _usage_error("--targets: no engine ids given")
    return numbers[0] if len(numbers) == 1 and "," not in text and "[" not in text else numbers


class ParallelMagics:
    """The magics of one suffix, and the view, defaults and last result they share."""

    def __init__(self, shell: Any, suffix: str = "") -> None:
        self.shell = shell
        self.suffix = suffix
        self.view: DirectView | None = None
        self.stream = True
        self.verbose = False
        self.last_result: AsyncResult | None = None
        self._autopx = False
        self._run_cell: Any = None
        self._px_parser = _parser(f"%%px{suffix}", True, True)
        self._result_parser = _parser(f"%pxresult{suffix}", False, True)
        self._config_parser = _parser(f"%pxconfig{suffix}", True, False)

    def register(self) -> None:
        register = self.shell.register_magic_function
        register(self.px, "line", f"px{self.suffix}")
        register(self.cell_px, "cell", f"px{self.suffix}")
        register(self.autopx, "line", f"autopx{self.suffix}")
        register(self.pxresult, "line", f"pxresult{self.suffix}")
        register(self.pxconfig, "line", f"pxconfig{self.suffix}")

    # ------------------------------------------------------------------ the magics

    def px(self, line: str = "") -> Any:
        """%px CODE: run one line on the active view's engines (the line as typed: ``{x}``
        in an f-string is the engine's x, not expanded from this namespace first)."""
        return self.run(line)

    px.__dict__["_ipython_magic_no_var_expand"] = True  # what IPython's @no_var_expand sets

    def cell_px(self, line: str = "", cell: str = "") -> Any:
        """%%px [options]: run the cell on the engines (see the options with %%px --help)."""
        args = self._parse(self._px_parser, line)
        view = self._view()
        targets = parse_targets(args.targets, view.client.ids) if args.targets else None
        if args.local:
            result = self.run(cell, targets, block=False, save_name=args.save_name)
            self.shell.run_cell(cell)
            if view.block if args.block is None else args.block:
                return self._finish(result, args.groupby, stream=False, signal=args.signal)
            return result
        return self.run(
            cell,
            targets,
            block=args.block,
            stream=args.stream,
            groupby=args.groupby,
            save_name=args.save_name,
            verbose=args.verbose,
            signal=args.signal,
        )

    def pxresult(self, line: str = "") -> None:
        """%pxresult [options]: wait for the last %px command and show its output."""
        args = self._parse(self._result_parser, line)
        if self.last_result is None:
            _usage_error(NO_LAST_RESULT)
        if args.save_name:
            self.shell.user_ns[args.save_name] = self.last_result
        self._finish(self.last_result, args.groupby, stream=False)

    def pxconfig(self, line: str = "") -> None:
        """%pxconfig [options]: the defaults of %px (targets, blocking, streaming, verbose);
        targets and blocking are the view's own flags, as in ipyparallel."""
        args = self._parse(self._config_parser, line)
        view = self._view()
        if args.targets:
            view.targets = parse_targets(args.targets, view.client.ids)
        if args.block is not None:
            view.block = args.block
        if args.stream is not None:
            self.stream = args.stream
        if args.verbose is not None:
            self.verbose = args.verbose

    def autopx(self, line: str = "") -> None:
        """%autopx: toggle running every cell on the engines, as if it began with %%px."""
        if self._autopx:
            self.shell.run_cell = self._run_cell
            self._autopx = False
            print(f"%autopx{self.suffix} disabled")
            return
        self._view()
        self._run_cell = self.shell.run_cell
        original = self._run_cell
        toggle = re.compile(rf"^\s*%autopx{re.escape(self.suffix)}\b")

        def run_cell(raw_cell: str, *args: Any, **kwargs: Any) -> Any:
            if not toggle.match(raw_cell) and raw_cell.strip():
                raw_cell = f"%%px{self.suffix}\n{raw_cell}"
            return original(raw_cell, *args, **kwargs)

        self.shell.run_cell = run_cell
        self._autopx = True
        print(f"%autopx{self.suffix} enabled")

    # ------------------------------------------------------------------ running

    def _parse(self, parser: _Parser, line: str) -> argparse.Namespace:
        try:
            words = shlex.split(line)
        except ValueError as err:
            _usage_error(f"{err}\n{parser.format_usage()}")
        if any(word in ("-h", "--help") for word in words):
            _usage_error(parser.format_help())
        return parser.parse_args(words)

    def _view(self) -> DirectView:
        if self.view is None:
            _usage_error(NO_VIEW)
        return self.view

    def run(
        self,
        code: str,
        targets: Any = None,
        *,
        block: bool | None = None,
        stream: bool | None = None,
        groupby: str = "type",
        save_name: str | None = None,
        verbose: bool | None = None,
        signal: str = "SIGINT",
    ) -> Any:
        """Send ``code`` to the engines; wait and show the output when blocking, else return
        the AsyncResult (also kept for %pxresult)."""
        view = self._view()
        block = view.block if block is None else block
        if self.verbose if verbose is None else verbose:
            where = view.targets if targets is None else targets
            mode = "Parallel" if block else "Async parallel"
            print(f"{mode} execution on engine(s): {_short(where)}")
        try:
            result: AsyncResult = view.execute(code, silent=False, targets=targets, block=False)
        except (NoEnginesRegistered, InvalidTarget) as err:
            _usage_error(str(err))
        self.last_result = result
        if save_name:
            self.shell.user_ns[save_name] = result
        if not block:
            return result
        self._finish(result, groupby, self.stream if stream is None else stream, signal)
        return None

    def _finish(
        self, result: AsyncResult, groupby: str, stream: bool, signal: str = "SIGINT"
    ) -> None:
        """Wait (streaming output if asked), show the output, raise the remote error(s).
        Ctrl-C aborts the work on the engines instead (or sends them ``signal``)."""
        try:
            if stream:
                with result.stream_output():
                    shown = _stream_errors(result)
            else:
                result.wait()
        except KeyboardInterrupt:
            print(
                f"Received Keyboard Interrupt. Sending signal {signal} to engines...",
                file=sys.stderr,
            )
            if signal.upper() in ("SIGINT", "INT", "2"):
                self._interrupted(result)
            else:
                self._signalled(result, signal)
            return
        result.display_outputs(groupby, result_only=stream)
        if not stream:
            result.get()
            return
        try:
            result.get()
        except CompositeError as err:
            if not shown:
                raise
            # every traceback is on the screen already: say how many, as ipyparallel does
            raise AlreadyDisplayedError(err) from None

    def _interrupted(self, result: AsyncResult) -> None:
        """Ctrl-C during a blocking %px: abort the cell on the engines, and say so."""
        engines = sorted({e for e in _engine_ids(result) if e is not None})
        try:
            result.abort()
            result.wait(self._view().client.timeout)
        except (CorralError, TimeoutError) as err:
            print(f"%px interrupted; aborting it on the engines failed: {err}", file=sys.stderr)
            return
        print(f"%px interrupted: aborted on engine(s) {engines}", file=sys.stderr)

    def _signalled(self, result: AsyncResult, signal: str) -> None:
        """Ctrl-C with another ``--signal-on-interrupt``: send it to the cell's engines, and
        return without waiting (after SIGKILL the engines never answer)."""
        engines = sorted({e for e in _engine_ids(result) if e is not None})
        try:
            self._view().client.send_signal(
                int(signal) if signal.isdigit() else signal, engines, block=False
            )
        except (CorralError, ValueError) as err:
            print(f"%px interrupted; sending {signal} failed: {err}", file=sys.stderr)


def _stream_errors(result: AsyncResult) -> int:
    """Wait for ``result``, printing each request's remote traceback to stderr as it fails
    (``%%px --stream``); how many were printed."""
    shown = 0
    for child in concurrent.futures.as_completed(result._children):
        error = child.exception()
        if isinstance(error, RemoteError):
            engine = error.engine_id if error.engine_id is not None else "?"
            label = f"[{engine}:{error.method or 'apply'}]:"
            print("\n".join([label, *error._traceback_lines()]), file=sys.stderr, flush=True)
            shown += 1
    return shown


def _engine_ids(result: AsyncResult) -> list[int | None]:
    ids = result.engine_id
    return ids if isinstance(ids, list) else [ids]


def _magics(shell: Any) -> dict[str, ParallelMagics]:
    """The ParallelMagics of each suffix registered in ``shell``."""
    registry: dict[str, ParallelMagics] | None = getattr(shell, "_corral_magics", None)
    if registry is None:
        registry = {}
        shell._corral_magics = registry
    return registry


def _for_suffix(shell: Any, suffix: str) -> ParallelMagics:
    registry = _magics(shell)
    magics = registry.get(suffix)
    if magics is None:
        magics = registry[suffix] = ParallelMagics(shell, suffix)
        magics.register()
    return magics


def activate(view: DirectView, suffix: str = "") -> None:
    """Make ``view`` the one the magics with ``suffix`` use, registering them if needed."""
    try:
        from IPython import get_ipython
    except ImportError:
        raise ImportError("the %px magics need IPython: pip install 'corral[ipython]'") from None
    shell = get_ipython()
    if shell is None:
        raise RuntimeError("view.activate() registers IPython magics: run it inside IPython")
    magics = _for_suffix(shell, suffix.strip())
    magics.view = view
    magics.stream = True  # each activation starts from the defaults, as in ipyparallel
    magics.verbose = False


def activate_default(client: Client) -> None:
    """In IPython, a new client with no %px magics yet activates a blocking view of all its
    engines (ipyparallel's Client does the same); elsewhere nothing happens."""
    ipython = sys.modules.get("IPython")  # never import IPython only to find it is unused
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or "px" in shell.magics_manager.magics["line"]:
        return
    client.activate()


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext corral``: register %px, %%px, %autopx, %pxresult and %pxconfig."""
    _for_suffix(shell, "")


def _short(targets: object) -> str:
    """Targets as ``%px --verbose`` shows them: a list of more than 10 by its first and last
    four (``[0, 1, 2, 3, ..., 96, 97, 98, 99]``), as ipyparallel shows them."""
    if isinstance(targets, list) and len(targets) > 10:
        return f"{str(targets[:4])[:-1]}, ..., {str(targets[-4:])[1:]}"
    return str(targets)
