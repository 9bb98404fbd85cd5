"""`tunehouse db current|upgrade`: the store's schema revision, and bringing it to the newest.

Every process upgrades the store when it first opens it, so `upgrade` is for an operator who wants it
done (and seen) before starting servers and workers against a shared database.
"""

from __future__ import annotations

import typer
from rich.console import Console

db_app = typer.Typer(help="The store's schema: its revision and upgrades.", no_args_is_help=True)
console = Console()


def _names(revisions: set[str]) -> str:
    return ", ".join(sorted(revisions)) or "none (a new store, or one from before migrations)"


@db_app.command("current")
def current() -> None:
    """Print the revisions the store is at and the newest ones this release has."""
    from tunehouse.store.db import revisions

    at, newest = revisions()
    console.print(f"Store at: {_names(at)}")
    console.print(f"Newest:   {_names(newest)}" + ("" if at == newest else "  (run `tunehouse db upgrade`)"))


@db_app.command("upgrade")
def upgrade() -> None:
    """Bring the store to the newest revisions (what every process does when it opens the store)."""
    from tunehouse.store.db import engine, revisions

    engine()
    console.print(f"Store at: {_names(revisions()[0])}")
