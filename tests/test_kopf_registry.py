"""The kopf registry the operator builds: only watch-fed handlers, as NoDiffBase requires.

``handlers.NoDiffBase`` stops kopf from storing and diffing the last handled state of every
object, which only kopf's change-detecting handlers (on.create/update/resume/delete/field) and
daemons/timers read.  A handler of those kinds added later would silently see no changes.
"""

from __future__ import annotations

from typing import cast

from disagg.controller.handlers import build_registry
from disagg.controller.kube import Kube
from disagg.controller.runtime import Controller, Settings


def test_the_registry_has_no_handler_that_needs_kopfs_diff_base() -> None:
    registry = build_registry(Controller(cast(Kube, None), Settings()))
    # kopf has no public listing of a registry's handlers; these are its per-kind tables.
    assert not registry._changing.get_all_handlers()
    assert not registry._spawning.get_all_handlers()
    assert registry._watching.get_all_handlers()
    assert registry._indexing.get_all_handlers()
