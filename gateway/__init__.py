"""der-gateway: edge gateway for DER sites (IESO dispatch inside LDC limits)."""

__version__ = "0.1.0"
