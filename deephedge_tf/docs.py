"""The API reference, generated from the docstrings with pdoc: ``python -m deephedge_tf.docs OUT_DIR``
(``make docs`` writes docs/api/; the test suite builds it into a temporary folder).

Every public module of the package gets a page; the top-level names (``dh.Heston``, ...) are documented
where they are defined.  The user guide (docs/guide/) links into these pages.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

#: Modules left out of the reference: the command line's plumbing.
EXCLUDED = ("deephedge_tf.cli", "deephedge_tf.docs")


def build(out: Path) -> list[Path]:
    """Writes the HTML reference into ``out``; returns the module pages written."""
    import pdoc
    import pdoc.render

    pdoc.render.configure(docformat="google", show_source=False, footer_text="deephedge_tf API reference")
    # Packages document their submodules too; naming each module as well only repeats them.
    warnings.filterwarnings("ignore", message="The module specification", category=UserWarning)
    import pkgutil

    import deephedge_tf

    modules = ["deephedge_tf"] + [m.name for m in pkgutil.walk_packages(deephedge_tf.__path__, "deephedge_tf.")
                                  if m.name not in EXCLUDED]
    out = Path(out)
    pdoc.pdoc(*modules, output_directory=out)
    return sorted(p for p in out.rglob("*.html") if p.name not in ("index.html", "search.html"))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m deephedge_tf.docs OUT_DIR", file=sys.stderr)
        return 2
    pages = build(Path(argv[0]))
    print(f"wrote {len(pages)} module pages to {argv[0]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
