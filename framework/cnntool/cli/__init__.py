"""The `cnntool` command line: a Typer app, one module per command group.

Commands are thin: they parse options and call library functions. Every error a user can
cause is one line on stderr and a non-zero exit code (1 for a bad input, 2 for a bad
option); `--debug` anywhere on the line shows the traceback instead. Nothing heavy is
imported until a command runs, so `cnntool --help` stays fast.
"""

from __future__ import annotations

import difflib
import functools
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

try:  # Typer 0.24 and later carry their own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[no-redef]  # older Typer: click's

from cnntool import __version__
from cnntool.errors import CnntoolError

_debug = False


class CnntoolGroup(TyperGroup):
    """Accepts `--debug` anywhere on the line, not only before the command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        global _debug
        _debug = "--debug" in args
        return super().parse_args(ctx, [arg for arg in args if arg != "--debug"])

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Click's main, with its usage errors (an unknown option, a bad value, a missing
        argument) as one `error:` line naming the nearest valid option, exit code 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **kwargs)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **kwargs)
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(0)
        except click_errors.ClickException as exc:
            typer.echo(f"error: {usage_error(exc)}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:  # typer's own (Typer 0.24 and later keep none in click_errors)
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_error(exc: click_errors.ClickException) -> str:
    """One line for a click error: the command, what was wrong, the option meant, the help."""
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    help_hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    if isinstance(exc, click_errors.NoSuchOption) and ctx is not None:
        names = [name for param in ctx.command.params for name in getattr(param, "opts", [])]
        names += [name for param in ctx.command.params for name in getattr(param, "secondary_opts", [])]
        names.append("--help")
        guesses = difflib.get_close_matches(exc.option_name, names, n=1, cutoff=0.4)
        nearest = f"; did you mean {guesses[0]}?" if guesses else ""
        return f"{where}no such option {exc.option_name}{nearest}{help_hint}"
    message = " ".join(exc.format_message().split()).rstrip(".")
    return f"{where}{message[:1].lower()}{message[1:]}{help_hint}"


def user_errors(command: Callable) -> Callable:
    """Run a command so that errors are one line on stderr and an exit code, with the
    traceback only under --debug: 1 for a user error, 3 for a bug, 130 for Ctrl-C."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show_warning
            try:
                return command(*args, **kwargs)
            except typer.Exit:
                raise
            except KeyboardInterrupt:
                typer.echo("interrupted", err=True)
                raise typer.Exit(130) from None
            except CnntoolError as exc:
                if _debug:
                    raise
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from None
            except Exception as exc:
                if _debug:
                    raise
                typer.echo(
                    f"error: internal error ({type(exc).__name__}: {exc}); "
                    "rerun with --debug for the traceback and please report it",
                    err=True,
                )
                raise typer.Exit(3) from None

    return run


def show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    typer.echo(f"warning: {message}", err=True)


app = typer.Typer(
    cls=CnntoolGroup,
    name="cnntool",
    help="Train, inspect, run and serve convolutional networks declared as JSON specs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cnntool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks of errors (also accepted after a command).")
    ] = False,
) -> None:
    """cnntool: convolutional networks from JSON specs to bundle files."""


def register() -> None:
    from cnntool.cli import (
        data,
        evaluate,
        infer,
        inspect,
        interchange,
        layers,
        plot,
        plugin,
        serve,
        sweep,
        train,
        warmup,
    )

    app.command("train")(user_errors(train.train))
    app.command("inspect")(user_errors(inspect.inspect))
    app.command("plot")(user_errors(plot.plot))
    app.command("infer")(user_errors(infer.infer))
    app.command("eval")(user_errors(evaluate.evaluate))
    app.command("serve")(user_errors(serve.serve))
    app.command("sweep")(user_errors(sweep.sweep))
    app.command("warmup")(user_errors(warmup.warmup))
    app.command("export")(user_errors(interchange.export_model))
    app.command("import")(user_errors(interchange.import_model))
    app.command("layers")(user_errors(layers.layers))
    app.command("schema")(user_errors(layers.schema))
    plugin.app.command("check")(user_errors(plugin.check))
    app.add_typer(plugin.app, name="plugin")
    data.app.command("list")(user_errors(data.list_datasets))
    data.app.command("info")(user_errors(data.info))
    data.app.command("download")(user_errors(data.download))
    app.add_typer(data.app, name="data")


register()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="cnntool")


if __name__ == "__main__":  # pragma: no cover
    main()
