"""The API reference builds from the docstrings (pdoc), with a page for every public module and every
top-level name documented where it is defined."""

import importlib

import deephedge_tf as dh
from deephedge_tf.docs import build


def test_api_reference_builds_with_every_public_name(tmp_path):
    pages = build(tmp_path)
    assert (tmp_path / "index.html").is_file() and len(pages) > 30
    for name in dh.__all__:
        if name == "__version__":
            continue
        module = dh._WHERE[name]
        page = tmp_path.joinpath(*module.split(".")).with_suffix(".html")
        assert page.is_file(), module
        obj = getattr(importlib.import_module(module), name)
        # documented where it is defined (a re-export such as dh.CVaR is an alias of ExpectedShortfall)
        defined = getattr(obj, "__name__", name)
        home = tmp_path.joinpath(*obj.__module__.split(".")).with_suffix(".html")
        assert f'id="{defined}"' in home.read_text(), (name, home)
