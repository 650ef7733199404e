"""Device profiles: the shipped ones load; a broken one is reported with its file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.south.profile import PROFILES_DIR, ProfileError, load_profile

GOOD_PV = """
kind = "pv"
positive_w = "injection"

[[variants]]
name = "ieee1547"
models = { meas = [701], cap = [702], ctl = [704] }

[variants.read]
p_w = ["meas.W"]
rated_w = ["cap.WMax"]

[variants.power]
unit = "pct_of_rated"
value = "ctl.WMaxLimPct"
enable = "ctl.WMaxLimPctEna"
reversion_timer = "ctl.WMaxLimPctRvrtTms"
"""


def _load(tmp_path: Path, text: str, kind: str = "pv", name: str = "site") -> object:
    role = {"pv": "inverter", "battery": "battery", "meter": "meter"}[kind]
    (tmp_path / f"{name}_{role}.toml").write_text(text, encoding="utf-8")
    load_profile.cache_clear()
    return load_profile(name, kind, tmp_path)


@pytest.mark.parametrize("kind", ["pv", "battery", "meter"])
def test_shipped_profiles_load(kind: str) -> None:
    profile = load_profile("sunspec", kind, PROFILES_DIR)
    assert profile.kind == kind
    assert profile.variants


def test_a_good_profile_loads(tmp_path: Path) -> None:
    assert _load(tmp_path, GOOD_PV).variants[0].name == "ieee1547"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('value = "ctl.WMaxLimPct"', 'value = "ctl.WMaxLimPc"',
         "variants[0] (ieee1547): power.value: ctl.WMaxLimPc: model 704 (DERCtlAC) has no point 'WMaxLimPc'"),
        ('value = "ctl.WMaxLimPct"', 'value = "meas.W"', "power.value: meas.W is read-only"),
        ('p_w = ["meas.W"]', 'p_w = ["meter.W"]', "read.p_w: meter.W: no model alias 'meter'"),
        ('unit = "pct_of_rated"', 'unit = "percent"', "variants[0] (ieee1547).power.unit: Input should be"),
        ('positive_w = "injection"', 'positive_w = "injection"\ncolour = "blue"', "colour: unknown field"),
        ('p_w = ["meas.W"]', "", "variants[0] (ieee1547).read.p_w: Field required"),
        ("ctl = [704]", "ctl = [7040]", "model 7040 is not a SunSpec model pysunspec2 knows"),
        ('reversion_timer = "ctl.WMaxLimPctRvrtTms"',
         'reversion_timer = "ctl.WMaxLimPctRvrtTms"\nreversion = "safe_limit_pct"\nenabled = "ON"',
         "power.enable: ctl.WMaxLimPctEna has no symbol 'ON'"),
    ],
)
def test_a_broken_profile_names_the_file_and_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD_PV
    with pytest.raises(ProfileError) as err:
        _load(tmp_path, GOOD_PV.replace(old, new))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'site_inverter.toml'}: ")
    assert expected in message


def test_profile_of_another_kind_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="kind: the profile is for 'pv', the device is 'battery'"):
        _load(tmp_path, GOOD_PV, kind="battery")
    with pytest.raises(ProfileError, match="no such device profile"):
        load_profile("nonexistent", "pv", tmp_path)
    with pytest.raises(ProfileError, match="not valid TOML"):
        _load(tmp_path, "kind = ", name="bad")


def test_reversion_to_safe_limit_needs_a_percentage(tmp_path: Path) -> None:
    text = GOOD_PV.replace('unit = "pct_of_rated"', 'unit = "W"') + 'reversion = "safe_limit_pct"\n'
    with pytest.raises(ProfileError, match="reversion = 'safe_limit_pct' needs unit = 'pct_of_rated'"):
        _load(tmp_path, text)
