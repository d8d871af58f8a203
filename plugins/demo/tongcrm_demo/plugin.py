"""Hook implementations of the demo distribution: it contributes the ``tongcrm demo`` command, nothing else."""

from __future__ import annotations

from collections.abc import Sequence

import click
from tongcrm.plugin import hookimpl

__all__ = ["cli_commands"]


@hookimpl
def cli_commands() -> Sequence[click.Command]:
    from tongcrm_demo.command import demo_command

    return [demo_command]
