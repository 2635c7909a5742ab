"""The package's import graph has no cycles: every module can be read bottom-up.

The layering contracts in ``.importlinter`` say which packages may import which; this adds
that no two modules import each other, directly or through others (a cycle is what forced the
planner to hide an import inside a function).  grimp is the graph library import-linter uses,
and like it this reads the source, imports nested in functions included.
"""

from __future__ import annotations

import grimp


def test_no_module_of_disagg_is_part_of_an_import_cycle() -> None:
    graph = grimp.build_graph("disagg")
    cycles = sorted(
        {
            tuple(sorted((module, imported)))
            for module in graph.modules
            for imported in graph.find_modules_directly_imported_by(module)
            if imported.startswith("disagg.") and graph.chain_exists(imported, module)
        }
    )
    assert cycles == []
