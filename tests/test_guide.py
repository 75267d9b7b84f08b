"""The user guide's examples (docs/guide/*.md) run and print what they say (doctest)."""

import doctest
from pathlib import Path

import pytest

GUIDE = sorted((Path(__file__).resolve().parents[1] / "docs" / "guide").glob("*.md"))


@pytest.mark.parametrize("page", GUIDE, ids=[p.stem for p in GUIDE])
def test_guide_examples(page):
    result = doctest.testfile(str(page), module_relative=False,
                              optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0


def test_a_page_per_concept():
    assert {p.stem for p in GUIDE} == {"markets", "instruments", "policies", "objectives", "optimizers",
                                       "evaluation", "export", "distributed"}
