"""The driver's decode of FC3/FC4 read responses (one struct call) against pymodbus's own (one per
register): the same registers for any frame, and the same error for a byte count past the data."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from gateway.south.modbus_client import _HoldingRegisters, _InputRegisters

PAIRS = [(_HoldingRegisters, ReadHoldingRegistersResponse), (_InputRegisters, ReadInputRegistersResponse)]


def _decoded(cls: type[ReadHoldingRegistersResponse], data: bytes) -> list[int] | str:
    pdu = cls()
    try:
        pdu.decode(data)
    except ModbusIOException:
        return "ModbusIOException"
    return pdu.registers


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
@given(count=st.integers(0, 255), body=st.binary(max_size=260))
def test_a_read_response_decodes_as_pymodbus_decodes_it(ours: type, theirs: type, count: int,
                                                        body: bytes) -> None:
    # any byte count against any body: shorter, odd, longer than the data
    data = bytes([count]) + body
    assert _decoded(ours, data) == _decoded(theirs, data)
    assert ours.function_code == theirs.function_code


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_a_full_read_response_decodes_as_pymodbus_decodes_it(ours: type, theirs: type) -> None:
    words = list(range(0, 65536, 525))[:125]
    data = bytes([250]) + b"".join(w.to_bytes(2, "big") for w in words)
    assert _decoded(ours, data) == _decoded(theirs, data) == words
