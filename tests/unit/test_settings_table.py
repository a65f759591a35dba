"""README's settings table is generated from Settings: the two must agree, and every field has
a description (`make settings-table` regenerates it)."""

from __future__ import annotations

import pytest
from pydantic import Field

from registry.config import Settings
from tools import settings_table as st


def test_readme_table_matches_settings():
    table = st.render()
    assert st.current(st.README.read_text()) == table, (
        "README.md's settings table is stale: run `make settings-table`")
    assert st.main(["--check"]) == 0


def test_every_field_is_a_row_with_its_env_var():
    rows = [line for line in st.render().splitlines()[2:]]
    assert len(rows) == len(Settings.model_fields)
    names = [row.split("|")[1].strip().strip("`") for row in rows]
    assert names == [f"REGISTRY_{f.upper()}" for f in Settings.model_fields]
    assert "| `REGISTRY_MAX_FILE_BYTES` | `21474836480` (20 GiB) |" in st.render()
    assert "| `REGISTRY_AUTO_MIGRATE` | unset |" in st.render()


def test_a_new_setting_makes_the_table_stale(tmp_path, monkeypatch, capsys):
    class More(Settings):
        brand_new_knob: int = Field(7, description="Something | new.")

    table = st.render(More)
    assert "| `REGISTRY_BRAND_NEW_KNOB` | `7` | Something \\| new. |" in table
    readme = tmp_path / "README.md"
    readme.write_text(st.rewrite(st.README.read_text(), st.render()))
    monkeypatch.setattr(st, "README", readme)
    assert st.main(["--check"]) == 0
    readme.write_text(st.rewrite(readme.read_text(), table))
    assert st.main(["--check"]) == 1
    assert "make settings-table" in capsys.readouterr().err
    assert st.main(["--write"]) == 0 and st.main(["--check"]) == 0
    assert "BRAND_NEW_KNOB" not in readme.read_text()


def test_a_field_without_a_description_is_refused():
    class Undocumented(Settings):
        mystery: int = 1

    with pytest.raises(st.MissingDescription, match=r"Settings\.mystery"):
        st.render(Undocumented)


def test_markers_are_required():
    with pytest.raises(ValueError, match="markers"):
        st.current("# no table here\n")
