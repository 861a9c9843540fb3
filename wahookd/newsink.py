"""`wahookd new-sink NAME [--dir D]`: write a plugin distribution ``wahookd-NAME``.

What it writes (from the templates in ``wahookd/templates/newsink/``, package data):
``pyproject.toml`` with the ``wahookd`` entry point, the sink module ``wahookd_NAME`` with an
options model, a README, and ``tests/test_conformance.py`` subclassing
`wahookd.testing.SinkConformance`. It installs (``pip install -e ./wahookd-NAME``) and
passes its own tests unchanged; docs/plugins.md starts from it.
"""

from __future__ import annotations

import argparse
import re
from importlib import resources
from pathlib import Path
from string import Template

from wahookd import __version__
from wahookd.errors import PluginError, WahookdError

# A sink name as users write it in `plugin = "..."`: it is also the entry point's name and,
# with - as _, part of the module name, so lowercase letters, digits, and single - or _.
SINK_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
MAX_NAME = 40
# (file written, template): the module's path takes the module name.
FILES = (
    ("pyproject.toml", "pyproject.toml.tmpl"),
    ("README.md", "README.md.tmpl"),
    (".gitignore", "gitignore.tmpl"),
    ("{module}/__init__.py", "sink.py.tmpl"),
    ("tests/test_conformance.py", "test_conformance.py.tmpl"),
)


def taken_sink_names() -> dict[str, str]:
    """Sink names already provided (name -> by whom): the built-ins, and installed plugins
    when they load (a broken one is `wahookd plugins`' business, not this command's)."""
    from wahookd.plugins import collect, get_plugin_manager

    try:
        return collect(get_plugin_manager()).sink_owners
    except PluginError:
        return collect(get_plugin_manager(load_entrypoints=False)).sink_owners


def check_name(name: str) -> None:
    if len(name) > MAX_NAME or not SINK_NAME.match(name):
        raise WahookdError(
            f"new-sink: {name!r} is not a sink name: lowercase letters and digits, words joined by "
            f"single - or _, starting with a letter, at most {MAX_NAME} characters (e.g. acme, acme-crm)"
        )
    owner = taken_sink_names().get(name)
    if owner is not None:
        raise WahookdError(
            f"new-sink: a sink named {name!r} already exists ({owner}); two plugins providing one "
            "name stop wahookd from starting, so choose another"
        )


def render(template: str, name: str) -> str:
    module = "wahookd_" + name.replace("-", "_")
    values = {
        "name": name,
        "dist": f"wahookd-{name}",
        "module": module,
        "klass": "".join(part.capitalize() for part in re.split(r"[-_]", name)),
        "wahookd_version": __version__,
    }
    text = resources.files("wahookd").joinpath("templates", "newsink", template).read_text(encoding="utf-8")
    return Template(text).substitute(values)


def write_distribution(name: str, directory: Path) -> Path:
    """Write ``<directory>/wahookd-<name>/`` and return it; refuses to touch an existing one."""
    check_name(name)
    target = directory / f"wahookd-{name}"
    if target.exists():
        raise WahookdError(f"new-sink: {target} already exists; remove it or choose another --dir")
    module = "wahookd_" + name.replace("-", "_")
    rendered = [(target / path.format(module=module), render(template, name)) for path, template in FILES]
    try:
        for path, text in rendered:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise WahookdError(f"new-sink: cannot write {target}: {exc.strerror or exc}") from None
    return target


def run_new_sink(args: argparse.Namespace) -> int:
    target = write_distribution(args.name, Path(args.dir))
    steps = (
        (f"pip install -e '{target}[test]'", "into the environment wahookd runs in"),
        (f"(cd {target} && pytest)", "the conformance suite, against the real target"),
        ("wahookd plugins", f'lists it; configure it as plugin = "{args.name}"'),
    )
    width = max(len(command) for command, _ in steps)
    print(f"wrote {target}, a plugin distribution providing the sink {args.name!r}; next:")
    for command, why in steps:
        print(f"  {command.ljust(width)}  # {why}")
    return 0
