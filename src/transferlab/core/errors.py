"""The failures that are the user's to fix, raised where the problem is found; anything else is a bug.

The stage runner and `transferlab predict` print a `UserError` as one line naming the key or file and exit 2;
every other exception (ValueError included) keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input: a parameter, a data file, a command-line argument. The message names the key or the file."""


class ParamsError(UserError):
    """A parameter is missing, of the wrong type or out of range; the message names the key."""


class DamagedFile(UserError):
    """A file one stage wrote and another reads is not what was written (truncated, altered, unreadable); the
    message names it and the stage to re-run (`stage`), or the shard's folder to make again (`target`); the stage
    runner adds the command that re-runs it in the engine in use (`rerun_command`)."""

    def __init__(self, message: str, stage: str | None = None, target: str | None = None) -> None:
        super().__init__(message)
        self.stage, self.target = stage, target


def rerun_command(stage: str, target: str | None, engine: str | None) -> str:
    """The command that makes a damaged file again: Snakemake forces the rule (or the shard's folder) and what
    follows it; DVC the stage alone, then `dvc repro` the rest; outside both engines, the stage's script."""
    forced = target or stage
    commands = {"snakemake": f"snakemake --cores all -R {forced}", "dvc": f"dvc repro -f -s {stage} && dvc repro"}
    if engine in commands:
        return commands[engine]
    return f"{commands['snakemake']} (or {commands['dvc']})"


def check_classes(given: dict[str, str | None], names: list[str], whose: str) -> None:
    """Refuse, in one line naming every such key at once, the visualize keys (`given`: key → class) naming a class
    not among `names`."""
    shown = ", ".join(names[:6]) + (", …" if len(names) > 6 else "")
    wrong = [f"visualize.{key}: {value!r} is not a class of {whose} ({shown})"
             for key, value in given.items() if value is not None and value not in names]
    if wrong:
        raise ParamsError("params: " + "; ".join(wrong) + "; name one, or null")
