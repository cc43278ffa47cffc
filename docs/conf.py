"""Sphinx configuration: the documentation site built from docs/ (`just docs`).

Markdown pages through MyST; the API reference from the public docstrings (autodoc);
the configuration and metrics pages generated from the code by docs/_ext/reference.py.
tests/integration/test_docs.py builds it with warnings as errors.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(1, str(HERE.parent))  # scripts/ (the config table), and actors/ when it is not installed

project = "durable-emitter"
author = "durable-emitter maintainers"
copyright = "durable-emitter maintainers, MIT licence"

extensions = ["myst_parser", "sphinx.ext.autodoc", "reference"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-heading) links resolve, and the build says when one does not

smartquotes = False  # the pages quote code and messages: keep their characters as written
html_theme = "alabaster"
html_theme_options = {"nosidebar": False, "description": "emit() commits to Postgres; Chip Ingress gets it"}
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

# Nitpicky: every cross-reference must resolve. The exceptions are other projects' types in our
# signatures (no network here, so no intersphinx inventories) and private classes the public
# signatures name: noise, not broken references.
nitpicky = True
nitpick_ignore_regex = [
    ("py:class", r"(trio|psycopg|prometheus_client|google\.protobuf|asyncio|collections\.abc|typing|types|pathlib"
                 r"|datetime)\..*"),
    ("py:class", r"actors\.(core|adapters|statistics|hosts|emitter|config|messages|handoff)\..*"),
    ("py:class", r"(Awaitable|Callable|Mapping|Iterable|Sequence|AsyncIterator|Iterator|Path|Any|Body|Signer"
                 r"|AttributeValue|HistogramSnapshot|StoreFailure|Message|T)"),
]
