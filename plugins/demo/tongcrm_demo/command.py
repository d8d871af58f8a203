"""The ``tongcrm demo`` command's options, apart from what it runs (:mod:`tongcrm_demo.runner`).

Every ``tongcrm`` invocation asks the plugins for their commands; the runner imports the fake shops (the web
stack with them) and the migrations, ~0.3 s of CPU that ``tongcrm import`` and the others paid at each start
without running the demo (#22). The runner is imported when the demo runs.
"""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_DIR = "tongcrm-demo"


@click.command("demo")
@click.option(
    "--dir",
    "folder",
    default=DEFAULT_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
)
@click.option("--fresh", is_flag=True, help="Delete an existing demo folder and play the story again.")
@click.option("--reuse", is_flag=True, help="Serve an existing demo folder as it is, without replaying.")
@click.option("--host", "bind_host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--seed", default=1, show_default=True, type=click.IntRange(0, 99), help="The story's seed.")
def demo_command(folder: Path, fresh: bool, reuse: bool, bind_host: str, port: int, seed: int) -> None:
    """Fill a fresh member base (SQLite, in --dir) with three weeks of life from fake Tmall, JD, stores and SMS,
    then serve the API and console on loopback and print an operator key. Without --fresh or --reuse an
    existing demo folder is reused (on a terminal you are asked)."""
    from tongcrm_demo.runner import run_demo

    run_demo(folder.resolve(), fresh=fresh, reuse=reuse, bind_host=bind_host, port=port, seed=seed)
