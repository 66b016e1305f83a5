"""`mmsr`: the entry point. Groups live one per file and are added here."""

from __future__ import annotations

import inspect
import json
import os
import re
import signal
import sys
import threading
import time
import traceback

import typer

from mmsr.errors import Terminated
from mmsr.offline import stay_offline
from mmsr_store.errors import UserError
from mmsr_cli import cache, data, evaluate, models, plot, study, train
from mmsr_cli.common import console

app = typer.Typer(
    name="mmsr",
    help=(
        "Train ID-agnostic multi-modal sequential recommenders.\n\n"
        "Data flow: `mmsr data demo|import` -> `mmsr cache build` -> `mmsr train --from-cache` "
        "-> `mmsr eval --faiss` -> `mmsr recommend`. Everything lives under $MMSR_HOME "
        "(default ~/.cache/mmsr)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(cache.app, name="cache")
app.add_typer(models.app, name="models")
app.add_typer(study.app, name="study")
app.add_typer(plot.app, name="plot")
app.command("train")(train.train_command)
app.command("eval")(evaluate.eval_command)
app.command("compare")(evaluate.compare_command)
app.command("ranks")(evaluate.ranks_command)
app.command("recommend")(evaluate.recommend_command)


def _reflow(text: str | None) -> str | None:
    """A docstring's paragraphs as one line each, which the terminal then wraps to its width:
    typer keeps the single line breaks of every paragraph after the first, so a docstring's
    lines of ~95 characters broke in the middle of an 80-column screen. A line starting with
    "- " or "* " keeps its break (a list)."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(re.sub(r"\n(?![-*] )", " ", paragraph) for paragraph in paragraphs)


def _reflow_help(group: typer.Typer) -> None:
    for command in group.registered_commands:
        command.help = _reflow(command.help or inspect.getdoc(command.callback))
    for subgroup in group.registered_groups:
        _reflow_help(subgroup.typer_instance)


_reflow_help(app)

_state = {"debug": False}
# click's base of its usage and option errors, as the click typer runs on defines it (typer
# carries its own copy of click, so `import click` would name other classes).
_CLICK_ERROR = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "ClickException")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback on errors.")):
    _state["debug"] = debug


def main() -> None:
    Terminated.raised = False
    previous = signal.getsignal(signal.SIGTERM)
    # An ignored SIGTERM was asked for by whoever started mmsr; signal() works in the main thread only.
    takes_it = previous is signal.SIG_DFL and threading.current_thread() is threading.main_thread()
    if takes_it:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        _main()
    except SystemExit as done:
        group = _joined_group()
        if group and (done.code is None or isinstance(done.code, int)):  # a message (never ours): as Python does
            group.exit_after_group(done.code or 0)
        raise
    except BaseException:
        group = _joined_group()
        if group:
            traceback.print_exc()  # a bug, or --debug: its traceback, then the exit of any failure
            group.exit_after_group(1)
        raise
    finally:
        if takes_it:
            signal.signal(signal.SIGTERM, previous)  # main() is also called in-process (tests)
    group = _joined_group()
    if group:
        group.exit_after_group(0)


def _terminate(signum, frame) -> None:
    """SIGTERM killed a command without a word (exit 143, no line, nothing cleaned up; as PID 1 in
    a container it was ignored until the SIGKILL that follows). Raised as Ctrl-C is, it runs the
    same clean-up and ends with the same line. Training's loop replaces this handler with its own
    while it runs (mmsr.train.interrupt: checkpoint, then stop)."""
    raise Terminated


def _joined_group():
    """`mmsr.distributed` when this process joined a process group (a torchrun rank ends through
    its `exit_after_group`; why: its docstring), else None. A process that joined one has
    imported the module; one that did not needs no torch here."""
    module = sys.modules.get("mmsr.distributed")
    return module if module is not None and module.joined_group() else None


def _main() -> None:
    stay_offline()
    try:
        # Not standalone: a usage error (an unknown option, a bad value, a missing argument)
        # comes here to be said in one line, as every other user error is, not in typer's panel.
        status = app(standalone_mode=False, prog_name="mmsr")
    except _CLICK_ERROR as error:
        if type(error).__name__ == "NoArgsIsHelpError":
            sys.exit(error.exit_code)  # the help was printed when the error was made
        context = getattr(error, "ctx", None)
        see = f" (see `{context.command_path} --help`)" if context is not None else ""
        _last_words(f"error: {error.format_message()}{see}", typer.colors.RED)
        sys.exit(error.exit_code)
    except typer.Abort as abort:
        # click turns an EOFError into Abort as if it were Ctrl-D at a prompt; mmsr asks nothing, so
        # one is a file read short where no reader caught it (a bug to fix there), not an interruption.
        if isinstance(abort.__cause__, EOFError):
            raise abort.__cause__
        _interrupted()
    except UserError as error:
        if _state["debug"] or "--debug" in sys.argv:
            raise
        _last_words(f"{getattr(error, 'label', 'error')}: {error}", typer.colors.RED)
        sys.exit(getattr(error, "exit_status", 2))
    except KeyboardInterrupt:
        _interrupted()
    else:
        # Not standalone, typer returns an Exit's code instead of exiting: Ctrl-C inside a
        # command is Exit(130); --help and a finished command give 0 or None.
        if status == 130:
            _interrupted()
        if isinstance(status, int) and status:
            sys.exit(status)


def _interrupted() -> None:
    signum = signal.SIGTERM if Terminated.raised else signal.SIGINT  # why not the exception: Terminated
    said = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
    _last_words(f"interrupted{said}; finished work is kept, rerun the command to resume", None)
    sys.exit(128 + signum)


def _last_words(text: str, colour) -> None:
    """The failure line goes last: whatever the progress bars left in a buffer is written first,
    so no bar is redrawn below the error. Under torchrun the line also goes to the launcher's
    report (`_tell_launcher`), which it prints after every rank has ended; a rank other than 0
    leaves it there instead of printing the line each rank prints alike."""
    console.show_cursor(True)
    console.file.flush()
    sys.stdout.flush()
    if _tell_launcher(text) and os.environ.get("RANK", "0") != "0":
        return
    typer.secho(text, fg=colour, err=True)


def _tell_launcher(text: str) -> bool:
    """Write `text` to the error file torchrun gives each rank (TORCHELASTIC_ERROR_FILE, in the
    format of torch.distributed.elastic's error handler without a call stack): its report then
    shows the line where it said "To enable traceback see ...". False outside torchrun."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"message": {"message": text, "extraInfo": {"timestamp": str(int(time.time()))}}}, handle)
    except OSError:
        return False
    return True


if __name__ == "__main__":
    main()
