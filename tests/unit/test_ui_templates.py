"""The web UI's templates compile, and autoescaping is on for every one of them."""

from __future__ import annotations

from registry.ui.router import HERE, env


def test_every_template_compiles_with_autoescape():
    names = sorted(p.name for p in (HERE / "templates").glob("*.html"))
    assert {"adapters.html", "adapter.html", "version.html", "jobs.html", "login.html",
            "promote.html", "error.html"} <= set(names)
    for name in names:
        template = env.get_template(name)
        assert template.environment.autoescape is not False
    macros = env.get_template("_macros.html").module
    assert "&lt;b&gt;" in str(macros.status("<b>"))  # type: ignore[attr-defined]
